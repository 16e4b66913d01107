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

# Gaps of torchslim itself, not limits a user could not get past by hand (llama.cpp's own converter reads these
# families from an `export hf --dense` folder): refused in one line today, listed so that closing one fails this test
# and moves the cell to "works". The GGUF writer knows the Llama/Mistral tensor layout only.
# T5's ONNX export fails in the exporter: export_onnx passes input_ids/attention_mask only, and T5 (unlike BART) does
# not derive decoder_input_ids from them.
NOT_YET = {**{(f, "export gguf"): "GGUF export writes Llama-family models" for f in FAMILIES
              if f not in ("llama", "mistral")},
           ("t5", "export onnx"): "the torch ONNX exporter failed on T5ForConditionalGeneration"}


def _check(family, cells):
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        problems = []
        for cell in cells:
            r = run_cell(family, cell)
            expected = REFUSED.get((family, cell)) or NOT_YET.get((family, cell))
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
