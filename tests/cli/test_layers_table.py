import io

import pytest
from rich.console import Console

from torchslim.cli.layers_table import elide_left, layers_table


def test_elide_left_keeps_the_tail():
    assert elide_left("model.layers.12.mlp.up_proj", 40) == "model.layers.12.mlp.up_proj"
    assert elide_left("model.layers.12.mlp.up_proj", 16) == "….12.mlp.up_proj"
    assert len(elide_left("model.layers.12.mlp.up_proj", 16)) == 16
    with pytest.raises(ValueError):
        elide_left("abc", 1)


def _render(layers, width, group=True):
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(layers_table(layers, console.width, group=group))
    return console.export_text()


def test_rows_stay_distinguishable_on_an_80_column_line():
    names = [f"model.layers.{i}.self_attn.{p}_proj" for i in (2, 12, 29) for p in "qkvo"]
    layers = [{"name": n, "technique": "gptq", "storage": "int4-asym PerGroup(128)", "kernel": "int4pack_mm"}
              for n in names]
    text = _render(layers, 80, group=False)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    first_cells = [line.split("│")[1].strip() for line in lines if line.startswith("│") and "gptq" in line]
    assert len(first_cells) == len(names) and len(set(first_cells)) == len(names)     # no two rows alike
    for name, cell in zip(names, first_cells):
        assert name.endswith(cell.lstrip("…"))                                      # the tail survives
    assert "int4pack_mm" in text and "PerGroup(128)" in text                        # other columns whole


def test_wide_line_shows_whole_names():
    layers = [{"name": "model.layers.29.self_attn.o_proj", "technique": "rtn", "storage": "int8", "kernel": "x"}]
    assert "model.layers.29.self_attn.o_proj" in _render(layers, 200)


def test_layers_alike_in_every_block_share_a_row():
    """SmolLM2's 211 layers printed 430 lines; layers stored and run alike in every block now share a row."""
    int4 = {"technique": "gptq", "storage": "int4-asym PerGroup(128)", "kernel": "int4pack_mm"}
    layers = [{"name": f"model.layers.{i}.mlp.{p}_proj", **int4} for i in range(30) for p in ("up", "down")]
    layers[2 * 7 + 1] = {**layers[2 * 7 + 1], "storage": "int8 PerChannel"}      # block 7's down_proj differs
    layers.append({"name": "lm_head", "technique": "rtn", "storage": "int8 PerChannel", "kernel": "x"})
    text = _render(layers, 200)
    assert "model.layers.{0..29}.mlp.up_proj" in text
    assert "model.layers.{0..6,8..29}.mlp.down_proj" in text and "model.layers.7.mlp.down_proj" in text
    assert "lm_head" in text
    assert sum(line.startswith("│") for line in text.splitlines()) == 4           # 4 rows (the header: ┃)
