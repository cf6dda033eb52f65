"""What a run leaves for its user to look at: metrics.csv, TensorBoard scalars/images and loss.png."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from arvc._files import WriteError, atomic_file

__all__ = ["METRIC_FIELDS", "NullLog", "RunLog", "read_metrics"]

logger = logging.getLogger(__name__)

METRIC_FIELDS = (
    "epoch",
    "step",
    "loss_d",
    "loss_g",
    "loss_mel",
    "loss_kl",
    "loss_fm",
    "loss_adv",
    "lr_g",
    "lr_d",
    "grad_norm_g",
    "grad_norm_d",
    "skipped",
    "seconds",
)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of `run_dir/metrics.csv` as dicts of strings ([] if there is none); a torn last line
    (a run killed mid-write) is dropped."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("seconds")]


class RunLog:
    """Appends one metrics row per logged step, mirrors it to TensorBoard, redraws loss.png per epoch.

    On resume, rows newer than the checkpoint are dropped first, so metrics.csv never repeats a step.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.plot_path = self.run_dir / "loss.png"
        if resume_step is None or not self.csv_path.exists():
            self._rewrite([])
        else:
            self._rewrite([row for row in self.rows() if int(row["step"]) <= resume_step])
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=resume_step)

    def rows(self) -> list[dict]:
        return read_metrics(self.run_dir)

    def _rewrite(self, rows: list[dict]) -> None:
        with atomic_file(self.csv_path) as temporary, temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def log_step(self, row: dict) -> None:
        try:  # a torn last line (the disk filled mid-row) is dropped by read_metrics
            with self.csv_path.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=METRIC_FIELDS).writerow(
                    {k: row.get(k, "") for k in METRIC_FIELDS}
                )
        except OSError as error:
            raise WriteError(self.csv_path, error) from error
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("epoch", "step", "skipped") and value is not None:
                group = "lr" if key.startswith("lr") else "grad_norm" if key.startswith("grad") else "loss"
                self.writer.add_scalar(f"{group}/{key}", float(value), step)

    def log_mels(self, step: int, real: torch.Tensor, generated: torch.Tensor) -> None:
        """Mel spectrograms of one training slice, real above generated, as a TensorBoard image."""
        pair = torch.cat([real, generated], dim=0).detach().float().cpu()
        image = (pair - pair.min()) / (pair.max() - pair.min()).clamp_min(1e-8)
        self.writer.add_image("mel/real_over_generated", image.flip(0).unsqueeze(0), step)

    def plot(self) -> None:
        """Redraw loss.png from metrics.csv (Agg backend: no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        if not rows:
            return
        steps = [int(r["step"]) for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for key in ("loss_mel", "loss_g", "loss_d"):
            axes[0 if key == "loss_mel" else 1].plot(steps, [float(r[key]) for r in rows], label=key)
        axes[2].plot(steps, [float(r["lr_g"]) for r in rows], label="lr_g")
        titles = ("mel L1 ×45", "generator / discriminator", "learning rate")
        for axis, title in zip(axes, titles, strict=True):
            axis.set_title(title)
            axis.set_xlabel("step")
            axis.legend()
            axis.grid(alpha=0.3)
        fig.tight_layout()
        try:
            with atomic_file(self.plot_path, suffix=".png") as temporary:
                fig.savefig(temporary, dpi=90)
        finally:
            plt.close(fig)

    def close(self) -> None:
        self.writer.close()


class NullLog:
    """What ranks other than 0 log to in a multi-process run: nothing (rank 0 writes for all)."""

    def log_step(self, *args, **kwargs) -> None: ...
    def log_mels(self, *args, **kwargs) -> None: ...
    def plot(self, *args, **kwargs) -> None: ...
    def close(self) -> None: ...
