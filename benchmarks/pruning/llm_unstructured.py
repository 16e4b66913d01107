"""One-shot unstructured and 2:4 pruning of SmolLM2-135M: magnitude vs Wanda vs SparseGPT perplexity,
artifact size against sparsity (compressed storage), decode speed with the kernel torchslim picks.

Regenerates docs/results/pruning_llm_unstructured.md (+ .json).

    python benchmarks/pruning/llm_unstructured.py [--quick] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, artifact_bytes, write_table  # noqa: E402
from quantization.smollm2 import decode_rounds, merge_rows  # noqa: E402

import torchslim  # noqa: E402
from torchslim.core.modules import layer_infos  # noqa: E402
from torchslim.pruning import UnstructuredConfig  # noqa: E402
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402

warnings.filterwarnings("ignore")
RECOVER = "recover"   # marker in a variant's steps: masked recovery fine-tuning on the training engine


def variants(n: int) -> dict[str, tuple[list, str]]:
    U = UnstructuredConfig  # noqa: N806
    int8 = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                            selector=torchslim.Selector(exclude=("lm_head",)))
    return {
        "dense fp32": ([], "baseline"),
        "50% magnitude": ([U(0.5)], "per layer"),
        "50% Wanda": ([U(0.5, importance="wanda", n_samples=n)], "per output row, as in the paper"),
        "50% SparseGPT": ([U(0.5, importance="sparsegpt", n_samples=n)], "block by block, pruned inputs propagate"),
        "2:4 magnitude": ([U(pattern="2:4")], ""),
        "2:4 Wanda": ([U(pattern="2:4", importance="wanda", n_samples=n)], ""),
        "2:4 SparseGPT": ([U(pattern="2:4", importance="sparsegpt", n_samples=n)], ""),
        "75% magnitude": ([U(0.75)], "size point"),
        "75% SparseGPT": ([U(0.75, importance="sparsegpt", n_samples=n)], "size point"),
        "90% magnitude": ([U(0.9)], "size point"),
        "50% SparseGPT + int8": ([U(0.5, importance="sparsegpt", n_samples=n), int8],
                                 "sparse + quantized: int8 per-channel values under the bitmask"),
        "50% magnitude + int8": ([U(0.5), int8], "sparse + quantized (size point): int8 codes of kept weights"),
        "50% SparseGPT + 80-step masked recovery": ([U(0.5, importance="sparsegpt", n_samples=n), RECOVER],
                                                    "fine-tuned with the mask held (batch 4 x 128, lr 1e-4); "
                                                    "compare the fine-tuned dense control in the structured table"),
    }


def kernels(m: torch.nn.Module) -> str:
    ks = {}
    for info in layer_infos(m).values():
        k = str(info.get("kernel", "?"))
        ks[k] = ks.get(k, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(ks.items())) or "dense nn.Linear"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    lm = torchslim.load_model("smollm2-135m")
    base, task = lm.model.eval(), lm.task
    ev = CausalLMTask(lm.tokenizer, seq_len=512, max_eval_windows=4 if args.quick else None)
    table = variants(32 if args.quick else 128)
    rows, models = [], {}
    for name, (cfgs, note) in table.items():
        if args.only and name != "dense fp32" and name not in args.only:
            continue
        m = copy.deepcopy(base)
        t = time.perf_counter()
        for c in cfgs:
            if c == RECOVER:
                from torchslim.train import TrainConfig, Trainer

                Trainer(m, CausalLMTask(lm.tokenizer, seq_len=128),
                        TrainConfig(steps=80, batch_size=4, lr=1e-4, warmup_steps=8, eval_at_end=False)).fit()
                m.eval()
                continue
            fam = torchslim.prune_ if c.family == "pruning" else torchslim.quantize_
            fam(m, c, calibration=task)
        secs = time.perf_counter() - t
        ppl = ev.evaluate(m)["perplexity"]
        size = artifact_bytes(m, lm.source)
        v = {"perplexity": ppl, "artifact MB": size / 1e6, "prune s": secs, "kernels": kernels(m)}
        print(name, v, flush=True)
        rows.append(Row(name, note, v))
        models[name] = m
    speed = {k: models[k] for k in ("dense fp32", "50% SparseGPT", "2:4 SparseGPT", "90% magnitude",
                                    "50% SparseGPT + int8", "50% magnitude + int8") if k in models}
    dec = decode_rounds(speed, task, rounds=3, tokens=32)
    base_v = rows[0].values
    for r in rows:
        v = r.values
        v["ppl vs dense"] = f"{100 * (v['perplexity'] / base_v['perplexity'] - 1):+.1f}%"
        v["size ratio"] = round(v["artifact MB"] / base_v["artifact MB"], 3)
        if r.name in dec:
            v["decode tok/s"] = dec[r.name]["tok_s"]
            v["decode speedup"] = f"{dec[r.name]['tok_s'] / dec['dense fp32']['tok_s']:.2f}x"
    if args.only:
        rows = merge_rows(ROOT / "docs/results/pruning_llm_unstructured.json", rows, list(table))
    cols = ["perplexity", "ppl vs dense", "artifact MB", "size ratio", "decode tok/s", "decode speedup", "kernels",
            "prune s"]
    write_table(ROOT / "docs/results/pruning_llm_unstructured.md", "Unstructured and 2:4 pruning: SmolLM2-135M",
                "One-shot pruning of every linear layer except lm_head (tied to the embedding). Perplexity on "
                "Debian's GPL-3 text (512-token windows); Wanda and SparseGPT calibrate on 128 windows of the other "
                "license texts. Artifact = torchslim.save (sparse layers store values + bitmask or CSR, whichever is "
                "smaller). Decode = greedy 32 tokens at batch 1, interleaved rounds, ratio to dense in the same run. "
                "Regenerate: `python benchmarks/pruning/llm_unstructured.py`.",
                cols, rows, ["The unpruned tied embedding/lm_head (28M parameters, 113 MB in fp32) bounds the size "
                             "ratio from below.",
                             "'kernels' = the kernel each sparse layer runs at batch 1 (chosen from the measured CSR "
                             "table, docs/results/pruning_csr_kernel.md); 'dense' means no speed gain from sparsity."]
                + (["QUICK RUN: 4 eval windows, 32 calibration samples."] if args.quick else []))


if __name__ == "__main__":
    main()
