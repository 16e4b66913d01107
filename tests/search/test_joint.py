import pytest
import yaml

from torchslim.recipes import Recipe
from torchslim.search.front import save, to_markdown
from torchslim.search.joint import KEEP, search, _warm_starts
from torchslim.search.latency import LatencyModel



def _latency(scan):
    layers = {n: {KEEP: 1.0, "int8": 0.5, "int2g32": 2.0} for r in scan.rows for n in r.layers}
    return LatencyModel((1, 16), 10.0, layers)


def test_the_warm_start_begins_with_the_model_each_action_everywhere_and_tuned_mixes(scan):
    _, s = scan
    mixes = _warm_starts(s, 8)
    assert mixes[0] == {} and len({tuple(sorted(m.items())) for m in mixes}) == len(mixes)
    assert {a for a in s.actions} <= {next(iter(set(m.values()))) for m in mixes[1:] if len(set(m.values())) == 1}


def test_the_front_holds_no_dominated_point_and_each_point_is_a_runnable_recipe(scan, tmp_path):
    lm, s = scan
    r = search(lm.model, lm.task, s, n_trials=6, latency=_latency(s), seed=0)
    assert len(r.points) == 6 and r.objectives == ["quality", "bytes", "latency_ms"]
    assert any(p.assignment == {} for p in r.points)                       # the uncompressed model, warm start
    key = lambda p: (p.quality, p.bytes, p.latency_ms)                     # noqa: E731 - lower is better for all
    for p in r.front:
        assert not any(all(a <= b for a, b in zip(key(q), key(p))) and key(q) != key(p) for q in r.points)
        assert p.bytes <= r.base.bytes or p.assignment == {}
    with_mix = [p for p in r.front if p.assignment]
    assert with_mix and all(p.recipe is not None for p in with_mix)
    files = save(r, tmp_path)
    assert files["png"].stat().st_size > 0 and "Pareto front" in files["md"].read_text()
    recipe = Recipe.load(files[f"trial-{with_mix[0].number}"])
    layers = {n for st in recipe.stages[:-1] for n in st.config.selector.include}
    assert layers == {n for row in s.rows if row.group in with_mix[0].assignment for n in row.layers}
    assert "uncompressed" in to_markdown(r) and yaml.safe_load(files["json"].read_text())["study_name"]


def test_a_study_in_a_file_continues_in_a_second_call(scan, tmp_path):
    lm, s = scan
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search(lm.model, lm.task, s, n_trials=2, storage=url, study_name="x", warm_start=False)
    r = search(lm.model, lm.task, s, n_trials=2, storage=url, study_name="x", warm_start=False)
    assert sorted(p.number for p in r.points) == [0, 1, 2, 3] and r.objectives == ["quality", "bytes"]


def test_mixes_predicted_beyond_a_failed_one_are_pruned_before_applying(scan, monkeypatch):
    import torchslim.search.joint as joint

    lm, s = scan
    calls = []
    real = joint.measure_recipe

    def measured(model, task, recipe):
        calls.append(recipe)
        q, b = real(model, task, recipe)
        return q * 100, b                                                  # every compressed mix breaks the budget
    monkeypatch.setattr(joint, "measure_recipe", measured)
    r = search(lm.model, lm.task, s, n_trials=8, max_loss="1%", seed=1)
    assert r.pruned > 0 and len(calls) + r.pruned + sum(p.assignment == {} for p in r.points) >= 8


def test_a_storage_whose_tables_another_process_is_creating_is_retried(tmp_path, monkeypatch):
    import optuna
    from sqlalchemy.exc import OperationalError

    from torchslim.core.errors import TorchSlimError
    from torchslim.search import joint

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kw):
        calls.append(url)
        if len(calls) == 1:          # the first try loses the race to create the schema
            raise OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(url, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    url = f"sqlite:///{tmp_path}/s.db"
    assert isinstance(joint._storage(url), real) and len(calls) == 2

    def broken(url, **kw):
        raise OperationalError("SELECT", {}, Exception("unable to open database file"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(TorchSlimError, match="unable to open database file"):
        joint._storage(url)
