"""The report's inputs as files: a run folder (the shared real artifact plus a run's report.json), an evaluation
JSON, a sensitivity folder and a front JSON."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))     # _report_inputs
from _report_inputs import FRONT, SCAN, evaluation, write_run  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pruned_int8_artifact) -> dict[str, Path]:
    """A run folder (artifact + report.json), an evaluation JSON, a sensitivity folder and a front JSON."""
    root = tmp_path_factory.mktemp("report-inputs")
    run = root / "run-int8"
    shutil.copytree(pruned_int8_artifact, run)
    write_run(run, "int8-weight-only", evaluation("uncompressed", 20.0, 400_000, 10.0),
              evaluation("compressed", 20.5, 120_000, 6.0))
    evaluation("int4 (eval)", 22.0, 70_000, 5.0).save(root / "int4.json")
    (root / "scan").mkdir()
    (root / "scan" / "sensitivity.json").write_text(json.dumps(SCAN))
    (root / "front.json").write_text(json.dumps(FRONT))
    return {"run": run, "eval": root / "int4.json", "scan": root / "scan", "front": root / "front.json",
            "root": root}
