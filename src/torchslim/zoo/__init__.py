"""The model zoo: real models with their tasks, embedded (no hub access at run time)."""
from torchslim.zoo.registry import LoadedModel, ZooEntry, get_entry, list_entries, load_model, register_zoo

__all__ = ["LoadedModel", "ZooEntry", "get_entry", "list_entries", "load_model", "register_zoo"]
