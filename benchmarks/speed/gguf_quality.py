"""GGUF export quality on SmolLM2-135M: torchslim's calibrated codes on llama.cpp's own grids against
llama.cpp's reference quantizer of the same type, at the same file size.

For Q4_0 and Q4_1 (groups of 32): "reference" rounds every weight to the grid exactly as llama-quantize does
(``gguf_blocks.round_to_grid`` is byte-identical to it, checked by the unit tests); "torchslim GPTQ" is what
``torchslim export gguf`` writes by default: GPTQ with that type's grid (symmetric int4 g32 for Q4_0, asymmetric for
Q4_1) on the model's calibration data, its codes exported as they are.
Both files take the same embedding type (Q8_0) and are read back by transformers (``gguf_file=``),
dequantized, and evaluated by torchslim's causal-LM task on two texts of different domains: GPL-3 and the
held-out Python reference topics. No importance matrix is used by either.

Q4_K_M is llama.cpp's per-tensor mix; SmolLM2's 576-wide rows are not whole 256-weight super-blocks, so
llama.cpp itself writes most tensors in its fallback Q5_0 (and Q8_0 for the promoted attn_v). "llama-quantize"
is its real file (when the tools are built: ``make llama-cpp``); "torchslim GPTQ" (the default export) runs GPTQ
on exactly the per-tensor grids of the same mix (int5 / int8 symmetric groups of 32 for the Q5_0 / Q8_0 tensors) and rounds
ffn_down (whole super-blocks: Q4_K / Q6_K) from float, so both files hold the same types tensor for tensor.
Regenerates docs/results/speed_gguf_quality.md (+ .json).

    python benchmarks/speed/gguf_quality.py
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim.exports import export_gguf  # noqa: E402
import llamacpp  # noqa: E402
from torchslim.data import text as text_data  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402

warnings.filterwarnings("ignore")
OUT = ROOT / "docs/results/speed_gguf_quality.md"
GRIDS = ("Q4_0", "Q4_1", "Q4_K_M")            # Q4_K_M: compared with llama-quantize's own file when it is built


def evaluate_gguf(path: Path, tasks: dict[str, CausalLMTask]) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return {name: t.evaluate(model)["perplexity"] for name, t in tasks.items()}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--types", nargs="*", default=["Q4_0"], choices=GRIDS)
    args = ap.parse_args()
    loaded = torchslim.load_model("smollm2-135m")
    base, task = loaded.model.eval(), loaded.task
    pydoc = CausalLMTask(task.tokenizer, seq_len=512, eval_text=text_data.split_text("pydoc-eval"))
    tasks = {"GPL-3": task, "Python reference": pydoc}
    base_ppl = {n: t.evaluate(base)["perplexity"] for n, t in tasks.items()}
    rows = [Row("fp32", "uncompressed (transformers, no GGUF)", {f"ppl {n}": v for n, v in base_ppl.items()})]
    with tempfile.TemporaryDirectory(prefix="torchslim-gguf-") as d:
        art_float = torchslim.save(base, Path(d) / "fp32", source=loaded.source)
        for qtype in args.types:
            ref = Path(d) / f"ref-{qtype}.gguf"
            variants = []
            if qtype != "Q4_K_M":
                export_gguf(art_float, ref, qtype=qtype, embed_type="Q8_0", calibrate=False)   # llama.cpp's rounding
                variants.append((f"{qtype} reference rounding (llama-quantize's)", ref,
                                 "round-to-nearest, as llama.cpp's quantizer without an importance matrix"))
            else:
                if llamacpp.tools():
                    cache = ROOT / "benchmarks/.cache/gguf"
                    variants.append((f"{qtype} llama-quantize", llamacpp.make_ggufs(cache, (qtype,))[qtype],
                                     "llama.cpp's own quantizer, no imatrix"))
                    imat = llamacpp.imatrix_quantize(llamacpp.make_ggufs(cache, ("F32",))["F32"],
                                                     text_data.calibration_text(), qtype, cache / "imatrix")
                    if imat is not None:
                        variants.append((f"{qtype} llama-quantize with imatrix", imat, "llama.cpp's quantizer with "
                                         "an importance matrix from llama-imatrix on the license texts torchslim "
                                         "calibrates on"))
                info = export_gguf(art_float, ref, qtype=qtype, embed_type="Q8_0", calibrate=False)
                variants.append((f"{qtype} torchslim rounding", ref, f"`torchslim export gguf --no-calibrate`: "
                                 f"{info['rounded_layers']} tensors rounded"))
            ours = Path(d) / f"gptq-{qtype}.gguf"        # what `torchslim export gguf smollm2-135m -t <type>` writes
            info = export_gguf(art_float, ours, qtype=qtype, embed_type="Q8_0")
            variants.append((f"{qtype} torchslim GPTQ", ours, f"`torchslim export gguf` (calibrated by default): GPTQ "
                             f"on each tensor's {qtype} grid, {info['exact_layers']} layers' codes written as they "
                             f"are, {info['rounded_layers']} rounded"))
            for name, path, note in variants:
                ppl = evaluate_gguf(path, tasks)
                values = {"file MiB": path.stat().st_size / 2**20}
                for n, v in ppl.items():
                    values[f"ppl {n}"] = v
                    values[f"change {n}"] = f"{100 * (v / base_ppl[n] - 1):+.1f}%"
                rows.append(Row(name, note, values))
                print(rows[-1], flush=True)
    cols = ["file MiB"] + [c for n in tasks for c in (f"ppl {n}", f"change {n}")]
    write_table(OUT, "GGUF export quality: SmolLM2-135M", "Perplexity (512-token windows) of GGUF files read back "
                "by transformers and evaluated by torchslim's task on GPL-3 and on the held-out Python reference "
                "topics (calibration used the license texts). Regenerate: `python benchmarks/speed/gguf_quality.py`.",
                cols, rows, ["SmolLM2's weights come from a Q4_1 file (groups of 32, asymmetric): Q4_1 round-trips "
                             "that grid almost exactly, so Q4_0 is the informative comparison.",
                             "SmolLM2's 576-wide rows are not whole 256-weight super-blocks, so both Q4_K_M files hold "
                             "Q5_0 for attn_q/k/output, ffn_gate/up and 16 attn_v, Q8_0 for the other 14 attn_v (Q6_K's "
                             "fallback) and Q4_K (16) / Q6_K (14) only for ffn_down, as llama.cpp decides per tensor."])


if __name__ == "__main__":
    main()
