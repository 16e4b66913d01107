"""SmolLM2-135M KV-cache quantization benchmark: quality through the cache, cache bytes, decode speed.

Quality protocol (teacher-forced decoding through the cache). A plain forward pass never reads its
own cache, so standard perplexity cannot see KV-cache quantization (it is reported too, as a check
that it does not move). Instead, for each of the first ``--windows`` non-overlapping 512-token windows
of the eval text (tokenized as in :class:`CausalLMTask`):

1. a fresh cache; the first ``PREFIX`` (64) tokens go through one forward call and are stored;
2. every later token is fed alone (``input_ids`` of length 1) with that cache, exactly as in greedy
   decoding, except that the next input is the TEXT's next token, not the model's choice;
3. the logits of each call score the following token: ``512 - 64`` tokens per window.

NLL = mean natural-log NLL of those tokens (float32), perplexity = exp(NLL); "top-1 agree" = share of
positions where the argmax equals the fp32-cache run's argmax. The fp32 cache's teacher-forced NLL is
checked against one full forward over the same tokens (they must agree to float noise).

Cache bytes: the unique storages held by the cache after a prefill of N eval-text tokens. Decode speed:
``generate`` on models with the setting installed by ``torchslim.quantize_``; per round, tokens/s =
``(new - 1) / (t(new) - t(1))`` for a prompt of C eval-text tokens; variants round-robin, medians.

    python benchmarks/quantization/kv_cache.py [--quick] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim.quantization.kv_cache import KVCacheConfig, QuantizedKVCache, cache_nbytes  # noqa: E402

warnings.filterwarnings("ignore")
PREFIX, WINDOW = 64, 512
VARIANTS: dict[str, tuple[KVCacheConfig | None, str]] = {
    "fp32 cache": (None, "transformers DynamicCache (baseline)"),
    "int8": (KVCacheConfig(), "symmetric absmax per (token, head); fp16 scales"),
    "int8 asym": (KVCacheConfig(symmetric=False), "min/max + uint8 zero point"),
    "int4": (KVCacheConfig(bits=4), "symmetric, 2 values per byte"),
    "int4 asym": (KVCacheConfig(bits=4, symmetric=False), "min/max + zero point"),
    "int4 asym, residual 64": (KVCacheConfig(bits=4, symmetric=False, residual_length=64),
                               "last 64 tokens kept in fp32"),
}
SPEED = ("fp32 cache", "int8", "int4")


def new_cache(cfg: KVCacheConfig | None, model):
    return DynamicCache(config=model.config) if cfg is None else QuantizedKVCache(cfg, model.config)


def teacher_forced(model, ids: torch.Tensor, cfg: KVCacheConfig | None) -> torch.Tensor:
    """Logits ``(L - PREFIX, vocab)`` predicting tokens ``PREFIX..L-1`` of ``ids`` (1-D), fed through the cache."""
    cache = new_cache(cfg, model)
    ids = ids[None]
    with torch.inference_mode():
        out = [model(ids[:, :PREFIX], past_key_values=cache, use_cache=True).logits[0, -1]]
        for t in range(PREFIX, ids.shape[1] - 1):
            out.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits[0, -1])
    return torch.stack(out).float()


def quality(model, windows: torch.Tensor) -> tuple[dict[str, dict[str, float]], float]:
    """Per variant: teacher-forced NLL, perplexity, top-1 agreement with fp32; plus the full-forward NLL."""
    targets = windows[:, PREFIX:].reshape(-1)
    logits = {}
    for name, (cfg, _) in VARIANTS.items():
        t0 = time.perf_counter()
        logits[name] = torch.cat([teacher_forced(model, w, cfg) for w in windows])
        print(f"teacher-forced {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    with torch.inference_mode():
        full = torch.cat([model(w[None], use_cache=False).logits[0, PREFIX - 1 : -1] for w in windows]).float()
    full_nll = F.cross_entropy(full, targets).item()
    ref_top1 = logits["fp32 cache"].argmax(-1)
    out = {}
    for name, lg in logits.items():
        nll = F.cross_entropy(lg, targets).item()
        out[name] = {"tf NLL": nll, "tf perplexity": math.exp(nll), "top-1 agree": (lg.argmax(-1) == ref_top1).float().mean().item()}
    return out, full_nll


def cache_bytes(model, ids: torch.Tensor, n: int) -> dict[str, int]:
    out = {}
    with torch.inference_mode():
        for name, (cfg, _) in VARIANTS.items():
            cache = new_cache(cfg, model)
            model(ids[None, :n], past_key_values=cache, use_cache=True)
            assert cache.get_seq_length() == n
            out[name] = cache_nbytes(cache)
            del cache
    return out


def decode_speed(models: dict, ids: torch.Tensor, context: int, new: int, rounds: int) -> dict[str, float]:
    """Median decode tokens/s per model, variants interleaved per round (see the module docstring)."""
    prompt = ids[None, :context]
    kwargs = {"attention_mask": torch.ones_like(prompt), "do_sample": False, "pad_token_id": 0}

    def run(m, n: int) -> float:
        t = time.perf_counter()
        out = m.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)
        assert out.shape[1] == context + n
        return time.perf_counter() - t

    tps: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            run(m, 2)  # warm-up
        for _ in range(rounds):
            for k, m in models.items():
                t1, tn = run(m, 1), run(m, new)
                tps[k].append((new - 1) / max(tn - t1, 1e-9))
    return {k: statistics.median(v) for k, v in tps.items()}


def greedy_agreement(models: dict, tokenizer, prompt: str, n: int) -> dict[str, float]:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    outs = {k: m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)[0, ids.shape[1]:] for k, m in models.items()}
    ref = outs["fp32 cache"]
    return {k: (o == ref).float().mean().item() for k, o in outs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one eval window, fewer speed rounds")
    ap.add_argument("--windows", type=int, default=2, help="512-token eval windows for the teacher-forced NLL")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = torchslim.load_model("smollm2-135m")
    model, task = loaded.model, loaded.task
    ids = task.token_ids("eval")
    windows = ids[: (1 if args.quick else args.windows) * WINDOW].view(-1, WINDOW)
    q, full_nll = quality(model, windows)
    b512, b2048 = cache_bytes(model, ids, 512), cache_bytes(model, ids, 2048)
    models = {k: model if VARIANTS[k][0] is None else torchslim.quantize_(copy.deepcopy(model), VARIANTS[k][0])
              for k in SPEED}
    agree = greedy_agreement(models, loaded.tokenizer, task.prompt, 64)
    rounds = 3 if args.quick else 5
    speeds = {c: decode_speed(models, ids, c, 33, rounds) for c in (128, 1024)}
    with torch.inference_mode():
        std_nll = {k: task.evaluate(m)["nll"] for k, m in list(models.items())[:2]} if not args.quick else {}
    rows = [build_row(name, note, q, b512, b2048, agree, speeds) for name, (_, note) in VARIANTS.items()]
    write_report(rows, full_nll, q, windows, std_nll, args)


def build_row(name: str, note: str, q: dict, b512: dict, b2048: dict, agree: dict, speeds: dict) -> Row:
    """One table row: quality (formatted), cache bytes and ratios, agreement, speed (fp32-cache ratios)."""
    base, mine = q["fp32 cache"], q[name]
    v = {"tf NLL": f"{mine['tf NLL']:.4f}", "ΔNLL": f"{mine['tf NLL'] - base['tf NLL']:+.4f}",
         "tf perplexity": f"{mine['tf perplexity']:.3f}", "top-1 agree": f"{mine['top-1 agree']:.3f}",
         "cache MB @512": b512[name] / 1e6, "ratio @512": b512[name] / b512["fp32 cache"],
         "cache MB @2048": b2048[name] / 1e6, "ratio @2048": b2048[name] / b2048["fp32 cache"]}
    if name in agree:
        v["greedy-64 agree"] = agree[name]
    for c, s in speeds.items():
        if name in s:
            v[f"tok/s @{c}"] = s[name]
            v[f"speed @{c}"] = f"{s[name] / s['fp32 cache']:.2f}x"
    print(name, {k: round(x, 4) if isinstance(x, float) else x for k, x in v.items()}, flush=True)
    return Row(name, note, v)


def write_report(rows: list[Row], full_nll: float, q: dict, windows: torch.Tensor, std_nll: dict,
                 args: argparse.Namespace) -> None:
    n_tok = windows.shape[0] * (WINDOW - PREFIX)
    cols = ["tf NLL", "ΔNLL", "tf perplexity", "top-1 agree", "greedy-64 agree", "cache MB @512", "ratio @512",
            "cache MB @2048", "ratio @2048", "tok/s @128", "speed @128", "tok/s @1024", "speed @1024"]
    std = ", ".join(f"{k}: {v:.6f}" for k, v in std_nll.items())
    notes = [
        f"Teacher-forced (tf) NLL over {n_tok} tokens ({windows.shape[0]} x 512-token eval windows, {PREFIX}-token "
        "prefill, then one token per forward through the cache); see the protocol in the benchmark's docstring.",
        f"Check: one full forward over the same tokens gives NLL {full_nll:.6f}; the fp32-cache tf NLL is "
        f"{q['fp32 cache']['tf NLL']:.6f}.",
        "Standard perplexity (task.evaluate: full forwards, no past read) is unchanged by construction"
        + (f" (NLL {std})." if std else "."),
        "greedy-64 agree: share of 64 greedy tokens after the task's decode prompt equal to the fp32-cache run's.",
        "Cache MB: bytes of the storages the cache holds after a prefill of N eval tokens (30 layers x K and V x 3 kv "
        "heads x 64 dims). During attention one layer's past is also dequantized to a transient fp32 copy.",
        "Decode: generate with a prompt of 128 / 1024 eval tokens, 33 new tokens, tokens/s = 32 / (t(33) - t(1)); "
        "median of interleaved rounds; models set up with torchslim.quantize_(model, KVCacheConfig(...)). "
        f"{torch.get_num_threads()} torch thread(s) on a 2-core machine shared with other jobs: small speed "
        "differences are within its noise.",
    ] + (["QUICK RUN: 1 eval window, 3 speed rounds."] if args.quick else [])
    write_table(ROOT / "docs/results/quantization_kv_cache.md", "KV-cache quantization: SmolLM2-135M",
                "Past keys/values stored as int8 / int4 with one scale per (token, head) vector "
                "(`torchslim.quantization.kv_cache`), fp32 model weights and activations. Regenerate: "
                "`python benchmarks/quantization/kv_cache.py`.", cols, rows, notes)


if __name__ == "__main__":
    main()
