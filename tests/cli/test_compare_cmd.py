import json

import pytest

from torchslim.cli.main import main
from torchslim.eval.report import QualityResult, Report


def _report(name: str, ppl: float, threads: int = 2) -> Report:
    return Report(model=name, task="causal-lm", device="cpu", device_name="cpu", threads=threads,
                  torch_version="2", torchslim_version="0", timestamp="t",
                  quality=QualityResult({"perplexity": ppl}, "perplexity", False))


def _run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["compare", *map(str, args)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_two_evaluations_side_by_side(tmp_path, capsys):
    _report("base", 20.0).save(tmp_path / "a.json")
    _report("int4", 21.0).save(tmp_path / "b.json")
    code, out, _ = _run(capsys, tmp_path / "a.json", tmp_path / "b.json")
    assert code == 0 and "base (baseline)" in out and "int4" in out and "21" in out


def test_a_run_folder_brings_its_baseline_and_two_runs_share_it(tmp_path, capsys):
    base = _report("smol", 20.0)
    for name, ppl in (("r1", 21.0), ("r2", 22.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(
            {"recipe": f"recipe-{name}", "stages": [], "baseline": base.to_dict(), "final": _report("x", ppl).to_dict()}))
    code, out, _ = _run(capsys, tmp_path / "r1", tmp_path / "r2")
    assert code == 0 and out.count("(baseline)") == 1
    assert "r1 (recipe-r1)" in out and "r2 (recipe-r2)" in out and "22.5" in out


def test_different_thread_counts_are_flagged_and_bad_inputs_are_one_error(tmp_path, capsys):
    r = _report("a", 20.0, threads=2)
    from torchslim.eval.report import SpeedResult

    r.speed = SpeedResult([])
    r.save(tmp_path / "a.json")
    other = _report("b", 20.0, threads=8)
    other.speed = SpeedResult([])
    other.save(tmp_path / "b.json")
    code, out, _ = _run(capsys, tmp_path / "a.json", tmp_path / "b.json")
    assert code == 0 and "different machines or thread counts" in out
    (tmp_path / "bad.json").write_text("{not json")
    for args, fragment in (([tmp_path / "a.json"], "two or more"), ([tmp_path / "a.json", tmp_path / "nope"],
                                                                    "no evaluation report"),
                           ([tmp_path / "a.json", tmp_path / "bad.json"], "not JSON")):
        code, _, err = _run(capsys, *args)
        assert code == 2 and err.count("error:") == 1 and fragment in err, err


def test_timings_from_separate_runs_carry_a_note(tmp_path, capsys):
    # SmolLM2 fp32 at 1x128 read 386 ms in `eval --json` and 1,025 ms in a run folder: the ratio was load, not model
    from torchslim.eval.report import SpeedResult

    for name in ("a", "b"):
        r = _report(name, 20.0)
        r.speed = SpeedResult([])
        r.save(tmp_path / f"{name}.json")
    code, out, _ = _run(capsys, tmp_path / "a.json", tmp_path / "b.json")
    assert code == 0 and "separate runs" in out
    _report("c", 21.0).save(tmp_path / "c.json")                     # quality only: no timing, no note
    code, out, _ = _run(capsys, tmp_path / "a.json", tmp_path / "c.json")
    assert code == 0 and "separate runs" not in out
