"""Every `torchslim ...` line in the README's shell blocks runs as written, in README order, on the tiny test models.

Later lines use what earlier ones wrote (`out/int4`, `report.json`, `out/sens`...), so one test runs them all in
one folder, in-process; a line that a new user would type and that fails (a file no earlier line wrote, an option
that does not exist) fails here. The config files come from the README's YAML blocks, as a user would save them.
"""
import re
import shlex
import time
from pathlib import Path

import pytest

from torchslim.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SWAP = {"smollm2-135m": "tiny-llama", "minilm": "tiny-bert"}
# what a tiny model cannot do as written, and the smallest change that keeps the command's meaning
TINY = {
    "kernels --measure": "kernels",                  # the real sweep times 1..4096 rows: minutes; listing is the same code
}


def readme_commands(text: str) -> list[str]:
    """The `torchslim` command lines of the README's bash blocks, comments stripped, in order."""
    lines = []
    for body in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in body.splitlines():
            cmd = re.sub(r"\s+#.*$", "", line).strip()
            if cmd.startswith("torchslim "):
                lines.append(cmd)
    return lines


def readme_files(text: str) -> dict[str, str]:
    """The YAML blocks that name a file on their first line (`# int4.yaml: ...`)."""
    files = {}
    for body in re.findall(r"```yaml\n(.*?)```", text, re.S):
        m = re.match(r"#\s*([\w.-]+\.ya?ml)\b", body)
        if m:
            files[m.group(1)] = body
    return files


def _tiny(cmd: str) -> list[str]:
    for a, b in TINY.items():
        cmd = cmd.replace(a, b)
    return [SWAP.get(tok, tok) for tok in shlex.split(cmd)][1:]


def test_the_readme_names_its_files_and_commands():
    text = (ROOT / "README.md").read_text()
    files, cmds = readme_files(text), readme_commands(text)
    assert len(cmds) >= 20 and {"int4.yaml", "wanda50.yaml", "train.yaml", "my.yaml"} <= set(files)
    used = {tok for c in cmds for tok in shlex.split(c) if tok.endswith((".yaml", ".yml"))}
    assert used <= set(files) | {"tuned.yaml"}, f"the README runs config files it never shows: {used - set(files)}"


@pytest.mark.slow
def test_every_readme_command_runs_in_order(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    for name, body in readme_files(text).items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    failures, timings = [], []
    for cmd in readme_commands(text):
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as e:
            main(_tiny(cmd))
        out = capsys.readouterr()
        timings.append((round(time.perf_counter() - t0, 1), cmd))
        if e.value.code not in (0, None):
            failures.append(f"{cmd}\n  exit {e.value.code}: {out.err.strip()[-400:]}")
    print(sorted(timings, reverse=True)[:5])
    assert not failures, "README commands that fail as written:\n" + "\n".join(failures)


def test_the_readme_lists_every_shipped_recipe():
    # the comment beside `torchslim recipes list` is what a new user reads first: it must name them all
    from torchslim.recipes import preset_names

    text = (ROOT / "README.md").read_text()
    block = text[text.index("# shipped recipes:"):]
    comment = " ".join(re.sub(r"^.*?#", "", line) for line in block.splitlines()[:12] if "#" in line)
    listed = set(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)+", comment.split(":", 1)[1]))
    assert set(preset_names()) <= listed, sorted(set(preset_names()) - listed)
