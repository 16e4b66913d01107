"""Evaluation harness: measure quality, size, speed, FLOPs, memory and energy of a model on a task.

    from torchslim.eval import EvalSpec, evaluate, compare, render_table
    report = evaluate(model, task, EvalSpec(iters=20))
    print(report.to_json())
"""
from torchslim.eval.harness import EvalSpec, evaluate, layer_info, model_label
from torchslim.eval.render import compare, format_table, render_table, to_markdown
from torchslim.eval.report import (ComputeResult, DecodeResult, EnergyResult, LatencyStats, MemoryResult,
                                   QualityResult, Report, ShapeEnergy, ShapeSpeed, SizeResult, SpeedResult)
from torchslim.eval.speed import measure_interleaved, measure_latency

__all__ = [
    "ComputeResult", "DecodeResult", "EnergyResult", "EvalSpec", "LatencyStats", "MemoryResult",
    "QualityResult", "Report", "ShapeEnergy", "ShapeSpeed", "SizeResult", "SpeedResult",
    "compare", "evaluate", "format_table", "layer_info", "measure_interleaved", "measure_latency",
    "model_label", "render_table", "to_markdown",
]
