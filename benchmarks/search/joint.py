"""Joint search (issue 22): optuna over per-layer mixes, quality x bytes x latency, on digits-cnn and MiniLM; the
latency model checked against end-to-end timings of the front's mixes (which it was not built from); two processes
sharing one SQLite study.

Writes docs/results/search_joint_<stem>.{md,json,png} and search_joint_storage.json; front.py's target check reads
them. Timed parts hold the shared benchmark lock (common.timing_lock) (other benchmarks on the machine wait).

    python benchmarks/search/joint.py [--models digits-cnn minilm] [--trials 30] [--storage-check]
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, machine_line, timing_lock  # noqa: E402

import torchslim  # noqa: E402
from torchslim.core.context import ApplyContext  # noqa: E402
from torchslim.core.progress import muted  # noqa: E402
from torchslim.core.registry import apply_  # noqa: E402
from torchslim.search import parse_actions, sensitivity  # noqa: E402
from torchslim.search.front import save  # noqa: E402
from torchslim.search.joint import search  # noqa: E402
from torchslim.search.latency import check, fit  # noqa: E402
from torchslim.search.report import save as save_scan  # noqa: E402
from torchslim.recipes.recipe import Recipe  # noqa: E402

RES = ROOT / "docs/results"
SETUPS = {   # actions, granularity, latency shape, stem
    "digits-cnn": ("int8,int4,int2,sparse50,svd50", "layer", (64, None), "digits"),
    "minilm": ("int8,int4g32,sparse50,2:4,svd30", "layer", (1, 128), "minilm"),
}


def _build(model, task, recipe: dict):
    m = copy.deepcopy(model)
    ctx = ApplyContext(task=task, calibration=task)
    with muted():
        for st in Recipe.from_dict(recipe).stages:
            if getattr(st, "config", None) is not None:
                m = apply_(m, st.config, ctx)
    return m.eval()


def run(name: str, trials: int) -> dict:
    actions_text, granularity, shape, stem = SETUPS[name]
    loaded = torchslim.load_model(name)
    model, task = loaded.model.eval(), loaded.task
    actions = parse_actions(actions_text)
    t0 = time.perf_counter()
    scan = sensitivity(model, task, actions, granularity=granularity)
    scan_s = time.perf_counter() - t0
    layers = [n for r in scan.rows for n in r.layers]
    with timing_lock():
        t = time.perf_counter()
        lm = fit(model, task, actions, layers, shape=shape, iters=20)
        fit_s = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = search(model, task, scan, n_trials=trials, latency=lm, storage=f"sqlite:///{tmp}/study.db",
                        study_name=stem, seed=0, name=f"{stem}-searched")
    search_s = time.perf_counter() - t
    checked, mixes = _check(model, task, lm, result, {r.group: r.layers for r in scan.rows})
    measured = {p.number: ms for (p, _), ms in zip(mixes, checked.measured_ms)}
    predicted = {p.number: ms for (p, _), ms in zip(mixes, checked.predicted_ms)}
    out = RES / f"search_joint_{stem}"
    files = save(result, out.with_suffix(""))            # folder docs/results/search_joint_<stem>/ (recipes, plot)
    doc = {"machine": machine_line(), "load_average": list(os.getloadavg()), "model": name, "actions": actions_text,
           "shape": list(shape), "scan_s": scan_s, "fit_s": fit_s, "search_s": search_s, "trials": trials,
           "result": result.to_dict(), "latency_model": lm.to_dict(),
           "check": {"numbers": [p.number for p, _ in mixes], "predicted_ms": checked.predicted_ms,
                     "measured_ms": checked.measured_ms, "errors": checked.errors,
                     "median_error": checked.median_error, "max_error": checked.max_error},
           "measured_ms": measured, "predicted_ms": predicted}
    RES.joinpath(f"search_joint_{stem}.json").write_text(json.dumps(doc, indent=1))
    save_scan(scan, out.with_suffix("") / "scan")
    render(doc, files)
    return doc


def _check(model, task, lm, result, layers_of: dict, rounds: int = 3):
    """The latency model against end-to-end timings of the front's mixes: ``rounds`` interleaved sessions of 20
    calls each, the median per mix (one session on a shared machine can be hit by a burst of other work)."""
    import statistics

    from torchslim.search.latency import Check

    mixes = [(p, _build(model, task, p.recipe)) for p in result.front if p.recipe]
    runs = []
    for _ in range(rounds):
        with timing_lock():
            runs.append(check(lm, model, task, [(m, {a: [n for g, act in p.assignment.items() if act == a
                                                         for n in layers_of[g]] for a in set(p.assignment.values())})
                                                for p, m in mixes], iters=20))
    med = lambda vals: [statistics.median(v) for v in zip(*vals)]          # noqa: E731
    return Check(med([c.predicted_ms for c in runs]), med([c.measured_ms for c in runs])), mixes


def recheck(name: str) -> None:
    """Time the recorded front again with the recorded latency model (on a quieter machine), and redraw."""
    from torchslim.search.joint import SearchResult
    from torchslim.search.latency import LatencyModel

    stem = SETUPS[name][3]
    path = RES / f"search_joint_{stem}.json"
    doc = json.loads(path.read_text())
    loaded = torchslim.load_model(name)
    model, task = loaded.model.eval(), loaded.task
    result = SearchResult.from_dict(doc["result"])
    scan = json.loads((RES / f"search_joint_{stem}" / "scan" / "sensitivity.json").read_text())
    lm = LatencyModel.from_dict(doc["latency_model"])
    checked, mixes = _check(model, task, lm, result, {r["group"]: r["layers"] for r in scan["rows"]})
    doc["check"] = {"numbers": [p.number for p, _ in mixes], "predicted_ms": checked.predicted_ms,
                    "measured_ms": checked.measured_ms, "errors": checked.errors,
                    "median_error": checked.median_error, "max_error": checked.max_error, "rechecked": True,
                    "load_average": list(os.getloadavg())}
    doc["measured_ms"] = {p.number: ms for (p, _), ms in zip(mixes, checked.measured_ms)}
    path.write_text(json.dumps(doc, indent=1))
    render(doc, {"md": None, "result": result})


def render(doc: dict, files: dict) -> None:
    stem = SETUPS[doc["model"]][3]
    r, c = doc["result"], doc["check"]
    lines = [f"# Joint search on {doc['model']}", "", f"Machine: {doc['machine']}; load average at the end "
             f"{doc['load_average'][0]:.1f}.", "",
             f"Actions {doc['actions']} per layer; scan {doc['scan_s']:.0f} s, latency model {doc['fit_s']:.0f} s "
             f"(shape {doc['shape'][0]}x{doc['shape'][1]}), {doc['trials']} trials in {doc['search_s']:.0f} s. "
             "Every trial is applied and measured end to end; latency in the table is the model's prediction, and "
             "each front point was then timed end to end, interleaved with the uncompressed model (medians of 20).",
             "", f"![front](search_joint_{stem}/front.png)", ""]
    from torchslim.search.front import to_markdown
    from torchslim.search.joint import SearchResult

    lines.append(to_markdown(SearchResult.from_dict(r)))
    lines += ["", "## Latency model against end-to-end timing (mixes it was not built from)", "",
              "| trial | predicted ms | measured ms | error |", "|---|---|---|---|"]
    for n, p, m, e in zip(c["numbers"], c["predicted_ms"], c["measured_ms"], c["errors"]):
        lines.append(f"| {n} | {p:.3g} | {m:.3g} | {100 * e:.1f}% |")
    lines += ["", f"Median error {100 * c['median_error']:.1f}%, largest {100 * c['max_error']:.1f}% "
              f"({len(c['errors'])} mixes); predictions scaled to the baseline measured in the same session; the "
              "median of 3 interleaved sessions of 20 calls" + (f", load average {c['load_average'][0]:.1f} when "
                                                               "rechecked" if c.get("rechecked") else "") + "."]
    (RES / f"search_joint_{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def storage_check(n: int = 4) -> dict:
    """Two `torchslim search` processes on one SQLite study: every trial recorded once."""
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        scan = sensitivity(*(lambda lm: (lm.model, lm.task))(torchslim.load_model("digits-cnn")),
                           parse_actions("int8,int4"), granularity="layer")
        save_scan(scan, tmp)
        url = f"sqlite:///{tmp}/shared.db"
        cmd = [sys.executable, "-m", "torchslim.cli.main", "search", "digits-cnn", "--scan", f"{tmp}/sensitivity.json",
               "--no-latency", "-n", str(n), "--storage", url, "--study", "shared"]
        t = time.perf_counter()
        procs = [subprocess.Popen(cmd + ["-o", f"{tmp}/p{i}", "--seed", str(i)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        errs = [p.communicate()[1] for p in procs]
        codes = [p.returncode for p in procs]
        study = optuna.load_study(study_name="shared", storage=url)
        numbers = sorted(t.number for t in study.trials)
        doc = {"processes": 2, "trials_each": n, "exit_codes": codes, "numbers": numbers,
               "states": sorted({t.state.name for t in study.trials}), "seconds": time.perf_counter() - t,
               "ok": codes == [0, 0] and numbers == list(range(2 * n)), "errors": [e[-300:] for e in errs if e]}
    RES.joinpath("search_joint_storage.json").write_text(json.dumps(doc, indent=1))
    print(doc)
    return doc


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(SETUPS))
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--no-storage-check", action="store_true")
    ap.add_argument("--recheck", action="store_true", help="time the recorded fronts again, searching nothing")
    args = ap.parse_args()
    for name in args.models:
        recheck(name) if args.recheck else run(name, args.trials)
    if not args.no_storage_check and not args.recheck:
        storage_check()


if __name__ == "__main__":
    main()
