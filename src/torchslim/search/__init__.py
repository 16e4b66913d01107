"""Which layer hurts, and which combination to pick: sensitivity scans over candidate actions.

``sensitivity(model, task, parse_actions("int8,int4g128,sparse50"))`` applies each action to each layer (or
block) alone and measures how far the outputs move; ``report.save`` writes the table, JSON and a heat map.
``tune(model, task, scan, "1%")`` finds the most compressed per-layer mix within a quality budget, verified end to
end, as a recipe.
"""
from torchslim.search.actions import Action, parse_action, parse_actions
from torchslim.search.report import heat_map, save, to_markdown
from torchslim.search.sensitivity import Cell, Row, Sensitivity, sensitivity
from torchslim.search.tune import Budget, Tuned, tune

__all__ = ["Action", "Budget", "Cell", "Row", "Sensitivity", "Tuned", "heat_map", "parse_action", "parse_actions",
           "save", "sensitivity", "to_markdown", "tune"]
