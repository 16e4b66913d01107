"""Sensitivity and accuracy-aware tuning (issue 22): the tuned per-layer mixes at several quality budgets against
every action applied to the whole model, as a size/quality front, for digits-cnn and MiniLM.

Writes docs/results/search_<model>.{md,json,png} and the target check docs/results/search_targets.md. Target: a
Pareto front of >= 5 points spanning >= 3x in size.

    python benchmarks/search/front.py [--models digits-cnn minilm]
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, machine_line, write_checks  # noqa: E402

import torchslim  # noqa: E402
from torchslim.core.progress import muted  # noqa: E402
from torchslim.core.context import ApplyContext  # noqa: E402
from torchslim.core.registry import apply_  # noqa: E402
from torchslim.search import parse_actions, sensitivity, to_markdown, tune  # noqa: E402
from torchslim.search.sensitivity import stored_bytes  # noqa: E402

RES = ROOT / "docs/results"
SETUPS = {   # actions, budgets (in the metric's units), file stem, granularity
    "digits-cnn": ("int8,int4,int2,sparse50,sparse80,svd50", ("0", "0.25", "0.5", "1", "2", "5"), "digits", "layer"),
    "minilm": ("int8,int4g32,int2g32,sparse50,2:4,svd30", ("0.002", "0.005", "0.01", "0.02", "0.05"), "minilm",
               "layer"),
}


def front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both size and accuracy."""
    return sorted([p for p in points if not any(q["bytes"] <= p["bytes"] and q["q"] >= p["q"]
                                                and (q["bytes"], q["q"]) != (p["bytes"], p["q"]) for q in points)],
                  key=lambda p: p["bytes"])


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(SETUPS))
    ap.add_argument("--render", action="store_true", help="redraw the pages from the JSON, measuring nothing")
    args = ap.parse_args()
    checks = []
    for name in args.models:
        if args.render:
            render(name, json.loads((RES / f"search_{SETUPS[name][2]}.json").read_text()))
            checks.append(_from_json(name))
        else:
            checks.append(run(name))
    for name in SETUPS:
        if name not in args.models:
            checks.append(_from_json(name))
    checks += [_smollm2_check(),
               ("SmolLM2: the tuned mix dominates every single-technique shipped recipe on one objective",
                "not measured", False, "not run: the SmolLM2 tune and the shipped recipes end to end on two texts "
                "need about an hour of quiet CPU"),
               *_joint_checks()]
    write_checks(RES / "search_targets.md", "Search targets (issue 22)", checks)


def _front_check(name: str, pareto: list[dict], budgets: tuple[str, ...]) -> tuple[str, str, bool, str]:
    span = max(p["bytes"] for p in pareto) / min(p["bytes"] for p in pareto)
    return (f"{name}: a Pareto front of >= 5 points spanning >= 3x in size or latency (tuned mixes, size only)",
            f"{len(pareto)} points on the size/quality front, spanning {span:.1f}x in size "
            f"({', '.join(p['name'] for p in pareto)})", len(pareto) >= 5 and span >= 3,
            "tuned mixes at budgets " + ", ".join(budgets) + " plus each action everywhere; the original model is "
            "dominated by the smallest lossless mix, so the front starts there")


def _from_json(name: str) -> tuple[str, str, bool, str]:
    stem = SETUPS[name][2]
    path = RES / f"search_{stem}.json"
    if not path.is_file():
        return (f"{name}: a Pareto front of >= 5 points", "not measured", False, f"run front.py --models {name}")
    d = json.loads(path.read_text())
    return _front_check(name, [p for p in d["points"] if p["name"] in d["front"]], SETUPS[name][1])


def run(name: str) -> tuple[str, str, bool, str]:
    action_text, budgets, stem, granularity = SETUPS[name]
    loaded = torchslim.load_model(name)
    model, task = loaded.model.eval(), loaded.task
    metric = task.metric
    assert task.higher_is_better, "the front below reads a higher metric as better"
    base = {"name": "fp32", "kind": "original", "bytes": stored_bytes([model]), "q": task.evaluate(model)[metric]}
    t0 = time.perf_counter()
    actions = parse_actions(action_text)
    scan = sensitivity(model, task, actions, granularity=granularity)
    scan_s = time.perf_counter() - t0
    points = [base]
    for a in actions:                                   # each action on every layer it selects
        m = copy.deepcopy(model)
        with muted():
            apply_(m, a.config, ApplyContext(task=task, calibration=task))
        points.append({"name": f"{a.name} everywhere", "kind": "uniform", "bytes": stored_bytes([m]),
                       "q": task.evaluate(m)[metric]})
    tuned = []
    for b in budgets:
        t = time.perf_counter()
        r = tune(model, task, scan, b, max_evals=8, name=f"{stem}-tuned-{b}")
        if r.best is not None:
            mix = {}
            for a in r.best.assignment.values():
                mix[a] = mix.get(a, 0) + 1
            tuned.append({"name": f"tuned, loss <= {b}", "kind": "tuned", "bytes": r.best.bytes,
                          "q": r.best.quality, "mix": mix, "evals": len(r.trials),
                          "seconds": time.perf_counter() - t})
    points += tuned
    pareto = front(points)
    doc = {"machine": machine_line(), "load_average": list(os.getloadavg()), "scan_s": scan_s, "metric": metric,
           "granularity": granularity, "scan": scan.to_dict(), "points": points, "front": [p["name"] for p in pareto]}
    (RES / f"search_{stem}.json").write_text(json.dumps(doc, indent=1))
    render(name, doc)
    return _front_check(name, pareto, budgets)


def render(name: str, doc: dict) -> None:
    """search_<stem>.md and .png from the measured document (rerun with --render to redraw without measuring)."""
    from torchslim.search import Sensitivity

    stem = SETUPS[name][2]
    scan, metric, granularity = Sensitivity.from_dict(doc["scan"]), doc["metric"], doc["granularity"]
    points = doc["points"]
    pareto = [p for p in points if p["name"] in doc["front"]]
    base = points[0]
    untouched = base["bytes"] - sum(r.bytes for r in scan.rows)
    slow = sorted({a for r in scan.rows for a, c in r.cells.items() if "slower than fp32" in c.note})
    _plot(points, sorted(pareto, key=lambda p: p["bytes"]), RES / f"search_{stem}.png", name, metric)
    lines = [f"# Sensitivity and tuning on {name}", "", f"Machine: {doc['machine']}", "",
             f"Scan: {len(scan.rows)} {granularity}s x {len(scan.actions)} actions in {doc['scan_s']:.0f} s (cost: "
             f"{scan.measure}, over {scan.positions} output positions of calibration data). Tuned mixes: the most "
             f"compressed per-{granularity} mix whose {metric} on the evaluation split, measured end to end, loses at "
             "most the budget (in the metric's units); bytes are the model's stored tensors. Uniform rows apply one "
             f"action to every layer it selects. Load average at the end: {doc['load_average'][0]:.1f} on 2 cores.",
             "", f"![size vs quality](search_{stem}.png)", "",
             f"| point | kind | KiB | size vs fp32 | {metric} | on the front | mix ({granularity}s per action) |",
             "|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: -p["bytes"]):
        lines.append(f"| {p['name']} | {p['kind']} | {p['bytes'] / 1024:.1f} | {p['bytes'] / base['bytes']:.3f}x | "
                     f"{p['q']:.4g} | {'yes' if p in pareto else ''} | "
                     f"{', '.join(f'{k}: {v}' for k, v in p.get('mix', {}).items())} |")
    lines += ["", f"- {untouched / 2**20:.1f} MiB of the {base['bytes'] / 2**20:.1f} MiB are in tensors no scanned "
              "action touches (embedding tables, norms, biases): they bound how small any mix gets.",
              "- The tuning objective is bytes. " + (f"The kernel table says {', '.join(slow)} run slower than fp32 "
                                                     "on this CPU: mixes using them are smaller, not faster."
                                                     if slow else ""),
              "", "## The scan", "", to_markdown(scan)]
    (RES / f"search_{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:30]), flush=True)


def _joint_checks() -> list[tuple[str, str, bool, str]]:
    """The joint search's fronts (quality x bytes x latency), the latency model and the shared storage."""
    out, errors = [], []
    for name, stem in (("digits-cnn", "digits"), ("minilm", "minilm")):
        path = RES / f"search_joint_{stem}.json"
        target = f"{name}: a Pareto front of >= 5 points spanning >= 3x in size or latency (joint search)"
        if not path.is_file():
            out.append((target, "not measured", False, f"run joint.py --models {name}"))
            continue
        d = json.loads(path.read_text())
        front = d["result"]["front"]
        size = max(p["bytes"] for p in front) / min(p["bytes"] for p in front)
        ms = [v for v in d["measured_ms"].values()]
        lat = max(ms) / min(ms) if ms else 1.0
        out.append((target, f"{len(front)} points of {d['trials']} trials on the quality/bytes/latency front, "
                    f"spanning {size:.1f}x in size and {lat:.1f}x in measured latency", len(front) >= 5 and
                    max(size, lat) >= 3, "NSGA-II warm-started from the scan, 30 trials; the span is bounded by what "
                    "the actions touch (the int actions reach untied embedding tables: MiniLM's 45.5 MiB word table, "
                    "half the model) and by the kernels' speed-ups at this shape (weight-only int8/int4 and 2:4 at "
                    "1x128)"))
        errors += [(name, e) for e in d["check"]["errors"]]
    if errors:
        worst = max(e for _, e in errors)
        med = sorted(e for _, e in errors)[len(errors) // 2]
        out.append(("The latency model predicts end-to-end latency within 15% on configurations it was not fitted on",
                    f"{len(errors)} front mixes of {', '.join(sorted({n for n, _ in errors}))}: median error "
                    f"{100 * med:.1f}%, largest {100 * worst:.1f}%", worst <= 0.15,
                    "per-layer medians (20 interleaved calls) plus the measured base, checked as the median of 3 "
                    "interleaved sessions on a quiet machine (load 1.4): MiniLM within 7.1%; on digits-cnn every mix "
                    "ran 2-18% slower than predicted (convolutions at batch 64 timed alone run faster than inside the "
                    "model: interactions between layers are not modelled)"))
    else:
        out.append(("latency model within 15%", "not measured", False, "run joint.py"))
    path = RES / "search_joint_storage.json"
    if path.is_file():
        d = json.loads(path.read_text())
        out.append(("Two search processes sharing one storage complete a study with no lost or duplicated trials",
                    f"{d['processes']} processes x {d['trials_each']} trials: trial numbers {d['numbers']}, exit codes "
                    f"{d['exit_codes']}", d["ok"], "SQLite storage with a 120 s lock timeout"))
    else:
        out.append(("two processes sharing one storage", "not measured", False, "run joint.py"))
    return out


def _smollm2_check() -> tuple[str, str, bool, str]:
    target = "SmolLM2: sensitivity across 3 action types in <= 15 minutes on 2 cores"
    path = RES / "search_sensitivity_smollm2.json"
    if not path.is_file():
        return (target, "not measured", False, "run benchmarks/search/smollm2.py on a quiet machine (started twice "
                "in the session that built it, on a CPU shared with two benchmark jobs: load average 7-8 on 2 "
                "cores, about 90 minutes projected; stopped)")
    d = json.loads(path.read_text())
    during = RES / "search_sensitivity_smollm2.scan.json"         # the load when the scan itself ended
    load = json.loads(during.read_text())["load_average"] if during.is_file() else d["load_average"]
    agree = "; ".join(f"{k} {v['spearman']:.2f}" for k, v in d["agreement"].items())
    return (target, f"{len(d['actions'])} actions x {len(d['scan']['rows'])} groups in {d['scan_s'] / 60:.1f} min "
            f"(load average {load[0]:.1f} when the scan ended); {d['scan']['measure']} proxy vs perplexity rank "
            f"correlation over {sum(v['points'] for v in d['agreement'].values())} points: {agree}",
            d["scan_s"] <= 900 and len(d["actions"]) >= 3, "block granularity, 4 calibration windows")


def _plot(points: list[dict], pareto: list[dict], path: Path, name: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("original", "*"), ("uniform", "o"), ("tuned", "s")):
        ps = [p for p in points if p["kind"] == kind]
        ax.scatter([p["bytes"] / 1024 for p in ps], [p["q"] for p in ps], marker=marker, s=60, label=kind)
    ax.plot([p["bytes"] / 1024 for p in pareto], [p["q"] for p in pareto], "k--", lw=1, label="front")
    ax.set_xscale("log")
    ax.set_xlabel("stored KiB (log)")
    ax.set_ylabel(metric)
    ax.legend()
    ax.set_title(f"{name}: size vs {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
