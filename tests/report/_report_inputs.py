"""Inputs of the HTML report built without running a model: evaluation reports, a run's report.json, a
sensitivity scan and a front."""
from __future__ import annotations

import json
from pathlib import Path

from torchslim.eval.report import QualityResult, Report, ShapeSpeed, SizeResult, SpeedResult
from torchslim.runtime.timing import LatencyStats


def evaluation(name: str, ppl: float, size: int, ms: float | None = None) -> Report:
    r = Report(model=name, task="causal-lm", device="cpu", device_name="test cpu", threads=2, torch_version="2",
               torchslim_version="0", timestamp="t", quality=QualityResult({"perplexity": ppl}, "perplexity", False),
               size=SizeResult(size, "measured", 1000, 1000, 1000, size, 8.0 * size / 1000, size))
    if ms is not None:
        lat = LatencyStats(iters=5, median_ms=ms, p90_ms=ms * 1.1, mean_ms=ms, min_ms=ms, max_ms=ms, std_ms=0.0)
        r.speed = SpeedResult([ShapeSpeed(1, 32, lat, 1000 / ms, 32000 / ms)])
    return r


def write_run(folder: Path, recipe: str, base: Report, final: Report) -> Path:
    stages = [{"index": 0, "stage": "uncompressed model", "seconds": 1.0, "changed": "", "params": 1000,
               "memory_bytes": 4000, "metrics": {"perplexity": base.quality.metrics["perplexity"]}},
              {"index": 1, "stage": "quantize WeightOnlyConfig", "seconds": 0.5, "changed": "14 QuantLinear",
               "params": 1000, "memory_bytes": 1000, "metrics": {}}]
    (folder / "report.json").write_text(json.dumps({"recipe": recipe, "model": "tiny-llama", "metric": "perplexity",
                                                    "machine": "test machine", "stages": stages,
                                                    "baseline": base.to_dict(), "final": final.to_dict()}))
    return folder


SCAN = {"measure": "kl", "granularity": "layer", "actions": ["int8", "sparse50"], "seconds": 3.0, "positions": 64,
        "configs": {}, "rows": [
            {"group": "model.layers.0.mlp.up_proj", "layers": ["a"], "params": 10, "bytes": 40,
             "cells": {"int8": {"cost": 1e-4, "bytes": 10, "note": ""}, "sparse50": {"cost": 3e-2, "bytes": 20}}},
            {"group": "model.layers.0.mlp.down_proj", "layers": ["b"], "params": 10, "bytes": 40,
             "cells": {"int8": {"cost": 2e-3, "bytes": 10, "note": ""}, "sparse50": {"cost": None, "bytes": None}}}]}

FRONT = {"metric": "top1", "machine": "test machine", "points": [
    {"name": "fp32", "kind": "original", "bytes": 300000, "q": 99.7},
    {"name": "int8 everywhere", "kind": "uniform", "bytes": 80000, "q": 99.7},
    {"name": "int2 everywhere", "kind": "uniform", "bytes": 25000, "q": 75.0},
    {"name": "tuned, loss <= 1", "kind": "tuned", "bytes": 28000, "q": 98.9},
    {"name": "sparse50-int8", "kind": "recipe", "bytes": 60000, "q": 99.0}]}
