"""llama.cpp's own tools on every decoder family torchslim exports to GGUF: each tiny family model
(``torchslim.zoo.families``, random weights, sliding windows shortened to 8 tokens so a 64-token context crosses
them) is written as F32 and Q8_0 GGUF files, then

* ``llama-perplexity`` scores a text with the file (chunks of 64 tokens, the second half of each scored) and the
  same number is computed from the torchslim model in PyTorch, token for token (llama.cpp's BOS handling included):
  for F32 they agree when llama.cpp runs the architecture as transformers does;
* ``llama-bench`` times prompt processing and generation (proof that the graph loads and runs).

Random tiny models have perplexities near their vocabulary size (257); the comparison, not the value, is the result.
Needs the tools (``make llama-cpp``); without them it says so and exits. Regenerates
docs/results/speed_gguf_families.md (+ .json).

    python benchmarks/speed/gguf_families.py
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, write_table  # noqa: E402

import llamacpp  # noqa: E402
from torchslim.artifact.export_gguf import write_gguf  # noqa: E402
from torchslim.artifact.gguf_families import FAMILIES  # noqa: E402
from torchslim.data import text as text_data  # noqa: E402
from torchslim.zoo.families import build_family  # noqa: E402
from torchslim.zoo.tiny import EOS, byte_tokenizer  # noqa: E402

OUT = ROOT / "docs/results/speed_gguf_families.md"
CTX, CHUNKS, WINDOW = 64, 8, 8
TYPES = ("F32", "Q8_0")
# tiny-model settings llama.cpp can express: a short window, and its query scale (1/sqrt(head_dim))
OVERRIDES = {"mistral": {"sliding_window": 4096}, "gemma2": {"sliding_window": WINDOW, "query_pre_attn_scalar": 16},
             "gemma3": {"sliding_window": WINDOW, "query_pre_attn_scalar": 16}, "phi3": {"sliding_window": 4096}}


def _family_names() -> list[str]:
    """Zoo family names of the architectures export_gguf writes (gguf_families keys them by model_type)."""
    return ["gemma3" if mt == "gemma3_text" else mt for mt in FAMILIES]


def _torch_perplexity(model: torch.nn.Module, ids: list[int], bos: int | None) -> float:
    """What llama-perplexity computes: BOS prepended (when the file says so) and written over each chunk's first
    token; chunks of CTX tokens; the second half of each chunk scored."""
    tokens = ([bos] if bos is not None else []) + ids
    nll, count = 0.0, 0
    for c in range(min(CHUNKS, len(tokens) // CTX)):
        chunk = torch.tensor(tokens[c * CTX:(c + 1) * CTX])
        if bos is not None:
            chunk[0] = bos
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=chunk[None]).logits[0].float(), -1)
        first = CTX // 2
        target = chunk[first + 1:]
        nll -= float(logp[first:CTX - 1].gather(-1, target[:, None]).sum())
        count += len(target)
    return math.exp(nll / count)


def _bos(path: Path) -> int | None:
    import gguf

    fields = gguf.GGUFReader(path).fields
    add = fields.get("tokenizer.ggml.add_bos_token")
    if add is None or not add.contents():
        return None
    return int(fields["tokenizer.ggml.bos_token_id"].contents())


def main() -> None:
    if llamacpp.tools() is None or not (llamacpp.tools() / "llama-perplexity").is_file():
        print("llama.cpp's tools are not built (llama-bench, llama-perplexity): run `make llama-cpp` or set "
              "$LLAMA_CPP_BIN; skipping the GGUF family check")
        return
    threads = os.cpu_count() or 1
    tokenizer = byte_tokenizer((EOS,))
    text = text_data.calibration_text()[: CTX * (CHUNKS + 1) * 2]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="torchslim-gguf-families-") as d:
        text_file = Path(d) / "text.txt"
        text_file.write_text(text)
        for family in _family_names():
            model = build_family(family, vocab_size=257, **OVERRIDES.get(family, {})).model
            for qtype in TYPES:
                path = Path(d) / f"{family}-{qtype}.gguf"
                values: dict[str, object] = {}
                note = ""
                try:
                    write_gguf(model, path, qtype=qtype, embed_type="F32" if qtype == "F32" else "Q8_0",
                               tokenizer=tokenizer, name=f"tiny-{family}")
                    values["ppl torchslim"] = _torch_perplexity(model, ids, _bos(path))
                    values["ppl llama.cpp"] = llamacpp.perplexity(path, text_file, CTX, CHUNKS, threads)
                    values["change"] = f"{100 * (values['ppl llama.cpp'] / values['ppl torchslim'] - 1):+.2f}%"
                    speed = llamacpp.bench(path, threads, n_gen=16, prompts=(CTX,))
                    values["pp tok/s"], values["tg tok/s"] = speed.get(f"pp{CTX}"), speed.get("tg")
                except Exception as e:      # one family failing in llama.cpp is a result, not the end of the run
                    note = f"{type(e).__name__}: {e}"[:200]
                rows.append(Row(f"{family} {qtype}", note, values))
                print(rows[-1], flush=True)
    write_table(OUT, "GGUF export of every decoder family, run by llama.cpp",
                f"Tiny random model of each family (hidden 64, two blocks, byte vocabulary of 257, sliding windows of "
                f"{WINDOW} tokens), written by `torchslim.artifact.export_gguf.write_gguf`; perplexity of the same "
                f"text with chunks of {CTX} tokens from llama-perplexity and from the torchslim model in PyTorch. "
                "Regenerate: `python benchmarks/speed/gguf_families.py` (needs `make llama-cpp`).",
                ["ppl torchslim", "ppl llama.cpp", "change", "pp tok/s", "tg tok/s"], rows,
                ["The tok/s columns show that llama-bench loads and runs each file; for models this small they measure "
                 "overheads and swing with other work on the machine, so they compare nothing.",
                 "GPT-NeoX and Falcon compute exact GELU in transformers and the tanh approximation in llama.cpp: a "
                 "small difference is expected.",
                 "llama.cpp builds that disable Phi-3's sliding window (they log 'Phi SWA is currently disabled', as "
                 "this one does) attend past it, so Phi-3 runs here with a window beyond the context (as Mistral); "
                 "with a shorter window that build differs by design (the export warns).",
                 "llama.cpp sets token attributes by the file's name and aborts on a model named like 'phi3' whose "
                 "vocabulary lacks '<s>', '</s>' or '<unk>' (as the tiny byte vocabulary does): the export then "
                 "writes the name as 'phi_3' and says so.",
                 "llama.cpp's Gemma2 graph picks its query scale by model size; a tiny model has no size class, and "
                 "builds that abort on an unknown size are listed with their error."])


if __name__ == "__main__":
    main()
