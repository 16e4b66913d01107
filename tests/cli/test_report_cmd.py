"""`torchslim report INPUT... -o report.html`: writes one page atomically with the user's file mode; bad input is
one `error:` line and exit 2."""
import os
import stat

import pytest

from torchslim.cli.main import main
from torchslim.eval.report import QualityResult, Report, SizeResult


def _report(name: str, ppl: float, size: int) -> Report:
    return Report(model=name, task="causal-lm", device="cpu", device_name="cpu", threads=2, torch_version="2",
                  torchslim_version="0", timestamp="t", quality=QualityResult({"perplexity": ppl}, "perplexity", False),
                  size=SizeResult(size, "measured", 10, 10, 10, size, 8.0, size))


def _run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["report", *map(str, args)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_two_evaluations_make_a_page_with_a_table_and_a_plot(tmp_path, capsys):
    _report("base", 20.0, 4000).save(tmp_path / "a.json")
    _report("int4", 21.0, 1000).save(tmp_path / "b.json")
    old = os.umask(0o027)
    try:
        code, out, err = _run(capsys, tmp_path / "a.json", tmp_path / "b.json", "-o", tmp_path / "r" / "report.html")
    finally:
        os.umask(old)
    assert code == 0, err
    page = tmp_path / "r" / "report.html"
    assert "wrote" in out and stat.S_IMODE(page.stat().st_mode) == 0o640
    text = page.read_text()
    assert "base (baseline)" in text and text.count("<img") == 1 and "Not in this report" in text
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["report.html"]       # no temporary file left


def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    _report("base", 20.0, 4000).save(tmp_path / "a.json")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "dir").mkdir()
    for args, fragment in (([tmp_path / "nope", "-o", tmp_path / "r.html"], "no such file or folder"),
                           ([tmp_path / "bad.json", "-o", tmp_path / "r.html"], "not JSON"),
                           ([tmp_path / "a.json", "-o", tmp_path / "dir"], "not a folder or a link"),
                           ([tmp_path / "a.json"], "Missing option")):
        code, _, err = _run(capsys, *args)
        assert code == 2 and err.count("error:") == 1 and fragment in err, err
    assert not (tmp_path / "r.html").exists()
