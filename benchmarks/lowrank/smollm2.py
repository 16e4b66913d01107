"""Low-rank factorization of SmolLM2-135M: 20% of the block linear weights removed, training-free and recovered.

Rows (``--parts``; rows of parts not rerun are kept from the last run's JSON):
- ``free``: plain truncated SVD, activation-aware SVD (ASVD, alpha 0.5) and whitened SVD (SVD-LLM), each removing
  ``--ratio`` of the selected layers' weights (every linear layer of the blocks; the output head, tied to the
  embeddings, is not factorized) with the same share cut from every layer; whitening also with the global
  allocation (one threshold on kept energy per weight across layers).
- ``distill``: the whitened model recovered by distillation from the dense one (the lowrank20-distill recipe's
  loss: logit KL + relative block-output MSE), ``--steps`` steps.
- ``speed``: every factorized shape against its dense layer (1 and 256 rows), and the whole model: prefill latency
  (1 x 512 tokens) and greedy decode tokens/s, dense vs whitened, timed interleaved in this process.

Perplexity on the task's evaluation text (GPL-3, 512-token windows) and on a second text of another domain (the
held-out quarter of Python's reference topics, as benchmarks/recovery/smollm2.py evaluates it), teacher KL and
top-1 agreement with the dense model. Regenerates docs/results/lowrank_smollm2.md (+ .json); then
``benchmarks/lowrank/targets.py`` checks the targets (``make bench-lowrank`` runs both).

    python benchmarks/lowrank/smollm2.py [--parts free distill speed] [--steps 200]
    python benchmarks/lowrank/smollm2.py --model tiny-llama --smoke --out /tmp/lowrank_tiny.md   # a quick trial
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, artifact_bytes, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim import DistillConfig, LowRankConfig  # noqa: E402
from torchslim.core.state import state_of  # noqa: E402
from torchslim.data.text import pydoc_text  # noqa: E402
from torchslim.lowrank import LowRankLinear  # noqa: E402
from torchslim.lowrank.speed import measure_shape  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402


def _recovery_helpers():
    """benchmarks/recovery/smollm2.py (its fidelity measure and training settings), imported under its own name."""
    path = ROOT / "benchmarks" / "recovery" / "smollm2.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("recovery_smollm2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REC = _recovery_helpers()
warnings.filterwarnings("ignore")
COLUMNS = ["ppl", "ppl change", "ppl pydoc", "pydoc change", "teacher KL", "top-1 agree", "block params",
           "removed", "artifact MB", "factorize s", "steps", "train s"]
SPEED = ("speed-up, 1 row (decode)", "speed-up, many rows (prefill)", "dense ms, 1 row", "dense ms, many rows")
FREE = {"plain SVD": dict(method="svd"), "ASVD (alpha 0.5)": dict(method="asvd", alpha=0.5),
        "whitened SVD": dict(method="whiten"), "whitened SVD, global allocation": dict(method="whiten",
                                                                                      allocation="global")}


def block_params(model) -> int:
    """Weights of the linear layers inside the blocks (factor pairs counted by their two factors)."""
    return sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("model.layers."))


class Bench:
    def __init__(self, model: str, rows: dict[str, Row], windows: int | None, pydoc_windows: int,
                 n_samples: int) -> None:
        loaded = torchslim.load_model(model)
        self.name, self.n_samples = model, n_samples
        self.base, self.task, self.rows = loaded.model.eval(), loaded.task, rows
        if windows is not None:
            self.task.max_eval_windows = windows
        self.pydoc = CausalLMTask(loaded.tokenizer, seq_len=self.task.seq_len, max_eval_windows=pydoc_windows,
                                  eval_text=pydoc_text(True))
        self.base_ppl = self.task.evaluate(self.base)["perplexity"]
        self.base_pydoc = self.pydoc.evaluate(self.base)["perplexity"]
        self.dense_params = block_params(self.base)
        self.record("fp32 (dense)", self.base, "uncompressed", {})

    def record(self, name: str, model, note: str, values: dict) -> None:
        model.eval()
        ppl, pydoc = self.task.evaluate(model)["perplexity"], self.pydoc.evaluate(model)["perplexity"]
        params = block_params(model)
        values = {"ppl": ppl, "ppl change": f"{100 * (ppl / self.base_ppl - 1):+.1f}%", "ppl pydoc": pydoc,
                  "pydoc change": f"{100 * (pydoc / self.base_pydoc - 1):+.1f}%", "block params": params,
                  "removed": f"{100 * (1 - params / self.dense_params):.1f}%",
                  "artifact MB": artifact_bytes(model) / 2**20, **values,
                  **REC.fidelity(model, self.base, self.task, windows=min(8, len(self.task.eval_windows())))}
        self.rows[name] = Row(name, note, values)
        print(self.rows[name], flush=True)

    def factorized(self, ratio: float, **kw) -> tuple[torch.nn.Module, float]:
        m = copy.deepcopy(self.base)
        t = time.perf_counter()
        torchslim.factorize_(m, LowRankConfig(ratio=ratio, n_samples=self.n_samples, **kw), calibration=self.task)
        return m, time.perf_counter() - t


def part_free(b: Bench, ratio: float) -> torch.nn.Module:
    whitened = None
    for name, kw in FREE.items():
        m, secs = b.factorized(ratio, **kw)
        d = state_of(m).history[-1]
        faster = f"{d.metrics['layers_faster']} of {d.metrics['layers_factorized']} layers measured faster"
        b.record(f"{name} {ratio:.0%}", m, f"{d.details['rule']}; {faster}", {"factorize s": secs})
        if name == "whitened SVD":
            whitened = m
    return whitened


def part_distill(b: Bench, start: torch.nn.Module, ratio: float, steps: int, lr: float) -> None:
    m = copy.deepcopy(start)
    cfg = DistillConfig(output_weight=1.0, temperature=1.0, hidden_weight=1.0, train=REC._train(steps, lr))
    values: dict = {"steps": steps}
    with REC.timed(values, steps, cfg.train.batch_size, b.task.seq_len):
        torchslim.distill_(m, cfg, task=b.task, teacher=b.base)
    b.record(f"whitened SVD {ratio:.0%} + distillation", m, f"logit KL + relative block-output MSE to the dense "
             f"model, AdamW lr {lr:g}, batch {cfg.train.batch_size}", values)


def part_speed(b: Bench, m: torch.nn.Module, iters: int, decode_tokens: int) -> list[Row]:
    """Each distinct factorized shape against its dense layer, then the whole model, dense vs factorized."""
    from torchslim.recipes.report import interleaved_speed

    shapes = sorted({(x.out_features, x.in_features, x.rank) for x in m.modules() if isinstance(x, LowRankLinear)})
    rows = []
    for out_f, in_f, r in shapes:
        s = measure_shape(out_f, in_f, r, iters=iters)
        one, many = s["rows"][0], s["rows"][-1]
        rows.append(Row(f"[{out_f}, {in_f}] at rank {r}", "faster" if s["faster"] else "smaller, not faster",
                        {SPEED[0]: f"{one['speedup']:.2f}x", SPEED[1]: f"{many['speedup']:.2f}x",
                         SPEED[2]: one["dense_ms"], SPEED[3]: many["dense_ms"]}))
    seq = min(512, b.task.seq_len)
    got = interleaved_speed({"dense": b.base, "factorized": m}, b.task, [(1, seq)], 2, iters, decode_tokens)
    d, f = got["dense"], got["factorized"]
    pre = d.shapes[0].latency.median_ms / f.shapes[0].latency.median_ms
    tok = f.decode.decode_tokens_per_s / d.decode.decode_tokens_per_s
    rows.append(Row(f"whole model (decode; prefill 1 x {seq})", "faster" if min(pre, tok) >= 1.05
                    else "smaller, not faster",
                    {SPEED[0]: f"{tok:.2f}x ({f.decode.decode_tokens_per_s:.1f} vs {d.decode.decode_tokens_per_s:.1f} "
                               "tok/s)", SPEED[1]: f"{pre:.2f}x", SPEED[2]: 1e3 / d.decode.decode_tokens_per_s,
                     SPEED[3]: d.shapes[0].latency.median_ms}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="*", default=["free", "distill", "speed"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--iters", type=int, default=15, help="timed calls per variant (speed)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings: 4 eval windows, 4 steps, 8 samples")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/lowrank_smollm2.md")
    args = ap.parse_args()
    windows, pydoc_windows = (4, 4) if args.smoke else (None, 48)
    if args.smoke:
        args.steps, args.n_samples, args.iters = min(args.steps, 4), min(args.n_samples, 8), min(args.iters, 3)
    json_path = args.out.with_suffix(".json")
    kept = json.loads(json_path.read_text()) if json_path.exists() else {}
    rows = {r["name"]: Row(r["name"], r.get("note", ""), {k: v for k, v in r.items() if k not in ("name", "note")})
            for r in kept.get("rows", [])} if isinstance(kept, dict) else {}
    speed = [Row(r["name"], r.get("note", ""), {k: v for k, v in r.items() if k not in ("name", "note")})
             for r in kept.get("speed", [])] if isinstance(kept, dict) else []
    b = Bench(args.model, rows, windows, pydoc_windows, args.n_samples)
    t0 = time.perf_counter()
    whitened = None
    for part in args.parts:
        if part == "free":
            whitened = part_free(b, args.ratio)
        elif part in ("distill", "speed"):
            if whitened is None:
                whitened, _ = b.factorized(args.ratio, method="whiten")
            if part == "distill":
                part_distill(b, whitened, args.ratio, args.steps, args.lr)
            else:
                speed = part_speed(b, whitened, args.iters, 8 if args.smoke else 32)
        else:
            raise SystemExit(f"error: unknown part {part!r} (known: free, distill, speed)")
        write(args.out, b, speed, args)        # after every part: a run stopped later keeps what it measured
    print(f"parts {args.parts} took {time.perf_counter() - t0:.0f} s", flush=True)


def write(out: Path, b: Bench, speed: list[Row], args: argparse.Namespace) -> None:
    order = ["fp32 (dense)", *(f"{n} {args.ratio:.0%}" for n in FREE), f"whitened SVD {args.ratio:.0%} + distillation"]
    rows = [b.rows[n] for n in order if n in b.rows] + [r for n, r in b.rows.items() if n not in order]
    windows = len(b.task.eval_windows())
    write_table(out, f"Low-rank factorization of {b.name}",
                f"{args.ratio:.0%} of the weights of the block linear layers removed (the output head, tied to the "
                f"embeddings, is left dense); ranks are multiples of 8. Perplexity on the task's evaluation text "
                f"({windows} windows of {b.task.seq_len} tokens) and on the held-out quarter of Python's reference "
                f"topics ({len(b.pydoc.eval_windows())} windows); teacher KL (nats/token) and top-1 agreement with "
                f"the dense model on 8 evaluation windows. Calibration: {b.n_samples} windows of the task's "
                f"calibration text. Regenerate: `python benchmarks/lowrank/smollm2.py` (`make bench-lowrank`).",
                COLUMNS, rows,
                ["Training-free rows change nothing but the factorized layers; the distillation row trains every "
                 "parameter of the factorized model against the dense one on the task's training text.",
                 "SmolLM2's weights come from a Q4_1 file: the rounding noise of that grid is full-rank, which "
                 "spreads every weight's spectrum (plain SVD pays for it most)."])
    speed_md = out.with_name(out.stem + "_speed.md")
    write_table(speed_md, f"Low-rank factorization of {b.name}: speed against dense",
                "Each factorized shape (whitened SVD, uniform allocation) timed against its dense layer on random "
                "tensors at 1 and 256 rows (fp32, interleaved medians: 'x' is dense time / factorized time; 'faster' needs >= 1.05x "
                "at both row counts, the rule LowRankLinear records), then the whole model: greedy decode tokens/s "
                "(its 'dense ms' is per token) and the latency of one prefill, dense vs factorized, timed "
                "interleaved.", list(SPEED), speed, [])
    data = json.loads(out.with_suffix(".json").read_text())
    out.with_suffix(".json").write_text(json.dumps({"rows": data, "speed": json.loads(
        speed_md.with_suffix(".json").read_text()), "base_ppl": b.base_ppl, "ratio": args.ratio,
        "model": b.name}, indent=1, default=str))
    speed_md.with_suffix(".json").unlink()
    with out.open("a") as f:
        f.write(f"\nSpeed: see [{speed_md.name}]({speed_md.name}).\n")


if __name__ == "__main__":
    main()
