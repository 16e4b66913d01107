"""``torchslim export gguf``: codes off the target grid are one error line (exit 2) naming the command that works."""
from __future__ import annotations

import pytest

import torchslim
from torchslim import WeightOnlyConfig
from torchslim.cli.main import main
from torchslim.quantization import IntFormat, PerGroup
from torchslim.zoo.tiny import tiny_llama


def test_off_grid_codes_are_one_error_line_naming_the_command_that_works(tmp_path, capsys) -> None:
    lm = tiny_llama()
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4), granularity=PerGroup(128)))
    art = torchslim.save(lm.model, tmp_path / "int4", source=lm.source)
    out = tmp_path / "m.gguf"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["export", "gguf", str(art), "-o", str(out), "-t", "Q4_0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert "int4 symmetric g128" in err[0] and f"`torchslim export gguf tiny-llama -o {out} -t Q4_0`" in err[0]
    assert not out.exists()


def test_the_gguf_summary_names_what_was_done_to_each_layer() -> None:
    """A float model's layers are 'calibrated by GPTQ', not 'kept their codes'; K-quant tensors say 'rounded'."""
    from torchslim.cli.export_cmd import gguf_layer_summary

    float_model = {"exact_layers": 180, "calibrated_layers": 180, "rounded_layers": 31, "float_layers": 0,
                   "fallback_layers": 180}
    text = gguf_layer_summary(float_model)
    assert text.startswith("180 calibrated by GPTQ on their grid, 31 rounded to their grid (round-to-nearest)")
    assert "kept their codes" not in text and text.endswith("180 in llama.cpp's fallback type")
    artifact = {**float_model, "calibrated_layers": 0, "exact_layers": 211, "rounded_layers": 0, "fallback_layers": 0}
    assert gguf_layer_summary(artifact) == ("211 packed layers kept their codes, 0 rounded to their grid "
                                            "(round-to-nearest), 0 float")
