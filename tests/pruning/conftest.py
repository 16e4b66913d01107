"""Pruning tests import shared models and tasks from _pruning_helpers.py in this folder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
