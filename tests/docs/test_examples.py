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
