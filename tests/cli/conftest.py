"""Helpers the CLI tests share."""
import pytest

from torchslim.cli.main import main


def run_verb(capsys, verb, *args):
    """``torchslim VERB ARGS``: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main([verb, *map(str, args)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def short_text(tmp_path):
    """--eval-data/--calib-data flags for a short text: a few windows per evaluation (the search is under test)."""
    text = tmp_path / "short.txt"
    text.write_text(" ".join(f"word{i % 97} and the license says {i}" for i in range(400)))
    return ["--eval-data", str(text), "--calib-data", str(text)]
