"""What the report reads: each kind of input recognised by its content, and bad input as one clear line."""
from __future__ import annotations

import json

import pytest

from torchslim.core.errors import TorchSlimError
from torchslim.report import gather


def test_each_input_is_recognised_by_what_it_holds(inputs):
    got = gather([inputs["run"], inputs["eval"], inputs["scan"], inputs["front"]])
    assert [c.role for c in got.columns] == ["original", "recipe", "evaluated"]
    assert got.columns[1].report.model == "run-int8 (int8-weight-only)"
    assert [r.recipe for r in got.runs] == ["int8-weight-only"] and len(got.runs[0].stages) == 2
    assert [a.label for a in got.artifacts] == ["run-int8"] and got.artifacts[0].manifest["history"]
    assert got.scans[0].groups[0] == "model.layers.0.mlp.up_proj" and got.scans[0].costs[1] == [2e-3, None]
    assert [p.kind for p in got.fronts[0].points] == ["original", "uniform", "uniform", "tuned", "recipe"]
    assert got.sources == [str(p) for p in (inputs["run"], inputs["eval"], inputs["scan"], inputs["front"])]


def test_two_runs_of_one_model_share_their_baseline_and_a_front_file_brings_its_scan(inputs, tmp_path):
    front = json.loads(inputs["front"].read_text())
    front["scan"] = json.loads((inputs["scan"] / "sensitivity.json").read_text())
    (tmp_path / "search.json").write_text(json.dumps(front))
    got = gather([inputs["run"], inputs["run"] / "report.json", tmp_path / "search.json"])
    assert [c.role for c in got.columns] == ["original", "recipe"]      # the second read adds nothing new
    assert len(got.runs) == 1 and got.runs[0].label == "run-int8"
    assert len(got.fronts) == 1 and len(got.scans) == 1


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not JSON"),
    ("[1, 2]", "a JSON list"),
    ('{"hello": 1}', "not a report torchslim reads"),
    ('{"points": []}', "'points' must be a non-empty list"),
    ('{"points": [{"name": "a", "bytes": "big", "q": 1}]}', "points[0].bytes must be a finite number"),
    ('{"points": [{"name": "a", "q": 1}]}', "points[0] needs name, bytes and q"),
    ('{"points": [{"name": "a", "bytes": 1, "q": 1}], "front": "a"}', "'front' must be a list of point names"),
    ('{"actions": ["int8"], "rows": [{"cells": {}}], "measure": "kl", "granularity": "layer"}',
     "not a sensitivity scan"),
    ('{"recipe": "r", "stages": [], "final": null}', "no before/after evaluation"),
    ('{"model": "m", "task": "t", "schema": 99}', "newer than this torchslim reads"),
    ('{"format": "torchslim", "format_version": 2}', "give the artifact's folder"),
])
def test_a_bad_input_is_one_line_naming_the_file(tmp_path, content, fragment):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(TorchSlimError, match="bad.json") as e:
        gather([bad])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_missing_paths_and_foreign_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    for paths, fragment in (([], "nothing to report"), ([tmp_path / "nope"], "no such file or folder"),
                            ([tmp_path / "empty"], "no report.json, manifest.json or sensitivity.json")):
        with pytest.raises(TorchSlimError, match=fragment):
            gather(paths)
