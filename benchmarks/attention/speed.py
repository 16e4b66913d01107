"""Speed and peak memory of the efficient attentions against PyTorch SDPA, by sequence length.

Two levels:
* the attention operation alone (what the conversion replaces), at the head geometry of MiniLM (12 heads x 32,
  bidirectional, padding-free) and SmolLM2-135M (9 query / 3 key-value heads x 64, causal), 128 .. 8192 tokens:
  ``EfficientAttention.attend`` (grouped heads repeated inside, as in the model) against
  ``F.scaled_dot_product_attention`` (what transformers' ``sdpa`` runs). Medians of interleaved rounds. Peak memory:
  each (geometry, length, method) in a fresh subprocess, the growth of the process's peak RSS (``ru_maxrss``) over
  one call after the inputs exist (peak reset through /proc/self/clear_refs, large blocks mapped fresh): the memory
  the operation itself needs.
* whole-model forward (batch 1): MiniLM (position table tiled to 4096, see --model-lengths) and SmolLM2, SDPA vs
  converted, interleaved medians.

Writes docs/results/attention_speed.md and .json. Run under ``flock /tmp/torchslim-bench.lock`` (make
bench-attention does).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, interleaved, machine_line  # noqa: E402

GEOMETRY = {"minilm": dict(heads=12, kv=12, dim=32, causal=False), "smollm2": dict(heads=9, kv=3, dim=64, causal=True)}
METHODS = {"sliding_window": dict(window=128, n_global=1), "block_sparse": dict(window=128),
           "linformer": dict(proj_len=256), "performer": dict(features=256)}
LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)


def _inputs(geo: str, n: int):
    g = GEOMETRY[geo]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, g["heads"], n, g["dim"], generator=gen)
    k, v = torch.randn(2, 1, g["kv"], n, g["dim"], generator=gen).unbind(0)
    return q, k, v


def _op(geo: str, method: str, n: int):
    """A no-argument callable running one attention of ``method`` (or "sdpa") at length ``n``."""
    from torchslim.attention.module import EfficientAttention

    g = GEOMETRY[geo]
    q, k, v = _inputs(geo, n)
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=g["causal"], enable_gqa=g["kv"] != g["heads"])
    if method == "eager":                                  # materialized [L, L] scores (attn_implementation="eager")
        from torchslim.attention.math import full_attention, repeat_kv

        r = g["heads"] // g["kv"]
        return lambda: full_attention(q, repeat_kv(k, r), repeat_kv(v, r), causal=g["causal"])
    kw = dict(METHODS[method])
    if method == "linformer":
        kw.update(max_length=n, proj_len=min(kw["proj_len"], n))
    eff = EfficientAttention(method, head_dim=g["dim"], **kw)
    return lambda: eff.attend(q, k, v, None, scale=None, causal=g["causal"])


def methods_for(geo: str) -> list[str]:
    return [m for m in METHODS if not (m == "linformer" and GEOMETRY[geo]["causal"])]


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def peak_child(geo: str, method: str, n: int, threads: int) -> None:
    """(subprocess) print the peak-RSS growth, in bytes, of a second call: the peak is reset (``clear_refs``), and the
    allocator hands every block over 64 KiB out as a fresh mapping (``MALLOC_MMAP_THRESHOLD_``, set by the caller),
    so the growth is the memory the call itself held at its peak, not what an earlier call left cached."""
    torch.set_num_threads(threads)
    with torch.no_grad():
        fn = _op(geo, method, n)
        fn()                                               # first-call set-up (kernels, thread pools) not counted
        Path("/proc/self/clear_refs").write_text("5")
        before = _status("VmRSS")
        fn()
        after = _status("VmHWM")
    print(json.dumps({"bytes": after - before}))


def peak(geo: str, method: str, n: int) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--peak-child", geo, method, str(n), str(torch.get_num_threads())],
                         capture_output=True,
                         text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes"]


def op_curve(lengths: list[int], mem_lengths: set[int], rounds: int) -> list[dict]:
    rows = []
    for geo in GEOMETRY:
        for n in lengths:
            names = ["sdpa", *methods_for(geo)]
            with torch.no_grad():
                fns = {m: _op(geo, m, n) for m in names}
                t = interleaved(fns, rounds=rounds if n < 4096 else max(3, rounds // 2))
            row = {"geometry": geo, "length": n, "ms": {m: 1000 * t[m] for m in names}}
            if n in mem_lengths:
                row["peak_mb"] = {m: peak(geo, m, n) / 2**20 for m in [*names, "eager"]}
            rows.append(row)
            print(geo, n, {m: round(v, 2) for m, v in row["ms"].items()}, row.get("peak_mb"), flush=True)
    return rows


def extend_positions(model: torch.nn.Module, n: int) -> None:
    """Tile a BERT model's learned position table (and its position/token-type id buffers) to ``n`` positions, as
    Longformer initialised its longer table: positions past 512 reuse the table cyclically. Only timings use it."""
    emb = model.embeddings
    old = emb.position_embeddings.weight.detach()
    reps = -(-n // old.shape[0])
    table = torch.nn.Embedding(n, old.shape[1])
    table.weight.data.copy_(old.repeat(reps, 1)[:n])
    emb.position_embeddings = table
    emb.register_buffer("position_ids", torch.arange(n)[None], persistent=False)
    if hasattr(emb, "token_type_ids"):
        emb.register_buffer("token_type_ids", torch.zeros(1, n, dtype=torch.long), persistent=False)
    model.config.max_position_embeddings = n


def model_curve(lengths: list[int], rounds: int) -> list[dict]:
    import torchslim
    from torchslim import AttentionConfig

    rows = []
    for name, geo in (("minilm", "minilm"), ("smollm2-135m", "smollm2")):
        base = torchslim.load_model(name).model.eval()
        if geo == "minilm":
            extend_positions(base, max(lengths))
        variants = {"sdpa": base}
        for method in ("sliding_window", "performer"):
            m = copy.deepcopy(base)
            torchslim.convert_attention_(m, AttentionConfig(method=method, **METHODS[method]))
            variants[method] = m
        for n in lengths:
            if geo == "smollm2" and n > 2048:
                continue
            ids = torch.randint(100, 20000, (1, n))
            with torch.no_grad():
                fns = {k: (lambda m=m: m(input_ids=ids)) for k, m in variants.items()}
                t = interleaved(fns, rounds=rounds)
            rows.append({"model": name, "length": n, "ms": {k: 1000 * v for k, v in t.items()}})
            print(name, n, {k: round(1000 * v, 1) for k, v in t.items()}, flush=True)
    return rows


def crossover(rows: list[dict], geo: str, method: str) -> int | None:
    """The shortest measured length from which ``method`` is faster than SDPA at every longer length."""
    mine = sorted((r for r in rows if r["geometry"] == geo and method in r["ms"]), key=lambda r: r["length"])
    cross = None
    for r in reversed(mine):
        if r["ms"][method] < r["ms"]["sdpa"]:
            cross = r["length"]
        else:
            break
    return cross


def render(op: list[dict], model: list[dict]) -> str:
    lines = ["# Efficient attention: speed and peak memory against PyTorch SDPA", "",
             "Generated by `benchmarks/attention/speed.py` (`make bench-attention`).", "",
             f"Machine: {machine_line()}", "",
             "## The attention operation alone (batch 1), median ms and ratio to SDPA", "",
             "Methods: sliding window 128 (+1 global token), block-sparse blocks of 128, Linformer k=256 (encoder "
             "only: it cannot be causal), Performer m=256 random features. `slower` where the method takes longer "
             "than SDPA.", ""]
    for geo in GEOMETRY:
        names = methods_for(geo)
        g = GEOMETRY[geo]
        lines += [f"### {geo} geometry: {g['heads']} query / {g['kv']} key-value heads x {g['dim']}, "
                  f"{'causal' if g['causal'] else 'bidirectional'}", "",
                  "| tokens | SDPA ms | " + " | ".join(f"{m} ms (speed-up)" for m in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for r in (r for r in op if r["geometry"] == geo):
            s = r["ms"]["sdpa"]
            cells = [f"{r['ms'][m]:.2f} ({s / r['ms'][m]:.2f}x{'' if r['ms'][m] < s else ', slower'})" for m in names]
            lines.append(f"| {r['length']} | {s:.2f} | " + " | ".join(cells) + " |")
        mem = [r for r in op if r["geometry"] == geo and "peak_mb" in r]
        if mem:
            lines += ["", "Peak memory of one call (MiB of peak-RSS growth, fresh process; ratio to SDPA, and to eager "
                      "attention with its materialized score matrix):", "",
                      "| tokens | SDPA MiB | eager MiB | " + " | ".join(f"{m} MiB (vs SDPA, vs eager)" for m in names)
                      + " |", "|---|---|---|" + "---|" * len(names)]
            for r in mem:
                s, e = r["peak_mb"]["sdpa"], r["peak_mb"]["eager"]
                lines.append(f"| {r['length']} | {s:.1f} | {e:.1f} | " + " | ".join(
                    f"{r['peak_mb'][m]:.1f} ({r['peak_mb'][m] / max(s, 1e-9):.2f}x, {r['peak_mb'][m] / max(e, 1e-9):.2f}x)"
                    for m in names) + " |")
        lines += ["", "Crossover (shortest measured length from which the method is faster than SDPA at every "
                  "longer one): " + ", ".join(f"{m} {crossover(op, geo, m) or 'none'}" for m in names), ""]
    if model:
        lines += ["## Whole model forward (batch 1), median ms", "",
                  "| model | tokens | SDPA ms | sliding_window ms (speed-up) | performer ms (speed-up) |",
                  "|---|---|---|---|---|"]
        for r in model:
            s = r["ms"]["sdpa"]
            cells = [f"{r['ms'][m]:.1f} ({s / r['ms'][m]:.2f}x{'' if r['ms'][m] < s else ', slower'})"
                     for m in ("sliding_window", "performer")]
            lines.append(f"| {r['model']} | {r['length']} | {s:.1f} | " + " | ".join(cells) + " |")
        lines += ["", "MiniLM's 512 learned positions are tiled (Longformer's initialisation) to reach the longer "
                  "lengths; timings do not depend on the position values. SmolLM2 uses RoPE and needs no change.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak-child", nargs=4)
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--mem-lengths", default="512,2048,8192")
    ap.add_argument("--model-lengths", default="512,2048,4096")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: on shared cores, a second thread waits on whatever else runs)")
    ap.add_argument("--out", default=str(ROOT / "docs/results/attention_speed.md"))
    a = ap.parse_args()
    if a.peak_child:
        geo, method, n, threads = a.peak_child
        return peak_child(geo, method, int(n), int(threads))
    torch.set_num_threads(a.threads)
    lengths = [int(x) for x in a.lengths.split(",")]
    op = op_curve(lengths, {int(x) for x in a.mem_lengths.split(",") if x}, a.rounds)
    model = model_curve([int(x) for x in a.model_lengths.split(",") if x], max(2, a.rounds // 2)) \
        if a.model_lengths else []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(op, model))
    out.with_suffix(".json").write_text(json.dumps({"machine": machine_line(), "op": op, "model": model}, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
