from torchslim.search import Cell, Row, Sensitivity, save, to_markdown
from torchslim.search.report import load


def _result():
    rows = [Row("a", ["a"], 100, 400, {"int8": Cell(1e-4, 100, "2.0x@1"), "2:4": Cell(None, None, "not selected")}),
            Row("b", ["b"], 100, 400, {"int8": Cell(3e-3, 100, "2.0x@1", "a warning"),
                                       "2:4": Cell(None, None, "not applied: shape 3x5")})]
    return Sensitivity("kl", "layer", ["int8", "2:4"], rows, 1.5, 64)


def test_markdown_puts_the_most_sensitive_first_and_says_what_did_not_apply():
    text = to_markdown(_result())
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and "group" not in ln]
    assert table[0].startswith("| b |") and table[1].startswith("| a |")
    assert "0.003" in table[0] and "n/a" in table[0]
    assert "not applied to 1 group(s) (e.g. shape 3x5)" in text and "1 trial(s) warned (e.g. a warning)" in text
    assert "kernel table: 2.0x@1" in text and "KL divergence" in text


def test_a_cut_table_says_how_many_groups_it_left_out():
    cut = to_markdown(_result(), top=1)
    assert [ln for ln in cut.splitlines() if ln.startswith("| b |")] and "| a |" not in cut
    assert "The 1 most sensitive of 2 layers" in cut
    assert "most sensitive of" not in to_markdown(_result(), top=2)


def test_save_writes_json_markdown_and_a_png_that_round_trip(tmp_path):
    files = save(_result(), tmp_path / "s")
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files["png"].stat().st_size > 2000
    back = load(files["json"])
    assert back == _result()
    assert files["md"].read_text().startswith("# Sensitivity")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sensitivity.json", "sensitivity.md",
                                                                  "sensitivity.png"]
