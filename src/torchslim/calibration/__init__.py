"""Shared calibration: one way to capture layer inputs, for every post-training method."""
from torchslim.calibration.pipeline import calibration_batches, catch_block_inputs, run_basic, run_sequential

__all__ = ["calibration_batches", "catch_block_inputs", "run_basic", "run_sequential"]
