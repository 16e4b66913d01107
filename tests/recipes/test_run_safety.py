"""What a recipe run refuses or falls back from: bad run state, links, recipe folder fields, rich markup, a
tampered manifest ``files`` list (issue 26, runs half)."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest
from torch import nn

import torchslim
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.recipes import Recipe, RunOptions, run_recipe
from torchslim.recipes.runner import RUN_FORMAT, _data_key, _RunFolder

QUANT = {"_type": "WeightOnlyConfig", "format": {"_type": "IntFormat", "bits": 8}, "selector": {"exclude": ["lm_head"]}}
CAST = {"_type": "CastConfig", "dtype": "bfloat16", "selector": {"include": ["type:Embedding"]}}
FAST = RunOptions(report=False)


def _recipe(*stages, name="r") -> Recipe:
    return Recipe.from_dict({"recipe": name, "stages": list(stages)})


def _kinds(out) -> list[str]:
    return [h["name"] for h in torchslim.artifact.read_manifest(out)["history"]]


def _interrupted(out, recipe: Recipe, **state) -> _RunFolder:
    """``out`` as a run killed after stage 0 leaves it (the model of stage 0: plain tiny-llama here)."""
    folder = _RunFolder(out)
    digest = folder.checkpoint(torchslim.load_model("tiny-llama").model, 0)
    folder.write({"format": RUN_FORMAT, "recipe_name": recipe.name, "fingerprint": recipe.fingerprint(),
                  "model": "tiny-llama", "data": _data_key(FAST), "completed": 0, "checkpoint": 0,
                  "checkpoint_sha256": digest, "rows": [], **state})
    return folder


@pytest.mark.parametrize("bad", [{"completed": 999}, {"completed": -3}, {"completed": True}, {"checkpoint": 5},
                                 {"checkpoint_sha256": "0" * 64}, {"rows": [[[[]]]]}, {"fingerprint": 5}])
def test_a_bad_run_state_falls_back_to_the_first_stage_with_one_warning(tmp_path, caplog, bad):
    recipe = _recipe({"quantize": CAST}, {"quantize": QUANT})
    _interrupted(tmp_path / "o", recipe, **bad)
    with caplog.at_level(logging.WARNING, logger="torchslim"):
        result = run_recipe(recipe, "tiny-llama", tmp_path / "o", RunOptions(report=False, resume=True))
    warned = [r.getMessage() for r in caplog.records if "starting over from the first stage" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert result.resumed_from is None and _kinds(tmp_path / "o") == ["CastConfig", "WeightOnlyConfig"]
    assert not (tmp_path / "o" / ".torchslim-run").exists() and not (tmp_path / "o" / ".torchslim-lock").exists()


def test_a_good_run_state_still_resumes_after_its_checkpoint(tmp_path):
    recipe = _recipe({"quantize": CAST}, {"quantize": QUANT})
    _interrupted(tmp_path / "o", recipe)
    result = run_recipe(recipe, "tiny-llama", tmp_path / "o", RunOptions(report=False, resume=True))
    assert result.resumed_from == 1 and _kinds(tmp_path / "o") == ["WeightOnlyConfig"]   # stage 0 was plain here


def test_user_text_is_never_rich_markup(tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr("torchslim.recipes.report.quick_eval", lambda *a, **k: {})    # the label is what matters

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    link, name = "[link=https://e.invalid]click[/link]", "[/] [bold]x"
    recipe = _recipe({"quantize": CAST}, {"evaluate": {"label": link}}, {"save": {"path": "m"}}, name=name)
    run_recipe(recipe, "tiny-llama", tmp_path / "[/]o", FAST, console)
    printed = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())      # colours rich adds are fine
    assert link in printed and "[/]o" in printed and "\x1b]8;" not in printed   # literal; no terminal hyperlink


def test_save_replaces_only_files_it_wrote_never_what_a_manifest_lists(tmp_path):
    out = tmp_path / "a"
    torchslim.save(torchslim.load_model("tiny-llama").model, out)
    (out / "notes.txt").write_text("a user's notes")
    m = json.loads((out / "manifest.json").read_text())
    m["files"].append("notes.txt")
    m["hashes"]["notes.txt"] = "0" * 64                     # a claim the file's content does not back
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "hf-config.json").write_text("{} ")               # a file of ours the user edited since
    torchslim.save(nn.Sequential(nn.Linear(2, 2)), out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["hf-config.json", "manifest.json", "model.safetensors", "notes.txt"]   # config.json: ours, gone


def test_recipe_folder_fields_are_confined_and_reported(tmp_path):
    train = {"train": {"steps": 1, "batch_size": 2, "eval_at_end": False, "checkpoint_dir": "ck"}}
    result = run_recipe(_recipe(train), "tiny-llama", tmp_path / "o", FAST)
    assert (tmp_path / "o" / "ck" / "step-00000001" / "state.json").is_file()
    assert result.report["folders"] == [str(tmp_path / "o" / "ck")]
    for bad, match in (("/tmp/x", "must be relative to the output folder"), ("../x", "stay inside"),
                       ("report.md", "reserved"), ("m", "reserved")):
        body = {"train": {**train["train"], "checkpoint_dir": bad}}
        with pytest.raises(ConfigError, match=f"stage 1 \\(train\\): TrainConfig.checkpoint_dir.*{match}"):
            run_recipe(_recipe(body, {"save": {"path": "m"}}), "tiny-llama", tmp_path / "n", FAST)
        assert not (tmp_path / "n").exists()                  # refused before anything ran or was created


def test_links_at_and_under_out_are_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "ln").symlink_to(victim)
    recipe = _recipe({"quantize": CAST}, {"save": {"path": "m"}})
    with pytest.raises(TorchSlimError, match="is a symbolic link"):
        run_recipe(recipe, "tiny-llama", tmp_path / "ln", FAST)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".torchslim-run").symlink_to(victim)
    with pytest.raises(TorchSlimError, match="not a folder torchslim wrote"):
        run_recipe(recipe, "tiny-llama", tmp_path / "o", FAST)
    (tmp_path / "o" / ".torchslim-run").unlink()
    (tmp_path / "o" / "report.md").mkdir()
    with pytest.raises(TorchSlimError, match="report.md is a folder or a link"):
        run_recipe(recipe, "tiny-llama", tmp_path / "o", RunOptions(report=True, speed=False))
    assert list(victim.iterdir()) == []
