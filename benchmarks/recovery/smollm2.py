"""Recovery training on SmolLM2-135M: what distillation and QAT win back after compression, against controls
with identical budgets.

Parts (``--parts``; rows of parts not rerun are kept):
- ``int4-block``: int4 GPTQ g128, then block-wise reconstruction (``ReconstructConfig``: each block against the
  uncompressed block on cached calibration inputs, latent weights and step sizes, packed back to the same int4
  layers), at a quarter and at the whole of ``--steps-block`` steps per block: quality against wall time.
- ``int4``: int4 GPTQ g128 (the int4-gptq recipe's settings), then QAT from that result on the KL to the
  uncompressed model's logits only (no task loss, so the student cannot learn the evaluation's domain and
  beat its teacher for that reason), converted back to the same packed int4 layers.
- ``structured``: 25% of every block's heads and MLP neurons removed (Taylor), then (a) distillation (logit KL +
  relative block-output MSE) and (b) plain fine-tuning on the task loss for the same steps, batch and text.
- ``w8a8``: static W8A8 with SmoothQuant, then QAT (LSQ activation steps, learned weight scales) on the KL.
- ``blackbox``: the 25%-pruned student trained only on the uncompressed model's sampled generations (its
  text, no logits) against the same student trained on the same number of raw calibration-text tokens.

Perplexity on GPL-3 (512-token windows, held out from all training text); "teacher KL" and "top-1 agree" compare
the student's next-token distribution with the uncompressed model's on the first 8 of those windows.
Regenerates docs/results/recovery_smollm2.md (+ .json).

    python benchmarks/recovery/smollm2.py [--parts int4 structured w8a8 blackbox] [--steps-int4 N] ...
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Row, write_table  # noqa: E402
from common_train import timed  # noqa: E402

import torchslim  # noqa: E402
from torchslim import (ActQuant, BlackBoxDistillConfig, DistillConfig, FinetuneConfig, GPTQConfig,  # noqa: E402
                       QATConfig, ReconstructConfig, StructuredConfig, TrainConfig, W8A8Config, WeightOnlyConfig)
from torchslim.core.archs import find_blocks  # noqa: E402
from torchslim.data.text import pydoc_text, split_text  # noqa: E402
from torchslim.quantization import ActMode, IntFormat, PerChannel, PerGroup  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask, logits_of  # noqa: E402

warnings.filterwarnings("ignore")
OUT = ROOT / "docs/results/recovery_smollm2.md"
FIGURE = OUT.with_name("recovery_smollm2_time.png")
MEASURED: set[str] = set()     # rows this run measured (the others are re-read from disk before each write)
COLUMNS = ["threads", "ppl", "ppl change", "ppl pydoc", "pydoc change", "teacher KL", "top-1 agree", "steps", "train s", "peak MB", "samples seen",
           "tokens seen"]
ORDER = ["fp32 (teacher)", "int4 RTN g128", "int4 RTN g128 + block-wise reconstruction", "int4 GPTQ g128",
         "int4 GPTQ g128 + block-wise reconstruction", "int4 GPTQ g128 + block-wise step sizes",
         "int4 GPTQ g128 + QAT (KD)", "W8A8 static SmoothQuant", "W8A8 static + block-wise reconstruction",
         "W8A8 static + QAT (KD)", "structured 25% (one-shot)", "structured 25% + block-wise reconstruction",
         "structured 25% + block-wise + distillation", "structured 25% + distillation",
         "structured 25% + fine-tuning (control)", "structured 25% + black-box distillation",
         "structured 25% + raw-text fine-tuning (control)"]


def _train(steps: int, lr: float, batch: int = 4) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=max(1, steps // 10), max_grad_norm=1.0,
                       eval_at_end=False, log_every=10, seed=0)


@torch.inference_mode()
def fidelity(student, teacher, task: CausalLMTask, windows: int = 8) -> dict[str, float]:
    kl = agree = n = 0.0
    for w in task.eval_windows()[:windows].split(2):
        t = logits_of(teacher(input_ids=w)).float().log_softmax(-1)
        s = logits_of(student(input_ids=w)).float().log_softmax(-1)
        kl += float(F.kl_div(s, t, log_target=True, reduction="sum"))
        agree += float((s.argmax(-1) == t.argmax(-1)).sum())
        n += w.numel()
    return {"teacher KL": kl / n, "top-1 agree": agree / n}


class Bench:
    def __init__(self, model: str, rows: dict[str, Row]) -> None:
        loaded = torchslim.load_model(model)
        self.name = model
        self.base, self.task, self.rows = loaded.model.eval(), loaded.task, rows
        # the second text, of another domain: the held-out quarter of Python's reference topics (never trained on)
        self.pydoc = CausalLMTask(loaded.tokenizer, seq_len=512, max_eval_windows=48, eval_text=pydoc_text(True))
        self.base_ppl = self.task.evaluate(self.base)["perplexity"]
        self.base_pydoc = self.pydoc.evaluate(self.base)["perplexity"]
        self.record("fp32 (teacher)", self.base, "uncompressed", {})
        self.calib, self.calib_name, self.tag = self.task, "license calibration text", ""

    def calibrate_on(self, split: str) -> None:
        """Calibrate and reconstruct on another built-in text split (rows get a tag naming it)."""
        if split != "calibration":
            self.calib = CausalLMTask(self.task.tokenizer, seq_len=self.task.seq_len,
                                      calibration_text=split_text(split))
            self.calib_name, self.tag = f"{split} text", f" [{split}]"

    def record(self, name: str, model, note: str, values: dict) -> None:
        model.eval()
        ppl = self.task.evaluate(model)["perplexity"]
        pydoc = self.pydoc.evaluate(model)["perplexity"]
        values = {"threads": torch.get_num_threads(), "ppl": ppl, "ppl change": f"{100 * (ppl / self.base_ppl - 1):+.1f}%", "ppl pydoc": pydoc,
                  "pydoc change": f"{100 * (pydoc / self.base_pydoc - 1):+.1f}%", **values,
                  **fidelity(model, self.base, self.task)}
        self.rows[name] = Row(name, note, values)
        MEASURED.add(name)
        print(self.rows[name], flush=True)

    def trained(self, model, config, steps: int, name: str, note: str, teacher=True, seq_len: int | None = None,
                task=None) -> None:
        values: dict = {"steps": steps}
        with timed(values, steps, config.train.batch_size, seq_len or self.task.seq_len):
            kw = {"teacher": self.base} if teacher else {}
            torchslim.apply_(model, config, task=task or self.task, **kw)
        self.record(name, model, note, values)

    def reconstructed(self, model, cfg: ReconstructConfig) -> dict:
        """Block-wise reconstruction of ``model`` on the calibration text against the teacher, timed; its row
        values (steps counted over every block, batch 2)."""
        steps = cfg.steps * len(find_blocks(model))
        values: dict = {"steps": steps}
        with timed(values, steps, cfg.batch_size, self.task.seq_len):
            torchslim.distill_(model, cfg, task=self.calib, teacher=self.base)
        return values

    def pruned(self):
        m = copy.deepcopy(self.base)
        torchslim.prune_(m, StructuredConfig(targets=["heads", "neurons"], ratio=0.25, importance="taylor", round_to=8),
                         task=self.calib)
        return m


def _gptq_int4(b: Bench):
    m = copy.deepcopy(b.base)
    lm_head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    sel = torchslim.Selector(include=(torch.nn.Linear,), overrides={"lm_head": lm_head})
    torchslim.quantize_(m, GPTQConfig(weight=WeightOnlyConfig(format=IntFormat(4, symmetric=False),
                                                              granularity=PerGroup(128), selector=sel)),
                        calibration=b.calib)
    b.record(f"int4 GPTQ g128{b.tag}", m, f"post-training, as the int4-gptq recipe, on the {b.calib_name}", {})
    return m


def _rtn_int4(b: Bench):
    m = copy.deepcopy(b.base)
    lm_head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    sel = torchslim.Selector(include=(torch.nn.Linear,), overrides={"lm_head": lm_head})
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128),
                                            selector=sel))
    b.record("int4 RTN g128", m, "round to nearest (min-max per group), the head int8", {})
    return m


def part_int4_block(b: Bench, steps: list[int], samples: int, routes: tuple[str, ...] = ("rtn", "gptq")) -> None:
    """Block-wise reconstruction from round-to-nearest (as EfficientQAT and OmniQuant start) and from GPTQ, at each
    number of steps per block in ``steps``: quality against wall time."""
    starts = {"rtn": (_rtn_int4, "int4 RTN g128"), "gptq": (_gptq_int4, "int4 GPTQ g128")}
    for route in routes:
        start, base = starts[route]
        quantized = start(b)
        for n in steps:
            m = copy.deepcopy(quantized)
            cfg = ReconstructConfig(steps=n, n_samples=samples, batch_size=2)
            values = b.reconstructed(m, cfg)
            # 128 steps per block (the first full run) is the unlabelled row; every other count is a curve point
            name = f"{base}{b.tag} + block-wise reconstruction" + (f" ({n}/block)" if n != 128 else "")
            b.record(name, m, f"{n} steps per block, each one cached batch of 2 x 512 {b.calib_name} tokens "
                     f"({samples} windows); AdamW lr {cfg.lr:g} (weights, norms) / {cfg.quantizer_lr:g} (step sizes, "
                     "offsets), cosine; packed back to the same int4 layers", values)
            write(b.rows, b.name)


def part_int4_scales(b: Bench, steps: int, samples: int) -> None:
    """From GPTQ, only step sizes, offsets and norms learn: GPTQ's rounding decisions are kept."""
    m = _gptq_int4(b)
    cfg = ReconstructConfig(steps=steps, n_samples=samples, batch_size=2, train_weights=False)
    values = b.reconstructed(m, cfg)
    b.record(f"int4 GPTQ g128{b.tag} + block-wise step sizes", m, f"{steps} steps per block ({samples} windows): "
             f"latent weights frozen (GPTQ's rounding kept), step sizes/offsets at lr {cfg.quantizer_lr:g}, norms at "
             f"{cfg.lr:g}; packed back to the same int4 layers", values)


def part_int4(b: Bench, steps: int) -> None:
    m = _gptq_int4(b)
    cfg = QATConfig(distill=DistillConfig(output_weight=1.0, temperature=1.0), train=_train(steps, 1e-5))
    b.trained(m, cfg, steps, "int4 GPTQ g128 + QAT (KD)", "from the GPTQ layers: latent weights + LSQ+ scales/offsets,"
              " logit KL only; converted to the same int4 layers")


def part_w8a8(b: Bench, steps: int) -> None:
    m = copy.deepcopy(b.base)
    torchslim.quantize_(m, W8A8Config(mode=ActMode.STATIC, smooth_alpha=0.5, n_samples=64), calibration=b.task)
    b.record("W8A8 static SmoothQuant", m, "post-training, per-tensor static int8 activations", {})
    cfg = QATConfig(format=IntFormat(8), granularity=PerChannel(), activations=ActQuant(bits=8, method="lsq"),
                    distill=DistillConfig(output_weight=1.0,
                    temperature=1.0), train=_train(steps, 1e-5))
    b.trained(m, cfg, steps, "W8A8 static + QAT (KD)", "from the W8A8 layers: LSQ activation steps and weight "
              "scales, logit KL only; converted to the same int8 static layers")


def part_w8a8_block(b: Bench, steps: int, samples: int) -> None:
    """Static W8A8 with SmoothQuant, then block-wise reconstruction as the w8a8-static-recover recipe does it."""
    m = copy.deepcopy(b.base)
    torchslim.quantize_(m, W8A8Config(mode=ActMode.STATIC, smooth_alpha=0.5, n_samples=64), calibration=b.calib)
    b.record(f"W8A8 static SmoothQuant{b.tag}", m, f"post-training, per-tensor static int8 activations, calibrated on "
             f"the {b.calib_name}", {})
    cfg = ReconstructConfig(steps=steps, n_samples=samples, batch_size=2, lr=2e-5, quantizer_lr=2e-4)
    values = b.reconstructed(m, cfg)
    b.record(f"W8A8 static{b.tag} + block-wise reconstruction", m, f"{steps} steps per block ({samples} windows), "
             f"weights at lr {cfg.lr:g}, weight scales and activation ranges at {cfg.quantizer_lr:g} (the "
             "w8a8-static-recover recipe); packed back to the same static int8 layers", values)


def part_structured(b: Bench, steps: int, control: bool = True) -> None:
    m = b.pruned()
    if f"structured 25%{b.tag} (one-shot)" not in b.rows:
        b.record(f"structured 25%{b.tag} (one-shot)", m, f"Taylor importance on the {b.calib_name}, heads + neurons, "
                 "round to 8", {})
    kd = DistillConfig(output_weight=1.0, temperature=1.0, hidden_weight=1.0, train=_train(steps, 2e-4))
    # the first run (16 steps) keeps the plain name; a longer one is a curve point named by its steps
    suffix = "" if steps == 16 else f" ({steps} steps)"
    b.trained(copy.deepcopy(m), kd, steps, f"structured 25%{b.tag} + distillation{suffix}",
              f"logit KL + relative block-output MSE to the uncompressed model, trained on the {b.calib_name}",
              task=b.calib)
    write(b.rows, b.name)
    if control:
        b.trained(copy.deepcopy(m), FinetuneConfig(train=_train(steps, 2e-4)), steps,
                  f"structured 25% + fine-tuning (control){suffix}", "task loss only, same steps/batch/text/lr",
                  teacher=False)


def part_structured_block(b: Bench, steps: int, samples: int, distill_steps: int) -> None:
    """25% structured, then block-wise reconstruction of the kept (float) weights: no whole-model pass per step;
    then, optionally, a short end-to-end distillation from there."""
    m = b.pruned()
    if f"structured 25%{b.tag} (one-shot)" not in b.rows:
        b.record(f"structured 25%{b.tag} (one-shot)", m, f"Taylor importance on the {b.calib_name}, heads + neurons, "
                 "round to 8", {})
    cfg = ReconstructConfig(steps=steps, n_samples=samples, batch_size=2)
    values = b.reconstructed(m, cfg)
    b.record(f"structured 25%{b.tag} + block-wise reconstruction", m, f"{steps} steps per block on cached "
             f"{b.calib_name} inputs ({samples} windows, batch 2), the kept weights and norms at lr {cfg.lr:g}, "
             "cosine; relative block-output MSE to the uncompressed block", values)
    write(b.rows, b.name)
    if distill_steps:
        kd = DistillConfig(output_weight=1.0, temperature=1.0, hidden_weight=1.0, train=_train(distill_steps, 1e-4))
        b.trained(m, kd, distill_steps, f"structured 25%{b.tag} + block-wise + distillation",
                  "then logit KL + relative block-output MSE, end to end", task=b.calib)


def part_blackbox(b: Bench, steps: int, prompts: int) -> None:
    m = b.pruned()
    seq = 128
    cfg = BlackBoxDistillConfig(n_prompts=prompts, seq_len=seq, max_new_tokens=96, train=_train(steps, 2e-4, 8))
    b.trained(copy.deepcopy(m), cfg, steps, "structured 25% + black-box distillation",
              f"trained only on the teacher's sampled continuations of {prompts} calibration-text prompts "
              "(T=0.8, top-p 0.95); train s includes generation", seq_len=seq)
    raw = CausalLMTask(b.task.tokenizer, seq_len=seq)
    b.trained(copy.deepcopy(m), FinetuneConfig(train=_train(steps, 2e-4, 8)), steps,
              "structured 25% + raw-text fine-tuning (control)", "the same tokens of raw calibration text "
              f"({seq}-token windows)", teacher=False, seq_len=seq, task=raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", nargs="*", default=["int4-block", "int4", "w8a8", "structured", "structured-block",
                                                    "blackbox"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps-int4", type=int, default=100)
    ap.add_argument("--steps-block", type=int, nargs="+", default=[16, 64],
                    help="steps per block; several give points of the quality-against-time curve")
    ap.add_argument("--routes", nargs="+", default=["rtn", "gptq"], choices=["rtn", "gptq"])
    ap.add_argument("--calibration", default="calibration",
                    help="text split the int4 rows calibrate and reconstruct on (e.g. mixed-calibration)")
    ap.add_argument("--samples-block", type=int, default=128)
    ap.add_argument("--steps-w8a8", type=int, default=40)
    ap.add_argument("--steps-structured", type=int, default=100)
    ap.add_argument("--no-control", action="store_true", help="structured: skip the fine-tuning control run")
    ap.add_argument("--steps-blackbox", type=int, default=60)
    ap.add_argument("--steps-structured-distill", type=int, default=0,
                    help="end-to-end distillation steps after the structured block-wise reconstruction")
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args()
    json_path = OUT.with_suffix(".json")
    kept = {r["name"]: r for r in json.loads(json_path.read_text())} if json_path.exists() else {}
    rows = {n: Row(n, v.pop("note", ""), {k: x for k, x in v.items() if k != "name"}) for n, v in kept.items()}
    b = Bench(args.model, rows)
    b.calibrate_on(args.calibration)
    t0 = time.perf_counter()
    for part in args.parts:
        if part == "int4-scales":
            part_int4_scales(b, args.steps_block[-1], args.samples_block)
        elif part == "int4-block":
            part_int4_block(b, args.steps_block, args.samples_block, tuple(args.routes))
        elif part == "int4":
            part_int4(b, args.steps_int4)
        elif part == "w8a8":
            part_w8a8(b, args.steps_w8a8)
        elif part == "structured":
            part_structured(b, args.steps_structured, not args.no_control)
        elif part == "w8a8-block":
            part_w8a8_block(b, args.steps_block[-1], args.samples_block)
        elif part == "structured-block":
            part_structured_block(b, args.steps_block[-1], args.samples_block, args.steps_structured_distill)
        elif part == "blackbox":
            part_blackbox(b, args.steps_blackbox, args.prompts)
        else:
            raise SystemExit(f"error: unknown part {part!r}")
        write(rows, args.model)               # after every part: a run stopped later keeps what it measured
    print(f"parts {args.parts} took {time.perf_counter() - t0:.0f} s", flush=True)


def _order_key(name: str) -> tuple[int, str, int]:
    """Rows in ORDER's order; a tagged row ("[split]") or a curve point ("(N/block)") after its untagged kin."""
    steps = re.search(r" \((\d+)(?:/block| steps)\)$", name)
    plain = re.sub(r" \[[^]]+\]", "", re.sub(r" \(\d+(?:/block| steps)\)$", "", name))
    tagged = re.sub(r" \(\d+(?:/block| steps)\)$", "", name)
    return (ORDER.index(plain) if plain in ORDER else len(ORDER), tagged if plain != tagged else "",
            int(steps.group(1)) if steps else 128)      # the unlabelled row is 128 steps per block


def _series(rows: dict[str, Row]) -> dict[str, list[tuple[float, float, float]]]:
    """Each recovery route as (train minutes, ppl, ppl pydoc) points from its starting row (0 minutes)."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for name, row in rows.items():
        if " + " not in name or not isinstance(row.values.get("train s"), (int, float)):
            continue
        head = name.split(" + ")[0]
        start = rows.get(head) or rows.get(f"{head} (one-shot)")
        key = re.sub(r" \(\d+/block\)$", "", name)
        if start is None or not isinstance(start.values.get("ppl pydoc"), (int, float)):
            continue
        pts = out.setdefault(key, [(0.0, start.values["ppl"], start.values["ppl pydoc"])])
        pts.append((row.values["train s"] / 60, row.values["ppl"], row.values.get("ppl pydoc", float("nan"))))
    return {k: sorted(v) for k, v in out.items() if len(v) > 1}


def plot(rows: dict[str, Row], path: Path) -> None:
    """Perplexity on both texts against training minutes, one line per route, the teacher dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(rows)
    if not series:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    teacher = rows["fp32 (teacher)"].values
    for ax, col, label in ((axes[0], 1, "GPL-3 (license domain)"), (axes[1], 2, "Python reference (other domain)")):
        for key, pts in series.items():
            ax.plot([p[0] for p in pts], [p[col] for p in pts], marker="o", label=key)
        ax.axhline(teacher["ppl" if col == 1 else "ppl pydoc"], color="k", ls="--", lw=1, label="fp32 teacher")
        ax.set_xlabel("training minutes (2 cores shared)")
        ax.set_ylabel("perplexity")
        ax.set_title(label)
    axes[1].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M recovery: quality against wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(rows: dict[str, Row], model: str) -> None:
    """The table of this run's rows over those on disk now (another run may have added rows since this one began)."""
    json_path = OUT.with_suffix(".json")
    if json_path.exists():
        for r in json.loads(json_path.read_text()):
            if r["name"] not in MEASURED:
                rows[r["name"]] = Row(r["name"], r.pop("note", ""), {k: x for k, x in r.items() if k != "name"})
    write_table(OUT, f"Recovery training on {model}",
                "Perplexity on GPL-3 (512-token windows), never trained on; teacher KL (nats/token) and top-1 "
                "agreement with the uncompressed model on 8 of those windows. Training: AdamW, batch 4 x 512 tokens "
                "(black-box rows: 8 x 128), cosine schedule, 10% warm-up, gradient norm clipped at 1, on the other "
                "license texts. 'train s' and 'peak MB' (resident memory, sampled) cover the training call only; "
                "controls use identical steps, batch, text and learning rate. 'ppl pydoc': the held-out quarter of "
                "Python's reference topics, a second domain. Rows tagged [split] calibrate (GPTQ) and reconstruct on "
                "that built-in text instead of the license calibration text; rows come from several runs (the machine line is "
                "the latest run's, 'threads' the row's own where recorded): mixed-calibration is the license text "
                "plus three times as much standard-library docstring prose (torchslim.data.docstrings), the source "
                "of neither evaluation text. Quality against training time: "
                f"![quality against time]({FIGURE.name}). Regenerate: `python benchmarks/recovery/smollm2.py`.",
                COLUMNS, [rows[n] for n in sorted(rows, key=_order_key)],
                ["Fine-tuning on the task loss adapts to the license-text domain of the evaluation text, which "
                 "lowers GPL-3 perplexity below what recovery alone would: the KD-only rows cannot gain from "
                 "that, since they learn the teacher's distribution; teacher KL measures recovery without it.",
                 "SmolLM2's weights come from a Q4_1 file (groups of 32, asymmetric): int4 g128 is not a round trip "
                 "of that grid."])
    plot(rows, FIGURE)


if __name__ == "__main__":
    main()
