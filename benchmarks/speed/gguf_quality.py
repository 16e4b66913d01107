"""GGUF export quality on SmolLM2-135M: torchslim's calibrated codes on llama.cpp's own grids against
llama.cpp's reference quantizer of the same type, at the same file size.

For Q4_0 and Q4_1 (groups of 32): "reference" rounds every weight to the grid exactly as llama-quantize does
(``gguf_blocks.round_to_grid`` is byte-identical to it, checked by the unit tests); "torchslim GPTQ" runs GPTQ
with that type's grid (symmetric int4 g32 for Q4_0, asymmetric for Q4_1) and exports its codes as they are.
Both files take the same embedding type (Q8_0) and are read back by transformers (``gguf_file=``),
dequantized, and evaluated by torchslim's causal-LM task on two texts of different domains: GPL-3 and the
held-out Python reference topics. No importance matrix is used by either. Regenerates
docs/results/speed_gguf_quality.md (+ .json).

    python benchmarks/speed/gguf_quality.py
"""
from __future__ import annotations

import copy
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim import GPTQConfig, WeightOnlyConfig  # noqa: E402
from torchslim.artifact.export_gguf import export_gguf  # noqa: E402
from torchslim.data import text as text_data  # noqa: E402
from torchslim.quantization import IntFormat, PerGroup  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402

warnings.filterwarnings("ignore")
OUT = ROOT / "docs/results/speed_gguf_quality.md"
GRIDS = {"Q4_0": IntFormat(4), "Q4_1": IntFormat(4, symmetric=False)}


def evaluate_gguf(path: Path, tasks: dict[str, CausalLMTask]) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return {name: t.evaluate(model)["perplexity"] for name, t in tasks.items()}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--types", nargs="*", default=["Q4_0"], choices=sorted(GRIDS))
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
            fmt = GRIDS[qtype]
            ref = Path(d) / f"ref-{qtype}.gguf"
            export_gguf(art_float, ref, qtype=qtype, embed_type="Q8_0")     # every layer rounded: llama.cpp's grid
            m = copy.deepcopy(base)
            sel = torchslim.Selector(include=(torch.nn.Linear,), exclude=("lm_head",))
            torchslim.quantize_(m, GPTQConfig(weight=WeightOnlyConfig(format=fmt, granularity=PerGroup(32),
                                                                      selector=sel)), calibration=task)
            art = torchslim.save(m, Path(d) / f"gptq-{qtype}", source=loaded.source)
            ours = Path(d) / f"gptq-{qtype}.gguf"
            info = export_gguf(art, ours, qtype=qtype, embed_type="Q8_0")
            for name, path, note in ((f"{qtype} reference rounding (llama-quantize's)", ref,
                                      "round-to-nearest, as llama.cpp's quantizer without an importance matrix"),
                                     (f"{qtype} torchslim GPTQ", ours, f"GPTQ on the {qtype} grid, "
                                      f"{info['exact_layers']} layers' codes written as they are")):
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
                             "that grid almost exactly, so Q4_0 is the informative comparison."])


if __name__ == "__main__":
    main()
