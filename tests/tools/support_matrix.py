"""The support matrix: every technique on a tiny model of every architecture family.

Each cell applies one technique to a fresh tiny model (:mod:`torchslim.zoo.families`) and checks what
it did: outputs compared with the uncompressed model, layers replaced counted, the artifact saved and
reloaded with the same outputs. A cell is ``ok``, ``refused`` (one-line torchslim error, stated), or
``FAIL``/``CRASH`` (a bug). ``tests/zoo/test_support.py`` asserts the matrix;
``python tests/tools/support_matrix.py`` writes ``docs/architectures.md`` from it. A test tool, not part of the
package: it drives every technique family, so it sits above all of them.
"""
from __future__ import annotations

import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from torchslim.core.errors import TorchSlimError
from torchslim.zoo.families import FAMILIES, TinyFamily, build_family


@dataclass
class Cell:
    status: str          # "ok" | "refused" | "FAIL" | "CRASH"
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _quant(config_fn: Callable[[], Any], tol: float, calibrated: bool = False) -> Callable[[TinyFamily], str]:
    def run(fam: TinyFamily) -> str:
        import torchslim
        from torchslim.core.state import state_of

        inputs = fam.batches(1)[0]
        ref = fam.output(inputs)
        kw = {"calibration": fam.batches()} if calibrated else {}
        torchslim.quantize_(fam.model, config_fn(), **kw)
        entry = state_of(fam.model).history[-1]
        n = entry.touched.get("layers", 0)
        assert n > 0, "no layer was replaced"
        err = _rel(fam.output(inputs), ref)
        assert err < tol, f"output error {err:.3f} above {tol}"
        _round_trip(fam, inputs)
        return f"{n} layers, error {err:.3f}"
    return run


def _prune(config_fn: Callable[[], Any], calibrated: bool = False, from_pretrained: bool = False
           ) -> Callable[[TinyFamily], str]:
    def run(fam: TinyFamily) -> str:
        import torchslim
        from torchslim.core.state import state_of

        inputs = fam.batches(1)[0]
        before = sum(p.numel() for p in fam.model.parameters())
        kw = {"calibration": fam.batches()} if calibrated else {}
        torchslim.prune_(fam.model, config_fn(), **kw)
        out = fam.output(inputs)
        assert torch.isfinite(out).all(), "non-finite outputs"
        entry = state_of(fam.model).history[-1]
        n = entry.touched.get("layers", 0) + entry.touched.get("removed_modules", 0)
        assert n > 0, "nothing was pruned"
        after = sum(p.numel() for p in fam.model.parameters())
        hf = _round_trip(fam, inputs, from_pretrained and fam.kind == "causal-lm")
        shrink = f", parameters {after / before:.2f}x" if after != before else ""
        return f"{n} layers changed{shrink}{hf}"
    return run


def _factorize(fam: TinyFamily) -> str:
    """Whitened low-rank factorization removing 20% of the block linear weights (calibrated on the family's batches)."""
    import torchslim
    from torchslim.core.state import state_of
    from torchslim.lowrank import LowRankConfig

    inputs = fam.batches(1)[0]
    torchslim.factorize_(fam.model, LowRankConfig(method="whiten", ratio=0.2, n_samples=4, measure_speed=False),
                         calibration=fam.batches())
    assert torch.isfinite(fam.output(inputs)).all(), "non-finite outputs"
    m = state_of(fam.model).history[-1].metrics
    assert m["layers_factorized"] > 0, "no layer was factorized"
    _round_trip(fam, inputs)
    return f"{m['layers_factorized']} layers, {m['removed_fraction']:.0%} of their weights removed"


def _round_trip(fam: TinyFamily, inputs: dict[str, Any], from_pretrained: bool = False) -> str:
    import torchslim

    out = fam.output(inputs)
    with tempfile.TemporaryDirectory() as d:
        torchslim.save(fam.model, Path(d) / "a")
        again = torchslim.load(Path(d) / "a")
        got = TinyFamily(fam.name, again, fam.kind, fam.make_inputs).output(inputs)
        assert torch.allclose(got, out, atol=1e-5, rtol=1e-4), f"reloaded outputs differ ({_rel(got, out):.2e})"
        if from_pretrained:
            return _from_pretrained(fam, Path(d) / "a", inputs, out)
    return ""


def _from_pretrained(fam: TinyFamily, path: Path, inputs: dict[str, Any], out: torch.Tensor) -> str:
    """transformers' from_pretrained on the artifact: the same outputs, or a refusal naming torchslim.load."""
    import json

    from transformers import AutoModelForCausalLM

    marker = "torchslim.load" in json.loads((path / "config.json").read_text()).get("model_type", "")
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False).eval()
    except ValueError as e:
        assert marker and "torchslim.load" in str(e), f"from_pretrained failed without naming torchslim.load: {e}"
        return "; from_pretrained refuses (the config cannot express the new shapes): use torchslim.load"
    assert not marker, "from_pretrained loaded a marked artifact"
    got = TinyFamily(fam.name, hf, fam.kind, fam.make_inputs).output(inputs)
    assert torch.allclose(got, out, atol=1e-5, rtol=1e-4), "from_pretrained outputs differ"
    return "; from_pretrained loads it"


def _train(lr: float = 1e-4) -> Any:
    from torchslim import TrainConfig

    return TrainConfig(steps=2, batch_size=2, lr=lr, progress=False, seed=1)


def _qat(fam: TinyFamily) -> str:
    import torchslim
    from torchslim.core.state import state_of
    from torchslim.quantization import IntFormat, PerChannel, QATConfig
    from torchslim.zoo.families import family_task

    inputs = fam.batches(1)[0]
    ref = fam.output(inputs)
    # a tiny learning rate: the output error then measures the quantization, not two steps on random labels
    cfg = QATConfig(format=IntFormat(8, symmetric=True), granularity=PerChannel(), n_samples=4, train=_train(1e-6))
    torchslim.quantize_(fam.model, cfg, task=family_task(fam))
    fam.model.eval()
    n = state_of(fam.model).history[-1].touched.get("layers", 0)
    assert n > 0, "no layer was replaced"
    err = _rel(fam.output(inputs), ref)
    assert err < 0.2, f"output error {err:.3f} above 0.2"
    _round_trip(fam, inputs)
    return f"{n} layers, error {err:.3f}"


def _distill(fam: TinyFamily) -> str:
    import math

    import torchslim
    from torchslim import DistillConfig
    from torchslim.core.state import state_of
    from torchslim.zoo.families import family_task

    teacher = build_family(fam.name, seed=1).model
    torchslim.distill_(fam.model, DistillConfig(output_weight=1.0, hidden_weight=1.0, train=_train()),
                       task=family_task(fam), teacher=teacher)
    fam.model.eval()
    terms = state_of(fam.model).history[-1].details["final_loss_terms"]
    assert terms and all(math.isfinite(v) for v in terms.values()), f"loss terms {terms}"
    _round_trip(fam, fam.batches(1)[0])
    return ", ".join(f"{k} {v:.3f}" for k, v in terms.items())


def _rtn8(fam: TinyFamily) -> None:
    import torchslim
    from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig

    torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))


def _export_hf(fam: TinyFamily) -> str:
    import torchslim
    from torchslim.artifact.export_hf import export_hf

    _rtn8(fam)
    inputs = fam.batches(1)[0]
    out = fam.output(inputs)
    with tempfile.TemporaryDirectory() as d:
        torchslim.save(fam.model, Path(d) / "a")
        done = export_hf(Path(d) / "a", Path(d) / "hf", dense=True)
        hf = type(fam.model).from_pretrained(Path(d) / "hf", local_files_only=True).eval()
        err = _rel(TinyFamily(fam.name, hf, fam.kind, fam.make_inputs).output(inputs), out)
    assert err < 0.02, f"from_pretrained outputs differ ({err:.3f})"
    return f"int8 artifact, {done['densified_layers']} layers written in float, from_pretrained error {err:.4f}"


def _export_gguf(fam: TinyFamily) -> str:
    import gguf

    from torchslim.artifact.export_gguf import write_gguf
    from torchslim.zoo.tiny import EOS, byte_tokenizer

    with tempfile.TemporaryDirectory() as d:
        done = write_gguf(fam.model, Path(d) / "m.gguf", qtype="Q8_0", tokenizer=byte_tokenizer((EOS,)), name=fam.name)
        n = len(gguf.GGUFReader(str(Path(d) / "m.gguf")).tensors)
    assert n > 0, "no tensors written"
    return f"Q8_0, {n} tensors, {done['bytes']} bytes"


def _export_onnx(fam: TinyFamily) -> str:
    """int8 model exported; onnxruntime's outputs against torch's (decoders: the cached folder's first step;
    encoder-decoders: greedy tokens through encoder, decoder and decoder-with-past graphs)."""
    import numpy as np
    import onnxruntime as ort

    from onnx_run import ort_greedy_causal, ort_greedy_seq2seq, torch_greedy_seq2seq
    from torchslim.artifact.export_onnx import write_onnx
    from torchslim.artifact.onnx_graphs import model_kind
    from torchslim.zoo.families import family_task

    _rtn8(fam)
    task, kind = family_task(fam), model_kind(fam.model)
    batch = task.example_inputs(2, 16)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / ("m" if kind in ("causal-lm", "seq2seq") else "m.onnx")
        done = write_onnx(fam.model, out, task)
        kept = f"{sum(done['rewritten'].values())} of {done['packed_layers']} int8 layers kept packed"
        if kind == "seq2seq":
            ids, mask = batch["input_ids"], batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
            start = int(fam.model.config.decoder_start_token_id or 0)
            got_tok, got_logits = ort_greedy_seq2seq(out, ids.numpy(), mask.numpy(), start, 2)
            want_tok, want_logits = torch_greedy_seq2seq(fam.model, ids, mask, start, 2)
            # step 2 runs the decoder-with-past graph; compared where both picked the same first token (a random tiny
            # model's near-tied logits may flip an argmax within rounding)
            same = [i for i in range(ids.shape[0]) if got_tok[i][0] == want_tok[i][0]]
            steps = [np.asarray(got_logits)[0]] + ([np.asarray(got_logits)[1][same]] if same else [])
            refs = [want_logits[0]] + ([want_logits[1][same]] if same else [])
            err = max(_rel(torch.from_numpy(g).float(), torch.from_numpy(r).float()) for g, r in zip(steps, refs))
            assert err < 0.05, f"onnxruntime outputs differ ({err:.3f})"
            return f"{kept} (encoder, decoder, decoder with past), error {err:.4f}"
        if kind == "causal-lm":
            _, logits = ort_greedy_causal(out, batch["input_ids"].numpy(), 1)
            got, ref = torch.from_numpy(np.asarray(logits)).float(), fam.output({"input_ids": batch["input_ids"]})
        else:
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            names = done["inputs"]
            got = torch.from_numpy(np.asarray(sess.run(None, {n: batch[n].numpy() for n in names})[0])).float()
            ref = fam.output({n: batch[n] for n in names})
    err = _rel(got, ref)
    assert err < 0.05, f"onnxruntime outputs differ ({err:.3f})"
    return f"{kept}, error {err:.4f}"


# Training and export columns: slower (a few training steps, an exporter run), asserted by a slow test.
SLOW = ("QAT int8", "distill", "export hf --dense", "export gguf", "export onnx")


def _cells() -> dict[str, Callable[[TinyFamily], str]]:
    from torchslim.pruning import StructuredConfig, UnstructuredConfig
    from torchslim.quantization import (AWQConfig, GPTQConfig, IntFormat, PerChannel, PerGroup, W8A8Config,
                                        WeightOnlyConfig)

    def int4() -> WeightOnlyConfig:
        return WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32))

    return {
        "RTN int8": _quant(lambda: WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()), 0.05),
        "RTN int4 g32": _quant(int4, 0.35),
        "GPTQ int4": _quant(lambda: GPTQConfig(weight=int4(), n_samples=8), 0.35, calibrated=True),
        "AWQ int4": _quant(lambda: AWQConfig(weight=int4(), n_samples=8), 0.35, calibrated=True),
        "W8A8 + SmoothQuant": _quant(lambda: W8A8Config(smooth_alpha=0.5, n_samples=8), 0.15, calibrated=True),
        "Wanda 50%": _prune(lambda: UnstructuredConfig(sparsity=0.5, importance="wanda", n_samples=8), True),
        "SparseGPT 50%": _prune(lambda: UnstructuredConfig(sparsity=0.5, importance="sparsegpt", n_samples=8), True),
        "2:4": _prune(lambda: UnstructuredConfig(pattern="2:4")),
        "heads 50%": _prune(lambda: StructuredConfig(targets=("heads",), ratio=0.5), from_pretrained=True),
        "neurons 25%": _prune(lambda: StructuredConfig(targets=("neurons",), ratio=0.25), from_pretrained=True),
        "drop 1 block": _prune(lambda: StructuredConfig(targets=("layers",), ratio=0.5, importance="random"),
                               from_pretrained=True),
        "low-rank 20%": _factorize,
        "QAT int8": _qat,
        "distill": _distill,
        "export hf --dense": _export_hf,
        "export gguf": _export_gguf,
        "export onnx": _export_onnx,
    }


CELLS = tuple(_cells())


def run_cell(family: str, cell: str) -> Cell:
    fam = build_family(family)
    try:
        return Cell("ok", _cells()[cell](fam))
    except TorchSlimError as e:
        text = str(e)
        return Cell("refused" if "\n" not in text else "FAIL", text if "\n" not in text else f"multi-line: {text}")
    except AssertionError as e:
        return Cell("FAIL", str(e))
    except Exception:  # noqa: BLE001 - a crash is what the matrix looks for
        return Cell("CRASH", traceback.format_exc(limit=6))


def run_matrix(families: tuple[str, ...] = FAMILIES, cells: tuple[str, ...] = CELLS) -> dict[str, dict[str, Cell]]:
    return {f: {c: run_cell(f, c) for c in cells} for f in families}


def markdown(results: dict[str, dict[str, Cell]]) -> str:
    cells = list(next(iter(results.values())))
    mark = {"ok": "yes", "refused": "no", "FAIL": "FAIL", "CRASH": "CRASH"}
    lines = ["# Supported architectures", "",
             "Generated by `python tests/tools/support_matrix.py` from the same matrix `tests/zoo/test_support.py` asserts: "
             "every technique on a tiny random model (hidden size 64, 2 blocks) of each family. *yes*: outputs "
             "compared with the uncompressed model, replaced layers counted, saved and reloaded with the same "
             "outputs (structurally pruned decoder LMs also through `from_pretrained`). *low-rank 20%*: whitened SVD "
             "removing a fifth of the linear weights, finite outputs, saved and reloaded with the same outputs. "
             "*QAT int8* and *distill*: two "
             "training steps on random batches (distillation from another random model of the family), finite "
             "losses, saved and reloaded. *export hf --dense*: an int8 artifact written as a Hugging Face folder "
             "that the model's own class reads with `from_pretrained` (same outputs within 2%). *export gguf*: a "
             "Q8_0 file written and read back by the `gguf` library. *export onnx*: the int8 model exported and run "
             "by onnxruntime (same outputs within 5%). *no*: refused with the one-line reason listed below.", "",
             "| family | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    reasons = []
    for fam, row in results.items():
        lines.append(f"| {fam} | " + " | ".join(mark[row[c].status] for c in cells) + " |")
        reasons += [f"- {fam}, {c}: {row[c].detail}" for c in cells if row[c].status != "ok"]
    return "\n".join(lines + ["", "## Why not", ""] + (reasons or ["(every cell works)"]) + [""])


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/architectures.md")
    out.write_text(markdown(run_matrix()))
    print(f"wrote {out}")
