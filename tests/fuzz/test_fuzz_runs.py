"""Seeded fuzzing of recipe runs, their run state, exports and symbolic links, through the CLI.

Same contract as ``test_fuzz.py`` (same worker, same capped address space): every case ends in exit 0, or
exit 2 with one ``error:`` line; never a traceback; no file outside the folder the command names changes.
On top of that: a resumed run that exits 0 has run every stage it was asked to (the artifact it leaves loads
and is quantized), an export never leaves a temporary or half-written folder, and two runs started at once
on one ``--out`` leave one whole artifact.
"""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _judge import clean_exit, run_worker
from _mutations import BAD_VALUES, _parent, paths

SEED = int(os.environ.get("TORCHSLIM_FUZZ_SEED", "20261206"))
# Values a hostile recipe or run state brings for names and folders, besides the generic bad values.
PATH_VALUES = ["../x", "/tmp/torchslim-fuzz-abs", "a/b", "[/]", "[link=http://e.invalid]x[/link]", "manifest.json",
               "report.md", "model.safetensors", "a\x00b", "x" * 300, ".hidden", "ck", "mid", "~/x", "a\\b"]
QUANT = {"_type": "WeightOnlyConfig", "format": {"_type": "IntFormat", "bits": 8}, "selector": {"exclude": ["lm_head"]}}
CAST = {"_type": "CastConfig", "dtype": "bfloat16", "selector": {"include": ["type:Embedding"]}}
RECIPE = {"recipe": "fuzz", "description": "d", "stages": [
    {"train": {"steps": 1, "batch_size": 2, "eval_at_end": False, "log_every": 1, "checkpoint_dir": "ck"}},
    {"quantize": QUANT}, {"save": {"path": "mid"}}]}
RUN = ["--no-report", "--max-steps", "1"]


def _mutate(doc, rng: random.Random, skip: tuple[str, ...] = ()):
    """One random change, drawn from the path-like values half of the time."""
    doc = copy.deepcopy(doc)
    path = rng.choice([p for p in paths(doc) if not any(str(k) in skip for k in p)])
    parent, key = _parent(doc, path)
    parent[key] = copy.deepcopy(rng.choice(PATH_VALUES if rng.random() < 0.5 else BAD_VALUES))
    return doc, path


def _run_case(cid: str, d: Path, recipe: Path, out: Path, *extra: str, allowed: list[str] | None = None) -> dict:
    return {"id": cid, "kind": "cli", "root": str(d), "allowed": allowed if allowed is not None else [str(out)],
            "argv": ["run", str(recipe), "-m", "tiny-llama", "-o", str(out), *RUN, *extra]}


def _recipe_cases(root: Path, rng: random.Random, n: int) -> list[dict]:
    cases = []
    for i in range(n):
        doc, path = _mutate(RECIPE, rng)
        d = root / f"rec{i}"
        d.mkdir()
        (d / "r.json").write_text(json.dumps(doc))
        cases.append(_run_case(f"recipe {i}: {path} = {str(_parent(doc, path)[0][path[-1]])[:40]!r}", d,
                               d / "r.json", d / "out"))
    return cases


# -- run state ----------------------------------------------------------------------------------------
def _interrupted_run(d: Path) -> Path:
    """``d/out`` as a run killed after its first stage leaves it: run.json and the stage-0 checkpoint."""
    import torchslim
    from torchslim.recipes import load_recipe
    from torchslim.recipes.runner import RUN_FORMAT, _data_key, _RunFolder, RunOptions

    recipe = load_recipe(d / "r.json")
    folder = _RunFolder(d / "out")
    digest = folder.checkpoint(torchslim.load_model("tiny-llama").model, 0)
    folder.write({"format": RUN_FORMAT, "recipe_name": recipe.name, "fingerprint": recipe.fingerprint(),
                  "model": "tiny-llama", "data": _data_key(RunOptions(max_steps=1)), "completed": 0, "checkpoint": 0,
                  "checkpoint_sha256": digest, "rows": []})
    return folder.root


def _state_cases(root: Path, rng: random.Random, n: int) -> list[dict]:
    cases = []
    for i in range(n):
        d = root / f"state{i}"
        d.mkdir()
        (d / "r.json").write_text(json.dumps(RECIPE))
        run_dir = _interrupted_run(d)
        state = json.loads((run_dir / "run.json").read_text())
        how = rng.choice(["state", "state", "state", "completed", "weights", "manifest", "link"])
        if how == "state":
            doc, path = _mutate(state, rng, skip=("format",))
            (run_dir / "run.json").write_text(json.dumps(doc))
            what = f"{path} = {str(_parent(doc, path)[0][path[-1]])[:30]!r}"
        elif how == "completed":
            what = rng.choice([999, -3, True, 2**70, "0", 1.0, None])
            (run_dir / "run.json").write_text(json.dumps({**state, "completed": what}))
        elif how == "weights":
            w = run_dir / "stage-0" / "model.safetensors"
            w.write_bytes(w.read_bytes()[: rng.randrange(8, 4096)])
            what = "truncated checkpoint weights"
        elif how == "manifest":
            (run_dir / "stage-0" / "manifest.json").write_text("[" * 200000)
            what = "deeply nested checkpoint manifest"
        else:
            shutil.rmtree(run_dir / "stage-0")
            victim = d / "victim"
            shutil.copytree(_plain(root), victim)
            (run_dir / "stage-0").symlink_to(victim)
            what = "stage checkpoint is a link to another artifact"
        cases.append({**_run_case(f"run state {i}: {how}: {what}", d, d / "r.json", d / "out", "--resume"),
                      "check_quantized": True})
    return cases


# -- links and exports ----------------------------------------------------------------------------------
_PLAIN: dict[str, Path] = {}


def _plain(root: Path) -> Path:
    """A plain int8 tiny-llama artifact (exports write it as a dense Hugging Face folder)."""
    if "a" not in _PLAIN:
        import torchslim
        from torchslim.quantization import IntFormat, WeightOnlyConfig

        loaded = torchslim.load_model("tiny-llama")
        torchslim.quantize_(loaded.model, WeightOnlyConfig(format=IntFormat(8),
                                                           selector=torchslim.Selector(exclude=("lm_head",))))
        _PLAIN["a"] = torchslim.save(loaded.model, root / "plain")
    return _PLAIN["a"]


def _link_cases(root: Path) -> list[dict]:
    """A link at --out, under --out (run folder, save folder, checkpoint_dir, staging) and inside an artifact."""
    plain, cases = _plain(root), []
    for i, (where, target) in enumerate([("out", "empty"), ("out", "artifact"), ("out/.torchslim-run", "empty"),
                                         ("out/mid", "artifact"), ("out/ck", "empty"), ("out/.torchslim-staging", "empty"),
                                         ("out/model.safetensors", "file"), ("out/.torchslim-lock", "file")]):
        d = root / f"link{i}"
        d.mkdir()
        (d / "r.json").write_text(json.dumps(RECIPE))
        victim = d / "victim"
        if target == "artifact":
            shutil.copytree(plain, victim)
        elif target == "file":
            victim.write_text("a user's file")
        else:
            victim.mkdir()
        if where == "out/model.safetensors":
            shutil.copytree(plain, d / "out")
            (d / "out" / "model.safetensors").unlink()
        (d / where).parent.mkdir(exist_ok=True)
        (d / where).symlink_to(victim)
        cases.append(_run_case(f"link {where} -> {target}", d, d / "r.json", d / "out",
                               allowed=[str(d / "out")] if where != "out" else []))
    d = root / "inner"
    shutil.copytree(plain, d / "a")
    (d / "secret").write_text("outside the artifact")
    (d / "a" / "config.json").unlink()
    (d / "a" / "config.json").symlink_to(d / "secret")
    cases.append({"id": "artifact with a link inside: export", "kind": "cli", "root": str(d), "allowed": [str(d / "hf")],
                  "argv": ["export", "hf", str(d / "a"), "-o", str(d / "hf"), "--dense", "--no-eval"]})
    (d / "r.json").write_text(json.dumps({"recipe": "cast", "stages": [{"quantize": CAST}]}))
    cases.append({"id": "artifact with a link inside: run from it into it", "kind": "cli", "root": str(d),
                  "allowed": [str(d / "a")], "argv": ["run", str(d / "r.json"), "-m", str(d / "a"), "-o", str(d / "a"),
                                                      *RUN]})
    return cases


def _export_cases(root: Path, rng: random.Random) -> list[dict]:
    plain, cases = _plain(root), []
    outs = ["self", "inside", "other", "file", "foreign", "link", "new", "parent-artifact"]
    for i, (fmt, where) in enumerate((f, w) for w in outs for f in ("hf", "gguf", "onnx")):
        if fmt == "onnx" and where in ("new",):
            continue                                  # a real ONNX export takes long: refusals only
        force = rng.random() < 0.4 and fmt != "onnx"    # (an ONNX export that goes ahead takes ~20 s)
        d = root / f"exp{i}"
        shutil.copytree(plain, d / "src")
        other = d / "other"
        shutil.copytree(plain, other)
        out = {"self": d / "src", "inside": d / "src" / "x", "other": other, "file": d / "f.bin", "foreign": d / "mine",
               "link": d / "ln", "new": d / "new" / ("x" if fmt == "hf" else "x.bin"),
               "parent-artifact": other / "x"}[where]
        (d / "f.bin").write_text("a user's file")
        (d / "mine").mkdir()
        (d / "mine" / "notes.txt").write_text("a user's notes")
        (d / "ln").symlink_to(d / "mine")
        argv = ["export", fmt, str(d / "src"), "-o", str(out), "--no-eval", *(["--dense"] if fmt == "hf" else []),
                *(["--force"] if force else [])]
        allowed = [str(out)] if force and where in ("other", "file", "foreign", "parent-artifact", "new") else []
        if where == "new":
            allowed = [str(d / "new")]
        cases.append({"id": f"export {fmt} -o {where}{' --force' if force else ''}", "kind": "cli", "root": str(d),
                      "allowed": allowed, "argv": argv, "export_dir": str(out.parent)})
    return cases


# -- running and judging ---------------------------------------------------------------------------------
def _work(tmp_path: Path, cases: list[dict], timeout: int = 600) -> list[dict]:
    return run_worker(tmp_path, cases, timeout)


def _problems(cases: list[dict], results: list[dict]) -> list[str]:
    problems = []
    for case, r in zip(cases, results):
        problems += clean_exit(case, r)
        if r["code"] == 0 and case.get("check_quantized"):
            problems += _check_quantized(case)
        leftovers = [p.name for p in Path(case.get("export_dir", "/nonexistent")).glob(".*.tmp")] + \
                    [p.name for p in Path(case.get("export_dir", "/nonexistent")).glob(".*.old")]
        if leftovers:
            problems.append(f"{case['id']}: left temporary folders {leftovers}")
    return problems


def _check_quantized(case: dict) -> list[str]:
    """A resumed run that succeeded ran its remaining stages: the artifact loads and is quantized."""
    import torchslim
    from torchslim.artifact import read_manifest

    out = Path(case["argv"][case["argv"].index("-o") + 1])
    try:
        manifest = read_manifest(out)
        torchslim.load(out)
    except Exception as e:  # noqa: BLE001
        return [f"{case['id']}: exit 0 but the artifact does not load: {e}"]
    if not any(h.get("kind") == "quantization" for h in manifest.get("history", [])):
        return [f"{case['id']}: exit 0 but stages were skipped (no quantization in the history)"]
    return []


def test_fuzzed_runs_state_links_and_exports_fail_cleanly(tmp_path):
    rng = random.Random(SEED)
    cases = (_recipe_cases(tmp_path, rng, 10) + _state_cases(tmp_path, rng, 10) + _link_cases(tmp_path)
             + _export_cases(tmp_path, rng))
    results = _work(tmp_path, cases)
    problems = _problems(cases, results)
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:15])
    assert sum(r["code"] == 2 for r in results) > len(cases) // 3      # most cases are refusals, not no-ops
    assert sum(r["code"] == 0 for r in results) >= 3                   # and the fair ones still work


def _concurrent(tmp_path: Path, rounds: int) -> list[str]:
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0"}
    recipes = []
    for name, quant in (("a", QUANT), ("b", CAST)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"recipe": name, "stages": [{"quantize": quant}, {"save": {"path": "mid"}}]}))
        recipes.append(p)
    problems = []
    for k in range(rounds):
        out = tmp_path / f"out{k}"
        procs = [subprocess.Popen([sys.executable, "-m", "torchslim.cli.main", "run", str(r), "-m", "tiny-llama", "-o",
                                   str(out), "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=env) for r in recipes]
        for p in procs:
            _, err = p.communicate(timeout=300)
            lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]
            if p.returncode not in (0, 2) or "Traceback" in err or (p.returncode == 2 and len(lines) != 1):
                problems.append(f"round {k}: exit {p.returncode}: {err[-1500:]}")
        problems += _whole(out, k)
    return problems


def _whole(out: Path, k: int) -> list[str]:
    """One whole artifact at ``out`` and in ``out/mid`` (from one recipe, not a mix); no lock or run left."""
    import torchslim

    try:
        names = {json.loads((p / "manifest.json").read_text())["history"][0]["config"]["_type"] for p in (out, out / "mid")}
        torchslim.load(out)
        torchslim.load(out / "mid")
    except Exception as e:  # noqa: BLE001
        return [f"round {k}: the output is not a whole artifact: {e}"]
    left = [p.name for p in out.iterdir() if p.name.startswith(".")]
    return ([f"round {k}: a mixed artifact ({names})"] if len(names) != 1 else []) + \
        ([f"round {k}: left {left}"] if left else [])


@pytest.mark.slow      # ~13 s: two concurrent CLI runs (the default suite stays under 10 minutes on 2 cores)
def test_two_runs_on_one_out_leave_one_whole_artifact(tmp_path):
    problems = _concurrent(tmp_path, 2)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_two_runs_on_one_out_many_rounds(tmp_path):
    problems = _concurrent(tmp_path, 8)
    assert not problems, "\n".join(problems)
