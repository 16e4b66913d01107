"""Typed, versioned configs.

Every technique's config is a dataclass that subclasses :class:`BaseConfig`. It validates
itself at construction (``validate``), serializes to ``{"_type", "_version", "_data"}`` and
back, and to JSON or YAML. Strings exist only at the edges: ``from_dict`` turns them into the
field's declared type (enums, ``torch.dtype``, nested configs, ``Selector``) once.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import typing
from pathlib import Path
from typing import Any, ClassVar


from torchslim.core.codec import decode, decode_scalar, encode, shown
from torchslim.core.errors import ConfigError
from torchslim.core.io import atomic_file, read_text

_CONFIG_TYPES: dict[str, type[BaseConfig]] = {}


class BaseConfig:
    """Base class of every config. Subclasses are ``@dataclass``es.

    Class attributes:
        VERSION: bumped when a field changes meaning; ``migrate`` upgrades older dicts.
        family: the technique family whose verb accepts this config (``"quantization"``...).
    """

    VERSION: ClassVar[int] = 1
    family: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CONFIG_TYPES[cls.__name__] = cls

    def __post_init__(self) -> None:
        self._coerce_enums()
        self._check_numbers()
        self.validate()

    def _check_numbers(self) -> None:
        """Every number is finite and fits 64 bits; fields declared with :func:`between` are in range."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            where = f"{type(self).__name__}.{f.name}"
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where} must be a finite number, got {v!r}")
            if isinstance(v, int) and not -(2**63) <= v < 2**63:
                raise ConfigError(f"{where} is out of range: {shown(v)}")
            lo, hi = f.metadata.get("range", (None, None))
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ConfigError(f"{where} must be between {lo} and {hi}, got {shown(v)}")

    def _coerce_enums(self) -> None:
        """Accept an enum field's value as its string (``importance="wanda"``), as the edges do."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            hint, value = _optional_of(hints.get(f.name)), getattr(self, f.name)
            where = f"{type(self).__name__}.{f.name}"
            if isinstance(value, str) and isinstance(hint, type) and issubclass(hint, enum.Enum):
                object.__setattr__(self, f.name, decode_scalar(value, hint, where))
            elif isinstance(value, (str, list, tuple)) and _enum_tuple(hint) is not None:
                items = (value,) if isinstance(value, str) else value
                object.__setattr__(self, f.name, tuple(decode_scalar(v, _enum_tuple(hint), where) for v in items))

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid value. Override in subclasses."""

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Upgrade ``data`` written by an older ``version`` of this config. Override when bumping VERSION."""
        return data

    # -- serialization -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: encode(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"_type": type(self).__name__, "_version": self.VERSION, "_data": data}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaseConfig:
        return config_from_dict(d, expected=cls)

    @classmethod
    def from_config_dict(cls, d: Any, where: str | None = None) -> BaseConfig:
        """The codec's hook for a field typed as this config (``where`` names the field in errors)."""
        return config_from_dict(d, expected=cls, where=where)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_short_dict(self) -> dict[str, Any]:
        """The form recipes and config files use: ``_type`` plus the fields that differ from their defaults
        (nested configs alike); ``config_from_dict`` reads it back to an equal config."""
        out: dict[str, Any] = {"_type": type(self).__name__}
        if self.VERSION != 1:
            out["_version"] = self.VERSION
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.init:
                continue
            value = _short(getattr(self, f.name))
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                out[f.name] = value
                continue
            if value != _short(default):
                out[f.name] = value
        return out

    def to_yaml(self) -> str:
        """The short form (:meth:`to_short_dict`) as YAML, as a recipe stage or a ``--config`` file writes it."""
        import yaml

        return yaml.safe_dump(self.to_short_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json(indent=2)
        with atomic_file(path) as f:
            f.write(text)

    @staticmethod
    def load(path: str | Path) -> BaseConfig:
        """Read a config from a JSON or YAML file (errors name the file)."""
        data = read_mapping(path)
        try:
            return config_from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _short(value: Any) -> Any:
    if hasattr(value, "to_short_dict") and not isinstance(value, type):     # a config, a Selector
        return value.to_short_dict()
    if isinstance(value, (list, tuple)) and any(isinstance(v, BaseConfig) for v in value):
        return [_short(v) for v in value]
    return encode(value)


def between(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field whose value must lie in ``[lo, hi]`` (checked for every config at construction)."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi)})


def _optional_of(hint: Any) -> Any:
    """``X`` for ``X | None`` (an optional enum field takes its value's string too), else ``hint``."""
    args = typing.get_args(hint)
    if args and type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return hint


def _enum_tuple(hint: Any) -> type[enum.Enum] | None:
    """``E`` when ``hint`` is ``tuple[E, ...]`` of an enum ``E``, else ``None``."""
    if typing.get_origin(hint) is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], enum.Enum):
            return args[0]
    return None


MAX_CONFIG_BYTES = 16 << 20


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a JSON (``.json``) or YAML (any other name) file into a dict, with one-line errors.

    Files over 16 MB, text that is not UTF-8, YAML aliases (``*name``: a "billion laughs" file
    expands exponentially) and nesting deeper than Python can walk are refused.
    """
    path = Path(path)
    text = read_text(path, MAX_CONFIG_BYTES, "config file not found")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"      # YAML also reads JSON text
    try:
        data = _safe_yaml(text) if kind == "YAML" else json.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - parser errors become one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}: not valid {kind}: {first[:200]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses aliases (no exponential expansion from a few bytes)."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise ConfigError("YAML aliases (*name) are not allowed in torchslim files")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader subclass


def config_types() -> dict[str, type[BaseConfig]]:
    """All config classes known so far, by name."""
    return dict(_CONFIG_TYPES)


def _known_types(name: str | None) -> str:
    """The types closest to a mistyped ``name``, else the top-level ones (every family brings more, and a
    one-line error has no room for all of them)."""
    import difflib

    close = difflib.get_close_matches(name, sorted(_CONFIG_TYPES), n=3, cutoff=0.6) if name else []
    if close:
        return "did you mean " + " or ".join(close) + "?"
    top = sorted(n for n in _CONFIG_TYPES if n.endswith("Config"))
    return f"known types include {', '.join(top[:12])}{', ...' if len(top) > 12 else ''} ({len(_CONFIG_TYPES)} in all)"


def config_from_dict(d: Any, expected: type[BaseConfig] | None = None, where: str | None = None) -> BaseConfig:
    """Build a config from ``{"_type": ..., "_version": ..., "_data": {...}}``.

    A plain mapping without ``_type`` is accepted when ``expected`` names the class. ``where``
    (a field path such as ``GPTQConfig.weight``) prefixes error messages of nested configs.
    """
    label = where or (expected.__name__ if expected else "config")
    if not isinstance(d, dict):
        raise ConfigError(f"{label}: a config must be a mapping, got {shown(d)}")
    name = d.get("_type", expected.__name__ if expected else None)
    if name is None:
        raise ConfigError(f"{label}: config has no '_type' key; {_known_types(None)}")
    if not isinstance(name, str):
        raise ConfigError(f"{label}: '_type' must be a config class name, got {shown(name)}")
    cls = _CONFIG_TYPES.get(name)
    if cls is None:
        raise ConfigError(f"{label}: unknown config type {shown(name)}; {_known_types(name)}")
    if expected is not None and not issubclass(cls, expected):
        raise ConfigError(f"{label}: expected a {expected.__name__}, got {name}")
    version = d.get("_version", cls.VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{label}: '_version' must be a positive integer, got {shown(version)}")
    if version > cls.VERSION:
        raise ConfigError(f"{name} version {version} is newer than this torchslim understands ({cls.VERSION})")
    meta = {"_type", "_version", "_data"}
    stray = sorted((str(k) for k in d if k not in meta and (str(k).startswith("_") or "_data" in d)))
    if stray:
        raise ConfigError(f"{label}: unexpected key {shown(stray[0])}" +
                          (" next to '_data' (fields go inside it)" if "_data" in d else "; valid meta keys: _type, _version, _data"))
    data = d["_data"] if "_data" in d else {k: v for k, v in d.items() if k not in meta}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: '_data' must be a mapping, got {shown(data)}")
    data = cls.migrate(dict(data), version) if version < cls.VERSION else dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"unknown key {shown(unknown[0])} for {where or name}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    prefix = where or name
    kwargs = {k: decode(v, hints.get(k, Any), f"{prefix}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where and not str(e).startswith(where) else str(e)) from None
