"""Builders of model skeletons: the untrained architecture an artifact's weights are loaded into.

An artifact records how its architecture is rebuilt (``manifest["architecture"]``) and where
the model came from (``manifest["source"]``). Loading asks this registry, in order:

1. a builder registered for the architecture kind (``"transformers"``: from ``config.json``);
2. a builder registered for the source kind (``"zoo"``: the zoo entry's skeleton);
3. a builder registered for the architecture's class name (``"mypkg.nets.MyNet"``), which a
   user registers for their own ``nn.Module`` classes.

So the artifact format depends on no model family or zoo: each registers its own builder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from torchslim.core.errors import ArtifactError

Builder = Callable[[dict[str, Any], Path], nn.Module]
_BY_ARCH: dict[str, Builder] = {}
_BY_SOURCE: dict[str, Builder] = {}
_BY_CLASS: dict[str, Builder] = {}


def register_skeleton(*, architecture: str | None = None, source: str | None = None,
                      cls: str | type | None = None) -> Callable[[Builder], Builder]:
    """Decorator: ``builder(manifest, artifact_folder) -> nn.Module`` for one architecture kind,
    source kind or class (a class or its ``module.QualName``)."""
    if sum(x is not None for x in (architecture, source, cls)) != 1:
        raise TypeError("register_skeleton takes exactly one of architecture=, source=, cls=")

    def decorator(builder: Builder) -> Builder:
        if architecture is not None:
            _BY_ARCH[architecture] = builder
        elif source is not None:
            _BY_SOURCE[source] = builder
        else:
            _BY_CLASS[cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"] = builder
        return builder

    return decorator


def build_skeleton(manifest: dict[str, Any], path: Path) -> nn.Module:
    """The untrained model an artifact's weights go into, from the registered builders."""
    arch, source = manifest.get("architecture", {}), manifest.get("source", {})
    for table, key in ((_BY_ARCH, arch.get("kind")), (_BY_SOURCE, source.get("kind")), (_BY_CLASS, arch.get("class"))):
        builder = table.get(key) if isinstance(key, str) else None
        if builder is not None:
            model = builder(manifest, path)
            if model is not None:
                return model
    raise ArtifactError(
        f"{path}: the artifact holds a plain {str(arch.get('class', 'nn.Module'))[:120]}; pass its architecture as "
        "torchslim.load(path, model=...) or register a builder with torchslim.core.skeletons.register_skeleton"
    )
