"""Quantization-aware training on digits-cnn: ternary, binary and W4A4 (LSQ) against post-training results.

Every variant starts from the same trained model in this process. Post-training (PTQ) rows quantize every
conv and linear layer per channel with no training; QAT rows start from that PTQ result (or, for W4A4, from
min-max ranges observed on calibration images) and train with the task loss plus distillation from the fp32
model, then convert to the same packed layers PTQ produces (the table's top-1 is the converted model's, and
it is checked to reload from its artifact with the same predictions).
Regenerates docs/results/recovery_digits.md (+ .json).

    python benchmarks/recovery/digits.py [--steps 300]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Row, artifact_bytes, write_table  # noqa: E402
from common_train import timed  # noqa: E402

import torchslim  # noqa: E402
from torchslim import ActQuant, DistillConfig, QATConfig, TrainConfig, WeightOnlyConfig  # noqa: E402
from torchslim.quantization import Binary, IntFormat, PerChannel, Ternary  # noqa: E402
from torchslim.transforms import fold_bn_  # noqa: E402

warnings.filterwarnings("ignore")
OUT = ROOT / "docs/results/recovery_digits.md"


def _train(steps: int, lr: float) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=max(1, steps // 15), max_grad_norm=1.0,
                       eval_at_end=False, progress=False, seed=0)


def _selector() -> torchslim.Selector:
    return torchslim.Selector(include=(nn.Conv2d, nn.Linear))


def reloads(model: nn.Module, task) -> bool:
    x = task.example_inputs(64)["x"]
    with tempfile.TemporaryDirectory() as d:
        torchslim.save(model, Path(d) / "a")
        back = torchslim.load(Path(d) / "a")
        with torch.inference_mode():
            return torch.equal(back(x).argmax(-1), model(x).argmax(-1))


def qat(base: nn.Module, task, fmt, acts: ActQuant | None, steps: int, lr: float, from_ptq: bool,
        values: dict) -> nn.Module:
    model = copy.deepcopy(base)
    if from_ptq:
        torchslim.quantize_(model, WeightOnlyConfig(format=fmt, granularity=PerChannel(), selector=_selector()))
    cfg = QATConfig(format=fmt, granularity=PerChannel(), activations=acts,
                    selector=None if from_ptq else _selector(),
                    distill=DistillConfig(task_weight=1.0, output_weight=1.0, temperature=2.0), train=_train(steps, lr))
    with timed(values, steps, 32):
        torchslim.quantize_(model, cfg, task=task, teacher=base)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300, help="QAT steps (batch 32)")
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = torchslim.load_model("digits-cnn")
    base, task = loaded.model.eval(), loaded.task
    fp32 = copy.deepcopy(base)
    fold_bn_(fp32)
    rows: list[Row] = [Row("fp32", "trained model", {})]
    models: dict[str, nn.Module] = {"fp32": base}
    for label, fmt in (("ternary", Ternary()), ("binary", Binary())):
        ptq = copy.deepcopy(base)
        torchslim.quantize_(ptq, WeightOnlyConfig(format=fmt, granularity=PerChannel(), selector=_selector()))
        models[f"{label} PTQ"] = ptq.eval()
        rows.append(Row(f"{label} PTQ", "per channel, every conv and linear, no training", {}))
        values: dict = {}
        models[f"{label} QAT"] = qat(base, task, fmt, None, args.steps, 1e-3, True, values)
        rows.append(Row(f"{label} QAT", f"from the PTQ result, {args.steps} steps, clipped STE + learned scales, "
                        "task + KD loss", values))
    values = {}
    models["W4A4 QAT (LSQ)"] = qat(fp32, task, IntFormat(4), ActQuant(bits=4, method="lsq"), args.steps, 1e-3,
                                   False, values)
    rows.append(Row("W4A4 QAT (LSQ)", f"int4 weights per channel, 4-bit static activations with learned steps, "
                    f"BatchNorm folded, {args.steps} steps; converts to the int8-static kernels with 4-bit ranges",
                    values))
    for r in rows:
        m = models[r.name]
        r.values.update({"top1 %": task.evaluate(m)["top1"], "artifact KB": artifact_bytes(m, loaded.source) / 1e3})
        if "QAT" in r.name:
            r.note += "; reloads with the same predictions" if reloads(m, task) else "; RELOAD MISMATCH"
        print(r, flush=True)
    write_table(OUT, "Quantization-aware training: digits-cnn",
                "Top-1 on the 360 held-out digits images. PTQ = post-training, no data; QAT = quantization-aware "
                "training (straight-through estimator) from that PTQ result on the 1437 training images with the "
                "task loss plus KL to the fp32 model's logits (T=2), batch 32, AdamW lr 1e-3, then converted to "
                "packed layers. Regenerate: `python benchmarks/recovery/digits.py`.",
                ["top1 %", "artifact KB", "train s", "peak MB", "samples seen"], rows,
                ["No fast ternary/binary kernel exists here: those rows gain size, not speed (see "
                 "docs/results/quantization_digits.md for latency)."])


if __name__ == "__main__":
    main()
