"""docs/architecture.md's CLI line names exactly the commands the ``torchslim`` app registers.

``python tests/docs/test_cli_list.py`` rewrites the line from the app (in its registration order).
"""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
LINE = re.compile(r"cli/ \(typer: ([^)]*)\)")


def app_commands() -> list[str]:
    """Top-level command and group names of the app, after ``_register_commands()`` ran at import."""
    import typer.main

    from torchslim.cli.main import app

    return list(typer.main.get_command(app).commands)


def documented_commands(text: str) -> list[str]:
    m = LINE.search(text)
    assert m is not None, f"{DOC}: no `cli/ (typer: ...)` line"
    return [c.strip() for c in m.group(1).split(",")]


def test_the_architecture_cli_line_matches_the_app() -> None:
    documented, real = documented_commands(DOC.read_text()), app_commands()
    assert len(documented) == len(set(documented)), f"a command is listed twice: {documented}"
    assert set(documented) == set(real), (f"docs/architecture.md lists {sorted(set(documented) - set(real))} "
                                          f"that the app lacks and misses {sorted(set(real) - set(documented))}; "
                                          "run `python tests/docs/test_cli_list.py`")


def test_the_app_has_the_commands_a_new_user_meets() -> None:
    assert {"eval", "quantize", "prune", "run", "zoo", "export", "generate"} <= set(app_commands())


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(LINE.sub(lambda m: f"cli/ (typer: {', '.join(app_commands())})", text, count=1))
    print(f"rewrote the CLI line of {DOC}")
