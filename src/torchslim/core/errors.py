"""User-facing errors. The CLI prints their message on one line and exits non-zero."""


class TorchSlimError(Exception):
    """An error caused by the user's input (bad config, unknown model, corrupt file)."""


class ConfigError(TorchSlimError, ValueError):
    """A config value or key is invalid."""


class ArtifactError(TorchSlimError):
    """A saved artifact is missing, truncated, corrupted or from an unknown format."""


class UnknownModelError(TorchSlimError, LookupError):
    """A model name is neither in the zoo, nor a model folder, nor an artifact."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type name), cut to ``limit`` characters: what a
    one-line error quotes from a library's exception."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
