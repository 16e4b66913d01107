"""Core abstractions shared by every technique. Imports no technique."""
from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError
from torchslim.core.registry import apply_, get_handler, register_handler
from torchslim.core.select import Selector

__all__ = [
    "ArtifactError", "BaseConfig", "ConfigError", "Selector", "TorchSlimError",
    "apply_", "config_from_dict", "get_handler", "register_handler",
]
