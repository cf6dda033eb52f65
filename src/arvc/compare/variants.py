"""The contestants of `arvc compare`: the registry's optimizers plus the settings worth comparing.

"all" is the five registry optimizers, AdamW with bitsandbytes' 8-bit state, and AnyPrecisionAdamW in
bf16 with and without Kahan summation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arvc.optim import OPTIMIZERS, get_spec

__all__ = ["VARIANTS", "Variant", "resolve_optimizers"]


@dataclass(frozen=True)
class Variant:
    """One contestant: a registry optimizer plus the switches that make it a distinct setting."""

    name: str
    optimizer: str
    use_8bit: bool = False
    precision: str | None = None  # None: the comparison's precision
    kwargs: dict[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    **{name: Variant(name, name) for name in OPTIMIZERS},
    "AdamW+8bit": Variant("AdamW+8bit", "AdamW", use_8bit=True),
    # bf16 weights + bf16 moments with Kahan-compensated updates (the loop's "brain" mode).
    "AnyPrecisionAdamW-bf16-kahan": Variant(
        "AnyPrecisionAdamW-bf16-kahan",
        "AnyPrecisionAdamW",
        precision="bf16",
        kwargs={"use_kahan_summation": True},
    ),
    # bf16 weights and moments like the Kahan variant, but rounding drops what does not fit the weights.
    "AnyPrecisionAdamW-bf16-plain": Variant(
        "AnyPrecisionAdamW-bf16-plain",
        "AnyPrecisionAdamW",
        precision="bf16",
        kwargs={"use_kahan_summation": False},
    ),
}


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
