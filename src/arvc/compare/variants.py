"""The contestants of `arvc compare`: the registry's optimizers plus the settings worth comparing.

"all" is every registry optimizer (read from `OPTIMIZERS`), AdamW with bitsandbytes' 8-bit state, and
AnyPrecisionAdamW in bf16 with and without Kahan summation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arvc.optim import OPTIMIZERS, get_spec

__all__ = ["COMPARE_EMA", "VARIANTS", "Variant", "resolve_optimizers"]

# The AdamW+EMA contestant's decay: its horizon, 1 / (1 - decay) = 100 steps, fits the comparison's runs
# (300 steps by default); 0.999 (1000 steps) would still weigh the first steps' weights at the end.
COMPARE_EMA = 0.99


@dataclass(frozen=True)
class Variant:
    """One contestant: a registry optimizer plus the switches that make it a distinct setting."""

    name: str
    optimizer: str
    use_8bit: bool = False
    precision: str | None = None  # None: the comparison's precision
    kwargs: dict[str, Any] = field(default_factory=dict)
    ema: float | None = None  # train.ema: evaluated at an EMA of G's weights (arvc.train.weights)


def _variants() -> dict[str, Variant]:
    variants = {name: Variant(name, name) for name in OPTIMIZERS}
    variants["AdamW+8bit"] = Variant("AdamW+8bit", "AdamW", use_8bit=True)
    # AdamW evaluated at an EMA of G's weights (`--ema`; a schedule-free optimizer is evaluated at its own
    # average, the others at their live weights: arvc.train.weights)
    variants["AdamW+EMA"] = Variant("AdamW+EMA", "AdamW", ema=COMPARE_EMA)
    # Each optimizer's bf16-weights settings worth comparing, from its registry spec
    # (AnyPrecisionAdamW-bf16-kahan: the loop's bf16 mode; -plain: the same without Kahan summation).
    for spec in OPTIMIZERS.values():
        for suffix, kwargs in spec.bf16_variants.items():
            name = f"{spec.name}-bf16-{suffix}"
            variants[name] = Variant(name, spec.name, precision="bf16", kwargs=dict(kwargs))
    return variants


VARIANTS: dict[str, Variant] = _variants()


def resolve_optimizers(names: list[str] | str) -> list[Variant]:
    """ "all" or names (case-insensitive) → variants; a registry name not listed above is used as is."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if [n.strip().lower() for n in names] == ["all"]:
        return list(VARIANTS.values())
    by_lower = {k.lower(): v for k, v in VARIANTS.items()}
    chosen = []
    for name in names:
        variant = by_lower.get(name.strip().lower())
        if variant is None:
            try:
                variant = Variant(get_spec(name).name, get_spec(name).name)
            except ValueError:
                raise ValueError(f"unknown optimizer {name!r}; valid: all, {', '.join(VARIANTS)}") from None
        if variant not in chosen:
            chosen.append(variant)
    if not chosen:
        raise ValueError("no optimizers given; use 'all' or a comma-separated list of names")
    return chosen
