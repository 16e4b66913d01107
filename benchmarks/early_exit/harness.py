"""Shared measurement of early exit: pick each policy's setting on the validation split (the cheapest whose accuracy
is within 0.5 points of the full model's), then report test accuracy and measured time against the plain model,
interleaved, medians, at batch 1 and in batches (with and without compaction)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, interleaved, machine_line  # noqa: E402

from torchslim.early_exit import EntropyPolicy, ExitRuntime, LearnedPolicy, PatiencePolicy  # noqa: E402

RES = ROOT / "docs/results"
WORK = ROOT / "out" / "bench-early-exit"
MAX_DROP = 0.5
GRID: dict[str, list[Any]] = {
    "entropy (DeeBERT)": [EntropyPolicy(t) for t in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)],
    "patience (PABEE)": [PatiencePolicy(p) for p in (1, 2, 3, 4)],
    "learned gate": [LearnedPolicy(t) for t in (0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6)],
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def accuracy(logits: list[torch.Tensor], labels: list[torch.Tensor]) -> float:
    pred, y = torch.cat([x.argmax(-1) for x in logits]), torch.cat(labels)
    return 100.0 * float((pred == y).float().mean())


def run_policy(model: torch.nn.Module, policy: Any, batches: list[tuple[Any, torch.Tensor]], compact: bool = True,
               ) -> tuple[float, torch.Tensor]:
    rt = ExitRuntime(model, policy, compact=compact)
    outs = [rt(x) for x, _ in batches]
    return accuracy([o.logits for o in outs], [y for _, y in batches]), torch.cat([o.exit_at for o in outs])


def full_logits(model: torch.nn.Module, batches: list[tuple[Any, torch.Tensor]], call: Callable) -> float:
    with torch.inference_mode():
        return accuracy([call(model, x) for x, _ in batches], [y for _, y in batches])


def choose(model: torch.nn.Module, val: list[tuple[Any, torch.Tensor]], full_val: float, cost: list[float]
           ) -> dict[str, dict[str, Any]]:
    """Per policy family: the setting with the least expected block cost whose validation accuracy is within
    MAX_DROP of the full model's (None when no setting is)."""
    picked: dict[str, dict[str, Any]] = {}
    for fam, settings in GRID.items():
        best = None
        for pol in settings:
            acc, exit_at = run_policy(model, pol, val)
            c = float(torch.tensor(cost)[exit_at].mean())
            say(f"  val {pol}: acc {acc:.2f} (full {full_val:.2f}), expected cost {c:.3f}")
            if acc >= full_val - MAX_DROP and (best is None or c < best["cost"]):
                best = {"policy": pol, "val_acc": acc, "cost": c}
        if best is not None:
            picked[fam] = best
    return picked


def timed(model: torch.nn.Module, picked: dict[str, dict[str, Any]], sets: dict[str, list[tuple[Any, torch.Tensor]]],
          call: Callable, n_exits: int, rounds: int = 3, time_samples: int | None = None) -> list[dict[str, Any]]:
    """Rows: for each batch size in ``sets`` (name -> batches), the full model and each picked policy (compacted;
    and without compaction where the batch has several rows), test accuracy and exits (whole split), median seconds
    and speed-up (on the first ``time_samples`` samples of the split, None: all)."""
    rows = []
    for set_name, batches in sets.items():
        multi = batches[0][1].shape[0] > 1
        size = batches[0][1].shape[0]
        timed_b = batches[:-(-time_samples // size)] if time_samples else batches
        fns: dict[str, Callable[[], Any]] = {"full model": lambda b=timed_b: [call(model, x) for x, _ in b]}
        info: dict[str, dict[str, Any]] = {"full model": {"acc": full_logits(model, batches, call), "setting": "",
                                                          "exits": ""}}
        for fam, p in picked.items():
            for compact in ((True, False) if multi else (True,)):
                name = fam + ("" if not multi else (", compacted" if compact else ", not compacted"))
                rt = ExitRuntime(model, p["policy"], compact=compact)
                fns[name] = lambda b=timed_b, rt=rt: [rt(x) for x, _ in b]
                acc, exit_at = run_policy(model, p["policy"], batches, compact)
                counts = torch.bincount(exit_at, minlength=n_exits + 1).tolist()
                info[name] = {"acc": acc, "setting": str(p["policy"]), "exits": "/".join(map(str, counts))}
        if rounds:
            with torch.inference_mode():
                secs: dict[str, float | None] = dict(interleaved(fns, rounds=rounds))
        else:                                  # accuracy and exits only (no lock, no timing)
            secs = {k: None for k in fns}
        base = secs["full model"]
        for name, s in secs.items():
            rows.append({"batch": set_name, "variant": name, **info[name], "seconds": s,
                         "speedup": base / s if s else None})
            say(f"  {set_name} {name}: {info[name]['acc']:.2f}% {s} s exits {info[name]['exits']}")
    return rows


def write(path: Path, title: str, intro: str, rows: list[dict[str, Any]], notes: list[str], extra: dict) -> None:
    lines = [f"# {title}", "", intro, "", f"Machine: {machine_line()}, {torch.get_num_threads()} threads", "",
             "| batch | variant | setting (chosen on val) | test top1 % | exits (per exit, final last) | median s "
             "| speed-up |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = f"{r['seconds']:.3f}" if r["seconds"] else "not timed"
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "–"
        lines.append(f"| {r['batch']} | {r['variant']} | {r['setting']} | {r['acc']:.2f} | {r['exits']} | {secs} | "
                     f"{speed} |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps({"rows": rows, "machine": machine_line(),
                                                     "threads": torch.get_num_threads(), **extra}, indent=1,
                                                    default=str))
    print("\n".join(lines))
