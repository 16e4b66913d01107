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


def _render(layers, width):
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(layers_table(layers, console.width))
    return console.export_text()


def test_rows_stay_distinguishable_on_an_80_column_line():
    names = [f"model.layers.{i}.self_attn.{p}_proj" for i in (2, 12, 29) for p in "qkvo"]
    layers = [{"name": n, "technique": "gptq", "storage": "int4-asym PerGroup(128)", "kernel": "int4pack_mm"}
              for n in names]
    text = _render(layers, 80)
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
