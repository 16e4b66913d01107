"""Which layer hurts, and which combination to pick: sensitivity scans over candidate actions.

``sensitivity(model, task, parse_actions("int8,int4g128,sparse50"))`` applies each action to each layer (or
block) alone and measures how far the outputs move; ``report.save`` writes the table, JSON and a heat map.
``tune(model, task, scan, "1%")`` finds the most compressed per-layer mix within a quality budget, verified end to
end, as a recipe.
``nas(model, task, NASConfig(min_speedup=2.0))`` searches compact sub-networks (depth, heads, neurons, channels)
under a latency constraint measured on this machine.
"""
from torchslim.search.actions import Action, parse_action, parse_actions
from torchslim.search.arch_space import ArchShape, ArchSpace
from torchslim.search.nas import NASConfig, NASResult, Trial, nas
from torchslim.search.report import heat_map, save, to_markdown
from torchslim.search.sensitivity import Cell, Row, Sensitivity, sensitivity
from torchslim.search.tune import Budget, Tuned, tune

__all__ = ["Action", "ArchShape", "ArchSpace", "Budget", "NASConfig", "NASResult", "Trial", "nas", "Cell", "Row", "Sensitivity", "Tuned", "heat_map", "parse_action", "parse_actions",
           "save", "sensitivity", "to_markdown", "tune"]
