"""The guide's recommendation: which optimizer and settings to start a run with, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arvc.config import PRECISIONS
from arvc.optim import registry

__all__ = ["Recommendation", "recommend"]

SHORT_RUN_EPOCHS = 200
LONG_BF16_RUN_EPOCHS = 500
GUIDE_EPOCHS = 300
EARLY_STOP_PATIENCE = 10  # evaluations without improvement, suggested with a schedule-free optimizer


@dataclass(frozen=True)
class Recommendation:
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    reason: str
    options: dict[str, Any] = field(default_factory=dict)
    early_stop: int | None = None  # the patience to pass as --early-stop (None: none)


def recommend(epochs: int, precision: str = "fp32", early_stop: bool = False) -> Recommendation:
    """Stopping on held-out validation (`early_stop`: no fixed run length) → a schedule-free optimizer,
    when the registry has one; short runs → RAdam (no warm-up to wait for); long bf16 runs →
    AnyPrecisionAdamW + Kahan; everything else → AdamW, lr 1e-3, batch 8 (the guide's reliable default,
    300 epochs)."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"Invalid epochs: {epochs!r}; expected an integer >= 1")
    if precision not in PRECISIONS:
        raise ValueError(f"Invalid precision: {precision!r}; valid: {', '.join(PRECISIONS)}")
    schedule_free = next((s for s in registry.OPTIMIZERS.values() if s.schedule_free), None)
    if early_stop and schedule_free is not None:
        return Recommendation(
            schedule_free.name,
            1e-3,
            8,
            epochs,
            f"Stopping early on held-out validation: the run's length is not known in advance, and "
            f"{schedule_free.name} needs no schedule fitted to it (it trains at a constant lr, and the "
            "averaged weights it evaluates and exports are good whenever training stops); "
            f"{epochs} epochs is then only an upper bound. Measured on the demo voice (3 seeds, "
            "docs/compare.md): it tied AdamW when stopped at a third of the run and fell behind it by the "
            "end, so choose AdamW if the run may well go its full length.",
            early_stop=EARLY_STOP_PATIENCE,
        )
    if epochs <= SHORT_RUN_EPOCHS:
        return Recommendation(
            "RAdam",
            1e-3,
            8,
            epochs,
            f"{epochs} epochs is a short run (<= {SHORT_RUN_EPOCHS}): RAdam rectifies the early adaptive "
            "steps, so it trains well from the first epoch without a warm-up.",
        )
    bf16_spec = registry.bf16_weights_spec()
    if precision == "bf16" and epochs >= LONG_BF16_RUN_EPOCHS and bf16_spec is not None:
        return Recommendation(
            bf16_spec.name,
            1e-3,
            8,
            epochs,
            f"A long bf16 run ({epochs} >= {LONG_BF16_RUN_EPOCHS} epochs): bf16 weights lose updates smaller "
            f"than half an ulp; {bf16_spec.name}'s bf16 mode compensates them (Kahan summation), so the run "
            "follows the fp32 trajectory.",
            dict(bf16_spec.bf16_weights_kwargs),
        )
    return Recommendation(
        "AdamW",
        1e-3,
        8,
        epochs,
        "The guide's default: AdamW is the most reliable general-purpose choice; start with lr 1e-3 and "
        f"batch 8 (the guide's standard run is {GUIDE_EPOCHS} epochs).",
    )
