"""The HTML report (``torchslim report``): runs, artifacts, evaluations, sensitivity scans and size/quality
fronts on one static, self-contained page (matplotlib figures embedded as PNG)."""
from torchslim.report.html import render, write
from torchslim.report.inputs import Inputs, gather

__all__ = ["Inputs", "gather", "render", "write"]
