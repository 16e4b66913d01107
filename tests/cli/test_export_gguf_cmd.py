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
