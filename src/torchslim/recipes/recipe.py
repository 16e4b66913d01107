"""A recipe: an ordered list of typed stages, read from and written to YAML or JSON.

File layout::

    recipe: structured-25-recover            # a name
    description: Remove 25% of the MLP neurons, then recover by fine-tuning.
    version: 1
    stages:
      - prune: {_type: StructuredConfig, targets: [neurons], ratio: 0.25, importance: wanda}
      - train: {steps: 60, lr: 5.0e-5, batch_size: 4}
      - evaluate: {}

Errors are one line naming the file, the stage and the key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.core.codec import shown
from torchslim.core.config import read_mapping
from torchslim.core.errors import ConfigError
from torchslim.core.io import atomic_file
from torchslim.recipes.stages import Stage, stage_from_dict

RECIPE_VERSION = 1
_KEYS = ("recipe", "description", "version", "stages")


@dataclass
class Recipe:
    name: str = "recipe"
    description: str = ""
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError(f"recipe '{self.name}' has no stages")

    # -- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.name, "description": self.description, "version": RECIPE_VERSION,
                "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Any, where: str = "recipe") -> Recipe:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a recipe must be a mapping with {', '.join(_KEYS)}, got {shown(d)}")
        unknown = sorted(set(map(str, d)) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {shown(unknown[0])}; valid keys: {', '.join(_KEYS)}")
        version = d.get("version", RECIPE_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= RECIPE_VERSION:
            raise ConfigError(f"{where}: recipe version {shown(version)} is not supported (this torchslim reads "
                              f"1 to {RECIPE_VERSION})")
        name, description = d.get("recipe", "recipe"), d.get("description", "")
        if not isinstance(name, str) or not isinstance(description, str):
            raise ConfigError(f"{where}: 'recipe' and 'description' must be strings")
        stages = d.get("stages")
        if not isinstance(stages, list) or not stages:
            raise ConfigError(f"{where}: 'stages' must be a non-empty list, got {shown(stages)}")
        return cls(name, description, [stage_from_dict(s, f"{where}: stage {i + 1}") for i, s in enumerate(stages)])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        """The recipe as a person edits it: each stage's config in its short form (``to_dict`` keeps the full,
        versioned form that fingerprints a run)."""
        import yaml

        short = {**self.to_dict(), "stages": [s.to_short_dict() for s in self.stages]}
        return yaml.safe_dump(short, sort_keys=False, width=110)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        with atomic_file(path) as f:
            f.write(self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return cls.from_dict(read_mapping(path), where=str(path))

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: a resumed run must be the same recipe."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
