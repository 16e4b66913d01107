"""Named recipes shipped with torchslim (``torchslim recipes list`` / ``show NAME``): starting templates."""
from __future__ import annotations

from pathlib import Path

from torchslim.core.errors import ConfigError
from torchslim.recipes.recipe import Recipe

PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS / f"{name}.yaml"
    if name not in preset_names():
        raise ConfigError(f"unknown recipe '{name}'; shipped recipes: {', '.join(preset_names())} "
                          "(or give a recipe file)")
    return path


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a recipe file (YAML or JSON)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return Recipe.load(path)
    return Recipe.load(preset_path(str(name_or_path)))
