"""A 2.16 GB (float32) Llama-architecture model compressed under a 700 MB memory cap with layer-wise onloading.

GPTQ int4 and Wanda 50%: each runs onloaded in a process capped by a cgroup (killed if it goes over), then in
memory (uncapped) on the same model, and the two weights files are compared byte for byte. Few calibration samples
and short windows (4 windows of 128 tokens): GPTQ on 76 blocks of 768 x 2048 layers on 2 shared cores is slow, and
the point here is memory and exactness, not quality (the weights are random).

Writes docs/results/scale_llama2gb.md and .json. Run under the benchmark lock: ``make bench-scale`` does.
"""
from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--folder", default="/tmp/torchslim-scale/llama-2gb-v3")
    ap.add_argument("--work", default="/tmp/torchslim-scale/out")
    ap.add_argument("--cap", default="700MB")
    ap.add_argument("--methods", default="gptq,wanda")
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from build import build
    from torchslim.scale.files import parse_bytes
    from torchslim.scale.onload import model_bytes

    folder = build(Path(args.folder))
    cap = parse_bytes(args.cap)
    size = model_bytes(str(folder))
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    path = RES / "scale_llama2gb_runs.json"     # scale_llama2gb.json is the table's rows
    old = json.loads(path.read_text()) if path.is_file() else {}
    keep = [r for r in old.get("runs", []) if r.get("method") not in args.methods.split(",")]   # other methods' runs
    rows, data = [], {"model_bytes": size, "cap": cap, "machine": machine_line(), "runs": keep}
    for method in args.methods.split(","):
        runs = {}
        for mode in ("onload", "memory"):
            out = Path(args.work) / f"{method}-{mode}"
            cmd = [str(Path(__file__).with_name("run_one.py")), "--mode", mode, "--method", method, "--model",
                   str(folder), "--out", str(out), "--n-samples", str(args.n_samples), "--threads", str(args.threads)]
            if mode == "onload":
                cmd += ["--max-memory", args.cap]
            runs[mode] = run_capped(cmd, cap if mode == "onload" else None, env)
            print(json.dumps({k: v for k, v in runs[mode].items() if k != "onload"}), flush=True)
            data["runs"].append({"method": method, "mode": mode, **runs[mode]})
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1))
    for method in dict.fromkeys(r["method"] for r in data["runs"]):
        runs = {r.get("mode", "onload" if r.get("cap") else "memory"): r for r in data["runs"] if r["method"] == method}
        same = bool(runs.get("onload", {}).get("sha256")) and runs["onload"].get("sha256") == runs.get("memory", {}).get("sha256")
        for mode, r in sorted(runs.items(), reverse=True):
            ok = r.get("returncode") == 0
            rows.append(Row(f"{method} {'onloaded' if mode == 'onload' else 'in memory'}",
                            r.get("capped_by", "") if ok else f"failed ({r.get('capped_by', '')}, exit "
                                                              f"{r.get('returncode')}): {r.get('error', '')[-200:]}",
                            {"completed": ok, "peak RSS MB": round(r.get("peak_rss", 0) / MB) if ok else None,
                             "peak / cap": round(r["peak_rss"] / cap, 2) if ok else None,
                             "seconds": round(r["seconds"], 1) if ok else None,
                             "weights identical": same}))
    data["rows"] = [{"name": r.name, "note": r.note, **r.values} for r in rows]
    path.write_text(json.dumps(data, indent=1))
    write_table(RES / "scale_llama2gb.md", "Layer-wise onloading: a 2 GB Llama under a 700 MB cap",
                f"A Llama-architecture model (76 blocks, hidden 768, MLP 2048, vocabulary 257) with seeded random "
                f"weights: {size / 1e9:.2f} GB of float32, {size / cap:.2f}x the {cap / MB:.0f} MB cap. Onloaded runs "
                "execute in a process the kernel caps (a memory cgroup; over the cap it is killed), in-memory runs "
                "uncapped. `weights identical`: the two model.safetensors files are byte for byte the same.",
                ["completed", "peak RSS MB", "peak / cap", "seconds", "weights identical"], rows,
                [f"calibration: {args.n_samples} windows of 128 tokens (the model's context), random weights: the "
                 "point is memory and exactness, not quality",
                 "peak RSS is VmHWM of the compressing process: it includes torch's and transformers' own code and "
                 "libraries (about 390 MB after imports on this machine)",
                 f"{args.threads} torch threads on a machine shared with other jobs: seconds are indicative only",
                 "regenerate: `python benchmarks/scale/llama2gb.py` (and `make bench-scale`)"])


if __name__ == "__main__":
    main()
