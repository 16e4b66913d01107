"""User-facing errors. The CLI prints their message on one line and exits non-zero."""


class TorchSlimError(Exception):
    """An error caused by the user's input (bad config, unknown model, corrupt file)."""


class ConfigError(TorchSlimError, ValueError):
    """A config value or key is invalid."""


class ArtifactError(TorchSlimError):
    """A saved artifact is missing, truncated, corrupted or from an unknown format."""


class UnknownModelError(TorchSlimError, LookupError):
    """A model name is neither in the zoo, nor a model folder, nor an artifact."""
