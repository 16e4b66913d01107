"""The report's figures: the Pareto front, in either direction of quality, and PNG output."""
from __future__ import annotations

from torchslim.report.inputs import Front, Point
from torchslim.report.plots import heat_map, on_front, pareto, pareto_front, png


def _points(qualities):
    return [Point(f"p{i}", "uniform", b, q) for i, (b, q) in enumerate(zip((100, 50, 40, 30, 30), qualities))]


def test_the_front_keeps_the_points_nothing_beats_on_both_size_and_quality():
    ps = _points((8.0, 9.0, 12.0, 10.0, 11.0))          # sizes 100, 50, 40, 30, 30
    assert [p.name for p in pareto_front(ps, True)] == ["p4", "p2"]              # higher is better (accuracy)
    assert [p.name for p in pareto_front(ps, False)] == ["p3", "p1", "p0"]       # lower is better (perplexity)
    assert [p.name for p in pareto_front(ps, True, cost=lambda p: -p.bytes)] == ["p0", "p1", "p2"]


def test_a_front_file_names_its_front_and_the_figures_are_pngs():
    f = Front("f", "top1", True, _points((10.0, 10.0, 12.0, 9.0, 8.0)), front=["p0", "p2"])
    assert [p.name for p in on_front(f)] == ["p2", "p0"]
    f.points[0].latency_ms, f.points[1].latency_ms = 3.0, 2.0
    two = png(pareto(f))
    assert two[:4] == b"\x89PNG"
    assert png(heat_map(["a"], ["int8"], [[None]], "kl", "layer"))[:4] == b"\x89PNG"    # says nothing was measured
