"""``torchslim kernels``: the measured kernel table of this machine (which kernel runs a packed layer at how
many rows, and how fast against fp32)."""
from __future__ import annotations

import typer


def kernels_cmd(
    measure: bool = typer.Option(False, "--measure", help="Measure now (about 30 s), replacing any cached table."),
) -> None:
    """Show (or measure) which kernel runs each packed format at each row count on this machine."""
    from rich.console import Console
    from rich.table import Table

    from torchslim.runtime.machine import machine_line
    from torchslim.quantization import kernel_table as kt

    console = Console()
    if measure:
        with console.status("timing packed kernels against fp32 at 1..4096 rows (interleaved)"):
            path = kt.save(kt.measure())
        console.print(f"saved {path}")
    table = kt.load()
    console.print(f"Machine: {machine_line()}")
    if table is None:
        console.print(f"no kernel table for this machine yet ({kt.table_path()}): packed layers switch to a dense "
                      f"bf16 matmul above {kt.K.LARGE_M} rows by default; run `torchslim kernels --measure`")
        return
    out = Table(title=f"speed against fp32 on a {table['layer'][0]}x{table['layer'][1]} layer (medians, interleaved; "
                      "* = packed kernel, else dequantized bf16 matmul)")
    out.add_column("rows", justify="right")
    speeds = {fmt: kt.speed_vs_fp32(fmt, table) or {} for fmt in table["formats"]}
    for fmt in speeds:
        out.add_column(fmt, justify="right")
    for r in table["rows"]:
        cells = [f"{speeds[f][int(r)][1]:.2f}x" + ("*" if speeds[f][int(r)][0] == kt.PACKED else " ") for f in speeds]
        out.add_row(str(r), *cells)
    console.print(out)


def register(app: typer.Typer) -> None:
    app.command("kernels")(kernels_cmd)
