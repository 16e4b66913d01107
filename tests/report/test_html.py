"""The HTML report: which sections the inputs fill, escaping, and the page as a real headless Chromium shows it
(no console errors, every plot decoded, a screenshot)."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from chromium import INSTALL, check_page, find
from _report_inputs import evaluation

from torchslim.report import gather, render, write
from torchslim.report.html import MISSING


@pytest.fixture(scope="module")
def page(inputs) -> Path:
    return write([inputs["run"], inputs["eval"], inputs["scan"], inputs["front"]], inputs["root"] / "report.html")


def _sections(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', text)


def test_every_section_from_a_run_an_evaluation_a_scan_and_a_front(page):
    text = page.read_text()
    assert _sections(text) == ["before-after-table", "size-quality-Pareto-plot", "sensitivity-heat-map",
                               "per-layer-kernel-and-format-table", "history-of-stages"]
    assert "Not in this report" not in text
    assert text.count('<img class="plot"') == 3           # runs + evaluation plot, the front's plot, the heat map
    assert "uncompressed (baseline)" in text and "run-int8 (int8-weight-only)" in text and "int4 (eval)" in text
    layers = text.split('id="per-layer-kernel-and-format-table"')[1].split("</section>")[0]
    assert "model.layers.0.mlp.up_proj" in layers and "QuantLinear" in layers and "int8" in layers
    history = text.split('id="history-of-stages"')[1]
    assert "quantize WeightOnlyConfig" in history and "recipe int8-weight-only" in history
    assert "http://" not in text and "https://" not in text and "<script" not in text     # nothing loaded or run


def test_a_section_without_input_is_named_with_what_would_fill_it(inputs):
    text = render(gather([inputs["eval"]]))
    assert _sections(text) == ["before-after-table"]
    missing = text.split("Not in this report")[1].split("</ul>")[0]
    for title in MISSING:
        assert (title in missing) == (title != "before/after table"), title
    assert "torchslim sensitivity MODEL -o DIR" in missing and "<img" not in text
    scan_only = render(gather([inputs["scan"]]))
    assert _sections(scan_only) == ["sensitivity-heat-map"] and scan_only.count("<img") == 1


def test_an_artifact_alone_gives_its_layers_and_the_history_its_manifest_records(pruned_int8_artifact):
    text = render(gather([pruned_int8_artifact]))
    assert _sections(text) == ["per-layer-kernel-and-format-table", "history-of-stages"]
    history = text.split('id="history-of-stages"')[1]
    assert "StructuredConfig" in history and "WeightOnlyConfig" in history and "QuantLinear" in history


def test_every_string_from_a_file_is_escaped(tmp_path, inputs):
    evil = "<script>alert(1)</script>"
    evaluation(evil, 20.0, 1000).save(tmp_path / "a.json")
    evaluation('b" onload="x', 21.0, 500).save(tmp_path / "b.json")
    scan = json.loads((inputs["scan"] / "sensitivity.json").read_text())
    scan["rows"][0]["group"] = "<b>layer</b>"
    scan["rows"][1]["group"] = r"$\frac{$"            # not matplotlib math either: drawn as written
    (tmp_path / "s.json").write_text(json.dumps(scan))
    front = {"metric": "<i>m</i>", "points": [{"name": "<p>x", "kind": "<k>", "bytes": 10, "q": 1.0},
                                              {"name": "$\\frac{$", "kind": "recipe", "bytes": 5, "q": 0.5}]}
    (tmp_path / "f.json").write_text(json.dumps(front))
    text = render(gather([tmp_path / n for n in ("a.json", "b.json", "s.json", "f.json")]), title="<t>")
    assert text.count("<img") == 3
    for raw in (evil, "<b>layer</b>", "<i>m</i>", "<p>x", "<k>", "<t>", '" onload="'):
        assert raw not in text, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;b&gt;layer&lt;/b&gt;" in text


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _chromium() -> None:
    if find() is None:
        pytest.fail(INSTALL)


def test_the_page_in_headless_chromium_has_no_errors_and_shows_every_plot(page, tmp_path):
    _chromium()
    check = check_page(page, tmp_path / "report.png")
    assert check.errors == []
    assert check.title == "torchslim report"
    assert len(check.images) == page.read_text().count("<img") == 3
    for image in check.images:
        assert image["complete"] and image["width"] > 200 and image["height"] > 200, image
    width, height = _png_size(check.screenshot)
    assert width >= 1280 and height > 2000            # the whole page, not the first screen


def test_the_browser_check_fails_on_a_broken_page(tmp_path):
    _chromium()
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>'
                   '<img alt="corrupt" src="data:image/png;base64,AAAAAAAA"><img alt="gone" src="missing.png">'
                   "<script>notDefined()</script><script>console.error('boom')</script></body></html>")
    check = check_page(bad, tmp_path / "bad.png")
    assert any("notDefined" in e for e in check.errors) and any("boom" in e for e in check.errors)
    assert any("missing.png" in e for e in check.errors)
    assert [i["width"] for i in check.images] == [0, 0]
