"""``torchslim kernels``: the measured kernel table of this machine (which kernel runs a packed layer at how
many rows, and how fast against fp32)."""
from __future__ import annotations

import typer


def kernels_cmd(
    measure: bool = typer.Option(False, "--measure", help="Measure now (30 s on a quiet machine, minutes on a busy "
                                                          "one), replacing the cached table unless the new timings "
                                                          "are noisier than its own."),
) -> None:
    """Show (or measure) which kernel runs each packed format at each row count on this machine."""
    from rich.console import Console
    from rich.table import Table

    from torchslim.quantization import kernel_table as kt
    from torchslim.runtime.machine import machine_line

    console = Console()
    if measure:
        # a plain line, not a spinner: its refresh thread would compete with the timed calls
        console.print("[dim]timing packed kernels against fp32 at 1..4096 rows (interleaved)[/dim]")
        fresh, saved = kt.measure(), kt.load()
        if kt.noisier(fresh, saved):
            console.print(f"[yellow]warning:[/yellow] these timings were too noisy at {len(kt.noisy_rows(fresh))} of "
                          f"{len(fresh['rows'])} row counts, the saved table at {len(kt.noisy_rows(saved))}: kept "
                          f"the saved table ({kt.table_path()}); rerun on a quiet machine")
        else:
            console.print(f"saved {kt.save(fresh)}")
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
    noisy = kt.noisy_rows(table)
    if noisy:
        console.print(f"[yellow]warning:[/yellow] the timings at {', '.join(map(str, noisy))} rows spread more than "
                      f"{kt.NOISY_SPREAD:.0%} (p90 against median): too noisy to trust (is other work running?); "
                      "rerun `torchslim kernels --measure` on a quiet machine")


def register(app: typer.Typer) -> None:
    app.command("kernels")(kernels_cmd)
