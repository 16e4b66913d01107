"""The Python examples in README.md and docs/*.md run as written (on the tiny test models)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SWAP = {'"smollm2-135m"': '"tiny-llama"', '"minilm"': '"tiny-bert"'}
# examples whose work stays long even on the tiny models (each trial of a 20-trial search is measured end to end):
# they run with the slow tests
SLOW = {("search.md", 2)}


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(re.finditer(r"```python\n(.*?)```", doc.read_text(), re.S)):
            marks = [pytest.mark.slow] if (doc.name, i) in SLOW else []
            out.append(pytest.param(doc.name, i, m.group(1), marks=marks))
    return out


@pytest.mark.parametrize("doc,index,code", _blocks(), ids=lambda v: str(v)[:30])
def test_example_runs(doc, index, code, tmp_path, monkeypatch):
    for a, b in SWAP.items():
        code = code.replace(a, b)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{doc}[{index}]", "exec"), {"__name__": "__docs__"})


def _docstring_block(doc: str) -> str:
    """The indented block after the first ``::`` of a docstring, dedented."""
    import textwrap

    tail = doc.split("::", 1)[1]
    lines = []
    for line in tail.splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_the_package_docstring_example_runs(tmp_path, monkeypatch):
    import torchslim

    code = _docstring_block(torchslim.__doc__)
    assert "torchslim.quantize_" in code
    for a, b in SWAP.items():
        code = code.replace(a, b)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "torchslim.__doc__", "exec"), {"__name__": "__docs__"})


def _inline_calls() -> list[tuple[str, str]]:
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.finditer(r"`[^`\n]*?\b(torchslim(?:\.[A-Za-z_]\w*)+)\(([^`]*)`", doc.read_text()):
            out.append((doc.name, m.group(0)))
    return out


@pytest.mark.parametrize("doc,span", _inline_calls(), ids=lambda v: str(v)[:50])
def test_inline_calls_name_what_exists(doc, span):
    """An inline call in the prose (`torchslim.x.y(..., key=...)`) names a function reachable after
    ``import torchslim`` as written, and every keyword it shows is a parameter of that function."""
    import ast
    import inspect

    import torchslim

    text = span.strip("`")
    dotted = re.search(r"\b(torchslim(?:\.[A-Za-z_]\w*)+)\(", text).group(1)
    obj = torchslim
    for part in dotted.split(".")[1:]:
        assert hasattr(obj, part), f"{doc}: `{dotted}` is not reachable after `import torchslim` (no {part!r})"
        obj = getattr(obj, part)
    assert callable(obj), dotted
    call = text[text.index(dotted):]
    try:
        node = ast.parse(call, mode="eval").body
    except SyntaxError:
        return                                   # prose elides arguments (`...`): the name is what can be checked
    params = inspect.signature(obj).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for kw in node.keywords:
        assert kw.arg in params, f"{doc}: `{dotted}` has no parameter {kw.arg!r}"


# what the prose's free names stand for when an inline example runs (on the tiny models)
ENCODER_CALLS = ("prepare_fast_encoder",)
TASK_NAMED = ("source_task",)                    # calls whose `name` is a labelled text task, not a model
SLOW_INLINE: tuple[str, ...] = ()


def _namespace(span: str, tmp_path: Path) -> dict:
    import torchslim
    import torchslim.eval
    import torchslim.quantization
    import torchslim.train

    lm = torchslim.load_model("tiny-bert" if any(c in span for c in ENCODER_CALLS) else "tiny-llama")
    ns = {name: getattr(mod, name) for mod in (torchslim.quantization, torchslim.eval, torchslim.train, torchslim)
          for name in getattr(mod, "__all__", ())}
    ns.update(torchslim=torchslim, model=lm.model, task=lm.task, tokenizer=lm.tokenizer,
              name="pydoc" if any(c in span for c in TASK_NAMED) else lm.name,
              path=tmp_path / "artifact",
              w=torchslim.quantization.WeightOnlyConfig(format=torchslim.quantization.IntFormat(4),
                                                        granularity=torchslim.quantization.PerGroup(32)))
    return ns


def _free_names(code: str) -> set[str] | None:
    import ast
    import builtins

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None                                  # prose that elides arguments (`...`, `runtime=`)
    if any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(tree)):
        return None
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} \
        - stored - set(dir(builtins))


KNOWN = {"torchslim", "model", "task", "tokenizer", "name", "path", "w"}


def _runnable_inline() -> list:
    out = []
    for doc, span in _inline_calls():
        code = " ".join(span.strip("`").split())
        free = _free_names(code)
        if free is None or not free <= KNOWN | {"EvalSpec", "AWQConfig", "GPTQConfig", "FinetuneConfig",
                                               "TrainConfig", "LowRankConfig", "AttentionConfig", "EarlyExitConfig"}:
            continue
        marks = [pytest.mark.slow] if any(s in code for s in SLOW_INLINE) else []
        out.append(pytest.param(doc, code, marks=marks))
    return out


def test_most_inline_examples_are_complete_enough_to_run() -> None:
    # the ones left out elide arguments (`LowRankConfig(...)`) or name the user's own objects (`MyNet()`, `cfg`)
    assert len(_runnable_inline()) >= 6


@pytest.mark.parametrize("doc,code", _runnable_inline(), ids=lambda v: str(v)[:50])
def test_inline_example_runs(doc, code, tmp_path, monkeypatch):
    """An inline example whose arguments are all given runs as written, its names standing for the tiny models."""
    ns = _namespace(code, tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{doc} (inline)", "exec"), ns)
