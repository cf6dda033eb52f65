"""Optimizer shoot-out on the user's own voice: same data, seed and config, one run per optimizer."""

from arvc.compare.runner import CompareResult, run_compare
from arvc.compare.variants import VARIANTS, Variant, resolve_optimizers

__all__ = ["VARIANTS", "CompareResult", "Variant", "resolve_optimizers", "run_compare"]
