"""`torchslim kernels` shows this machine's table and says which row counts were measured too noisily to trust."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from torchslim.quantization import kernel_table as kt

EXE = str(Path(sys.executable).with_name("torchslim"))


def _show(table_file: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCHSLIM_KERNEL_TABLE": str(table_file), "COLUMNS": "200"}
    return subprocess.run([EXE, "kernels"], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_noisy_rows_are_named_in_a_warning(tmp_path) -> None:
    rows = [1, 8]
    table = {"version": kt.TABLE_VERSION, "rows": rows, "layer": [8, 8], "fp32_s": {"1": 2.0, "8": 4.0},
             "spread": {"1": 0.02, "8": 1.5},
             "formats": {"int4-g32": {kt.PACKED: {"1": 1.0, "8": 2.0}, kt.DENSE_BF16: {"1": 3.0, "8": 3.0}}}}
    (tmp_path / "t.json").write_text(json.dumps(table))
    res = _show(tmp_path / "t.json")
    assert res.returncode == 0, res.stderr
    assert "2.00x*" in res.stdout and "warning: the timings at 8 rows spread more than 25%" in res.stdout
    del table["spread"]
    (tmp_path / "t.json").write_text(json.dumps(table))
    assert "warning" not in _show(tmp_path / "t.json").stdout
