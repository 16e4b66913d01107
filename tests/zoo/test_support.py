"""The support matrix: every technique on a tiny model of every family works, or is refused with a stated reason."""
import logging
import warnings

import pytest

from torchslim.zoo.families import FAMILIES
from support_matrix import CELLS, SLOW, run_cell

# (family, technique) -> a fragment of the one-line reason it is refused. Everything else must work.
REFUSED = {
    ("phi3", "heads 50%"): "reads its head counts from the config",
    ("falcon", "heads 50%"): "multi-query/grouped layout",
    ("t5", "heads 50%"): "shares one relative position bias",
    ("t5", "drop 1 block"): "encoder-decoder",
    ("bart", "drop 1 block"): "encoder-decoder",
    ("vit", "drop 1 block"): "vision transformers",
}

# Refusals of the export columns (slow test): what llama.cpp's graphs cannot express.
DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2", "opt", "gpt_neox", "falcon")
REFUSED.update({(f, "export gguf"): "GGUF export writes the decoder families llama.cpp runs"
                for f in FAMILIES if f not in DECODERS})
REFUSED.update({
    ("opt", "export gguf"): "llama.cpp has no OPT architecture",
    # the tiny configs keep transformers' default query_pre_attn_scalar=256 with 16-wide heads; llama.cpp derives the
    # query scale from the model's size class and cannot store another one (real Gemma 2/3 checkpoints export)
    ("gemma2", "export gguf"): "cannot express query_pre_attn_scalar",
    ("gemma3", "export gguf"): "cannot express query_pre_attn_scalar",
})


def _check(family, cells):
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        problems = []
        for cell in cells:
            r = run_cell(family, cell)
            expected = REFUSED.get((family, cell))
            if expected is None and r.status != "ok":
                problems.append(f"{cell}: {r.status}: {r.detail[-600:]}")
            elif expected is not None and not (r.status == "refused" and expected in r.detail):
                problems.append(f"{cell}: expected a refusal mentioning {expected!r}, got {r.status}: {r.detail[:300]}")
        assert not problems, "\n".join(problems)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_technique_on_every_family(family):
    _check(family, [c for c in CELLS if c not in SLOW])


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_training_and_every_export_on_every_family(family):
    """QAT, distillation and the three exports: a few training steps or an exporter run per cell (minutes in all)."""
    _check(family, SLOW)
