"""`torchslim config example VERB` prints a complete config file that the verb accepts; the README shows them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from torchslim.cli.config_cmd import EXAMPLES
from torchslim.cli.main import _register_commands, app
from torchslim.core.config import config_from_dict, read_mapping
from torchslim.pruning import UnstructuredConfig
from torchslim.quantization import GPTQConfig
from torchslim.recipes import load_recipe
from torchslim.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"quantize": GPTQConfig, "prune": UnstructuredConfig, "finetune": TrainConfig}


def _example(verb: str) -> str:
    _register_commands()
    res = CliRunner().invoke(app, ["config", "example", verb])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("verb", sorted(EXAMPLES))
def test_each_example_is_a_file_its_verb_reads(tmp_path, verb) -> None:
    path = tmp_path / f"{verb}.yaml"
    path.write_text(_example(verb))
    if verb == "run":
        assert load_recipe(path).stages
    else:
        cfg = config_from_dict(read_mapping(path))
        assert type(cfg) is EXPECTED[verb]


def test_the_quantize_example_spells_out_int4_groups_of_128() -> None:
    cfg = config_from_dict(yaml.safe_load(_example("quantize")))
    assert cfg.weight.format.bits == 4 and not cfg.weight.format.symmetric and cfg.weight.granularity.size == 128


def test_the_readme_shows_the_examples_as_printed() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    for verb in ("quantize", "prune", "finetune"):
        assert _example(verb) in blocks, f"README's {verb} config file differs from `torchslim config example {verb}`"


def test_an_unknown_verb_is_one_line() -> None:
    _register_commands()
    res = CliRunner().invoke(app, ["config", "example", "nope"])
    assert res.exit_code != 0 and "verbs that take a config file" in str(res.exception)
