"""SmolLM2-135M GPTQ int4: layer-wise onloading against the in-memory run (peak RSS, time, identical weights).

Each run is its own process (peak RSS is the process's VmHWM); the two variants alternate for ``--rounds`` rounds
and the table quotes medians. GPTQ with ``--n-samples`` calibration windows (default 16 of the task's 512 tokens,
not the method's 128, to keep the runs to minutes on 2 shared cores; both variants use the same).

Writes docs/results/scale_smollm2.md and .json. Run under the benchmark lock: ``make bench-scale`` does.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Row, machine_line, write_table  # noqa: E402
from cap import run_capped  # noqa: E402

RES = ROOT / "docs/results"
MB = 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/torchslim-scale/smollm2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    runs: dict[str, list[dict]] = {"memory": [], "onload": [], "memory-bounded": []}
    path = RES / "scale_smollm2_runs.json"     # scale_smollm2.json is the table's rows
    for i in range(args.rounds):
        for mode in runs:
            out = Path(args.work) / f"{mode}-{i}"
            cmd = [str(Path(__file__).with_name("run_one.py")), "--mode", mode, "--method", "gptq", "--model",
                   "smollm2-135m", "--out", str(out), "--n-samples", str(args.n_samples), "--threads",
                   str(args.threads)]
            r = run_capped(cmd, None, env)
            print(json.dumps({k: v for k, v in r.items() if k != "onload"}), flush=True)
            if r.get("returncode") != 0:
                raise SystemExit(f"{mode} run failed: {r.get('error')}")
            runs[mode].append(r)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"runs": runs}, indent=1))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_rss", "rss_after_imports")}
           for m, rs in runs.items()}
    same = len({r["sha256"] for rs in runs.values() for r in rs}) == 1
    ratio_rss = med["onload"]["peak_rss"] / med["memory"]["peak_rss"]
    grown = {m: med[m]["peak_rss"] - med[m]["rss_after_imports"] for m in med}
    ratio_grown = grown["onload"] / grown["memory"]
    ratio_time = med["onload"]["seconds"] / med["memory"]["seconds"]
    rows = [Row("in memory", "load_model + GPTQ + save", {"peak RSS MB": round(med["memory"]["peak_rss"] / MB),
                                                          "RSS above imports MB": round(grown["memory"] / MB),
                                                          "seconds": round(med["memory"]["seconds"], 1)}),
            Row("onloaded", runs["onload"][0].get("onload_line", ""),
                {"peak RSS MB": round(med["onload"]["peak_rss"] / MB), "RSS above imports MB": round(grown["onload"] / MB),
                 "seconds": round(med["onload"]["seconds"], 1)}),
            Row("onloaded / in memory", "weights identical" if same else "WEIGHTS DIFFER",
                {"peak RSS MB": f"{ratio_rss:.2f}x", "RSS above imports MB": f"{ratio_grown:.2f}x",
                 "seconds": f"{ratio_time:.2f}x"}),
            Row("in memory, onloading's heap policy", "for reference: how much of the difference is the allocator "
                "policy (bounded_heap) rather than onloading", {
                    "peak RSS MB": round(med["memory-bounded"]["peak_rss"] / MB),
                    "RSS above imports MB": round(grown["memory-bounded"] / MB),
                    "seconds": round(med["memory-bounded"]["seconds"], 1)})]
    data = {"runs": runs, "median": med, "rss_ratio": ratio_rss, "rss_above_imports_ratio": ratio_grown,
            "time_ratio": ratio_time, "identical": same, "machine": machine_line(), "n_samples": args.n_samples,
            "rounds": args.rounds, "rows": [{"name": r.name, "note": r.note, **r.values} for r in rows]}
    path.write_text(json.dumps(data, indent=1))
    write_table(RES / "scale_smollm2.md", "Layer-wise onloading: SmolLM2-135M GPTQ int4",
                f"GPTQ int4 (groups of 128, act-order) with {args.n_samples} calibration windows, in memory and onloaded, "
                f"each in its own process, alternating, medians of {args.rounds} rounds. Peak RSS is the process's "
                "VmHWM; 'RSS above imports' subtracts what the process held after importing torch, transformers and "
                "torchslim (the same in both).",
                ["peak RSS MB", "RSS above imports MB", "seconds"], rows,
                [f"{args.threads} torch threads on a machine shared with other jobs",
                 "regenerate: `python benchmarks/scale/smollm2.py` (and `make bench-scale`)"])


if __name__ == "__main__":
    main()
