"""The main job: the shipped ``int4-gptq`` recipe on an embedded model: evaluate, compress, save, compare.

``torchslim demo`` is ``torchslim run int4-gptq --model smollm2-135m --out out/demo``: the uncompressed
and the compressed model are measured side by side (speed timed interleaved, in one process) and
printed as one table with ratios.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_RECIPE = "int4-gptq"


def run_demo(model: str = "smollm2-135m", out: Path = Path("out/demo"), recipe: str = DEMO_RECIPE, iters: int = 5,
             resume: bool = False, console: Any = None) -> Any:
    """Run the demo recipe on ``model`` into ``out``; returns the :class:`~torchslim.recipes.RunResult`."""
    from torchslim.recipes import RunOptions, load_recipe, run_recipe

    from torchslim.quantization import kernel_table

    rec = load_recipe(recipe)
    if console is not None:
        from rich.markup import escape

        console.print(f"demo: recipe [bold]{escape(rec.name)}[/bold] on {escape(model)}: {escape(rec.description)}")
    if kernel_table.load() is None and kernel_table.may_measure():   # measured once on this machine
        if console is not None:
            console.print("measuring packed kernels against fp32 on this machine (once, about 30 s)")
        kernel_table.ensure()
    result = run_recipe(rec, model, out, RunOptions(resume=resume, iters=iters, decode_tokens=32), console)
    if console is not None:
        from rich.markup import escape

        console.print(escape(f"artifact: {out}   (load it with torchslim.load('{out}'))   report: {Path(out) / 'report.md'}"),
                      soft_wrap=True)   # one line even in an 80-column log: paths stay whole for copying
    return result
