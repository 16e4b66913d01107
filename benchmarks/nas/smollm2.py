"""Compact-architecture search on SmolLM2-135M at equal parameters: a searched depth/width shape (blocks kept,
heads and MLP neurons per block) under a parameter budget equal to uniform 25% structured pruning's parameter
count, against that uniform pruning, both recovered by the same block-wise reconstruction from the uncompressed
model.

- Baseline: ``StructuredConfig(targets=["heads", "neurons"], ratio=0.25, importance="taylor", round_to=8)`` (as
  benchmarks/recovery/smollm2.py), i.e. 25% of every block's heads and MLP neurons removed.
- Search: ``torchslim.search.nas`` with ``max_params`` = the baseline's parameter count (counted by
  ``torchslim.eval.size.count_parameters``), shapes below ``--min-param-use`` of it skipped; candidates scored by
  the KL of their logits to the full model's right after pruning, the best few by that proxy recovered and the
  best of those by perplexity on a validation text chosen.
- Recovery, identical for the baseline and every recovered candidate: ``ReconstructConfig`` (each block against
  the uncompressed model's, ``--steps-block`` AdamW steps per block on cached calibration windows; a candidate that
  dropped blocks trains each kept block on the teacher's output just before the next kept one).

Texts: importance, proxy and recovery use the license calibration text less its last ~12%, which is the search's
validation text (selection only). Reported: perplexity on GPL-3 (the evaluation text, never trained on or selected
on) and on the held-out quarter of Python's reference topics (another domain), parameter counts. One thread.
Regenerates docs/results/nas_smollm2.md (+ .json).

    python benchmarks/nas/smollm2.py [--candidates 14] [--recover 2] [--steps-block 12]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim import ReconstructConfig, StructuredConfig  # noqa: E402
from torchslim.core.archs import arch_of, find_blocks  # noqa: E402
from torchslim.data.text import pydoc_text, split_text  # noqa: E402
from torchslim.pruning.transformer import block_info  # noqa: E402
from torchslim.search import NASConfig, nas  # noqa: E402
from torchslim.search.nas import n_params, output_proxy, proxy_reference, recover  # noqa: E402
from torchslim.search.nas_report import to_markdown  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402

warnings.filterwarnings("ignore")
SMOKE = os.environ.get("TORCHSLIM_BENCH_SMOKE") == "1"      # a quick check of the script, not a table
OUT = Path("/tmp/nas_smollm2.md") if SMOKE else ROOT / "docs/results/nas_smollm2.md"
HELD_OUT = 0.12                                            # tail of the calibration text kept for selection


def split_calibration(text: str, held_out: float) -> tuple[str, str]:
    """The calibration text cut at the paragraph boundary nearest ``1 - held_out`` of it: (train, validation)."""
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - held_out)))
    return text[:cut], text[cut + 2:]


def shape_of(model: torch.nn.Module) -> dict:
    spec = arch_of(model)
    infos = [block_info(model, spec, n, b) for n, b in find_blocks(model)]
    return {"blocks": len(infos), "heads": [i.heads for i in infos], "kv heads": [i.kv_heads for i in infos],
            "neurons": [i.neurons for i in infos]}


def short(s: dict) -> str:
    def span(xs: list[int]) -> str:
        return f"{min(xs)}" if min(xs) == max(xs) else f"{min(xs)}-{max(xs)} (mean {sum(xs) / len(xs):.0f})"
    return f"{s['blocks']} blocks, heads {span(s['heads'])}, MLP neurons {span(s['neurons'])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--candidates", type=int, default=14, help="candidates within the budget built and proxy-scored")
    ap.add_argument("--recover", type=int, default=2, help="candidates best by proxy that are recovered")
    ap.add_argument("--validate", type=int, default=0, help="other candidates recovered at random (proxy check)")
    ap.add_argument("--steps-block", type=int, default=12, help="reconstruction steps per block (batch 2 x 512)")
    ap.add_argument("--samples-block", type=int, default=16, help="calibration windows cached for reconstruction")
    ap.add_argument("--min-depth", type=float, default=0.8, help="fewest blocks a candidate keeps (fraction)")
    ap.add_argument("--min-param-use", type=float, default=0.95, help="skip shapes below this fraction of the budget")
    ap.add_argument("--importance-samples", type=int, default=32, help="Taylor samples (StructuredConfig's default)")
    ap.add_argument("--proxy-samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="the search's sampling seed")
    ap.add_argument("--out", type=Path, default=OUT, help="the table (+ .json) to write")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    if SMOKE:
        args.candidates, args.recover, args.steps_block, args.samples_block = 2, 1, 1, 2
        args.importance_samples, args.proxy_samples = 2, 2

    loaded = torchslim.load_model("smollm2-135m")
    base, gpl, tok = loaded.model.eval(), loaded.task, loaded.tokenizer
    train_text, val_text = split_calibration(split_text("calibration"), HELD_OUT)
    search = CausalLMTask(tok, seq_len=512, max_eval_windows=2 if SMOKE else 4, eval_text=val_text,
                          calibration_text=train_text)
    pydoc = CausalLMTask(tok, seq_len=512, max_eval_windows=2 if SMOKE else 48, eval_text=pydoc_text(True))
    if SMOKE:
        gpl.max_eval_windows = 2
    reports = {"ppl GPL-3": gpl, "ppl pydoc": pydoc, "ppl validation": search}
    rows: list[Row] = []

    def record(name: str, model: torch.nn.Module, note: str, extra: dict) -> Row:
        t0 = time.perf_counter()
        v = {"params": n_params(model), "params vs full": f"{n_params(model) / n_params(base):.1%}"}
        v.update({k: float(task.evaluate(model)["perplexity"]) for k, task in reports.items()})
        shape = shape_of(model)
        v.update({"shape": short(shape), **extra, "eval s": time.perf_counter() - t0, "_shape": shape})
        rows.append(Row(name, note, v))
        print(name, {k: x for k, x in v.items() if k != "_shape"}, flush=True)
        return rows[-1]

    record("full model (teacher)", base, "SmolLM2-135M-Instruct (from the Q4_1 file, in fp32)", {})

    t0 = time.perf_counter()
    uniform = copy.deepcopy(base)
    structured = StructuredConfig(targets=["heads", "neurons"], ratio=0.25, importance="taylor", round_to=8,
                                  n_samples=args.importance_samples)
    torchslim.prune_(uniform, structured, task=search)
    prune_s = time.perf_counter() - t0
    budget = n_params(uniform)
    ref = proxy_reference(base, search, args.proxy_samples)
    uniform_proxy = output_proxy(uniform, search, ref)
    record("uniform 25%, no recovery", uniform, "Taylor importance, heads + neurons of every block, round to 8",
           {"proxy": uniform_proxy, "prune s": prune_s})

    rc = ReconstructConfig(steps=args.steps_block, n_samples=args.samples_block, batch_size=2, seed=0)
    config = NASConfig(max_params=budget, min_param_use=args.min_param_use, widths=(0.5, 0.625, 0.75, 0.875, 1.0),
                       min_depth=args.min_depth, round_to=8, n_candidates=args.candidates, n_recover=args.recover,
                       n_validate=args.validate, recover=rc, n_proxy_samples=args.proxy_samples,
                       n_importance_samples=args.importance_samples, importance="taylor", seed=args.seed)
    t0 = time.perf_counter()
    result = nas(base, search, config)
    search_s = time.perf_counter() - t0
    if result.best is None:
        raise SystemExit("error: the search returned no architecture")

    t0 = time.perf_counter()
    uniform_rec = recover(copy.deepcopy(uniform), base, search, rc)
    rec_s = time.perf_counter() - t0
    recovery = f"block-wise reconstruction, {args.steps_block} steps/block"
    record("uniform 25% + recovery", uniform_rec, f"the same shape; {recovery}", {"recovery s": rec_s})
    best = result.best
    record("searched + recovery", result.model, f"trial {best.number} ({best.origin}): {best.shape.label()}; "
           f"{recovery}; chosen among {sum(t.quality is not None for t in result.trials)} recovered on validation",
           {"proxy": best.proxy})

    uniform_trial = next((t for t in result.trials if t.origin == "uniform" and t.params == budget), None)
    facts = {"budget": budget, "search s": search_s, "baseline recovery s": rec_s, "total s":
             time.perf_counter() - t_start, "uniform proxy": uniform_proxy,
             "uniform trial": None if uniform_trial is None else uniform_trial.number,
             "uniform trial proxy": None if uniform_trial is None else uniform_trial.proxy,
             "args": vars(args), "recovery": rc.to_dict(), "search": result.to_dict(), "smoke": SMOKE}
    write(rows, result, facts, args)


def write(rows: list[Row], result, facts: dict, args: argparse.Namespace) -> None:
    out = args.out
    cols = ["params", "params vs full", "ppl GPL-3", "ppl pydoc", "ppl validation", "proxy", "shape"]
    budget = facts["budget"]
    same = "" if facts["uniform trial"] is None else (
        f" The search's own uniform-0.75 candidate (trial {facts['uniform trial']}) is the baseline's shape: its "
        f"proxy {facts['uniform trial proxy']:.4g} against the baseline's {facts['uniform proxy']:.4g}.")
    notes = [f"Recovery, the same for the baseline and each recovered candidate: ReconstructConfig(steps="
             f"{args.steps_block}, n_samples={args.samples_block}, batch_size=2), lr 5e-4, from the uncompressed "
             f"model; the baseline's took {facts['baseline recovery s']:.0f} s.",
             f"Search: {len(result.trials)} candidates within <= {budget} parameters and >= "
             f"{args.min_param_use:.0%} of it ({result.n_drawn} shapes built, {result.n_over_budget} over, "
             f"{result.n_under_use} under), widths 0.5-1 in steps of 1/8, at least {args.min_depth:.0%} of the "
             f"blocks kept (dropped by Block Influence preference), proxy = KL to the full model's logits on "
             f"{args.proxy_samples} calibration windows, {args.recover} best by proxy (+{args.validate} at random) "
             f"recovered and the best by validation perplexity chosen; {facts['search s']:.0f} s." + same,
             f"Whole run {facts['total s'] / 60:.1f} min on one thread (one core, nice 19, a machine shared with "
             "other work).",
             "ppl validation: the last ~12% of the license calibration text, held out from importance, proxy and "
             "recovery; the search selects on it. GPL-3 (14 x 512-token windows) and pydoc (48 windows) are never "
             "trained or selected on."]
    write_table(out, "Architecture search at equal parameters: SmolLM2-135M",
                "A searched depth/width shape under a parameter budget equal to uniform 25% structured pruning's "
                "count, against that uniform pruning, both recovered by the same block-wise reconstruction. "
                "Regenerate: `python benchmarks/nas/smollm2.py`.",
                cols, rows, notes)
    with out.open("a") as f:
        f.write("\n## Search trials\n\n" + to_markdown(result))
    data = {"rows": [{"name": r.name, "note": r.note, **r.values} for r in rows], "facts": facts}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
