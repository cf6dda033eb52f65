"""How a caller follows a training run: `train(options, callbacks)` calls these as the run goes.

The library itself never prints; the CLI (progress bar or lines), the web UI (its job status) and compare
(its per-epoch records and optimizer timing) each subclass `Callbacks` and override what they need. Every
method does nothing by default, so a new event never breaks a caller that does not use it. Only rank 0 of
a multi-process run calls them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callbacks"]


class Callbacks:
    """The events of a run, in the order they come; each does nothing unless overridden."""

    def on_optimizers(self, optim_g: Any, optim_d: Any) -> None:
        """Once the optimizers exist, before the first step (e.g. to time their steps with
        register_step_pre_hook/register_step_post_hook)."""

    def on_evaluation_weights(self, weights: Any) -> None:
        """Once the run is set up: `weights` is a function whose `with weights():` puts the weights the run
        evaluates into G (a schedule-free optimizer's x, the EMA; arvc.train.weights) and the live ones back
        after (compare scores each contestant on them). Under --zero with a schedule-free optimizer entering
        it is collective (x is gathered from every rank's shard), so it is for one-process runs there."""

    def on_start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        """Training starts (or continues) at `start_epoch` (1-based)."""

    def on_step(self, epoch: int, step: int, losses: dict[str, float], lr: float) -> None:
        """After each optimizer step (1-based, counted over the whole run)."""

    def on_epoch(self, epoch: int, losses: dict[str, float]) -> None:
        """After each whole epoch (and its validation), with the last step's losses."""
