"""What a run leaves for its user to look at: metrics.csv, validation.csv, TensorBoard scalars, mel figures
and audio, listening samples and loss.png."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from arvc._files import WriteError, atomic_file
from arvc.audio.score import SCORE_NAMES
from arvc.data.outputs import RunFolder

__all__ = [
    "METRIC_FIELDS",
    "SCORE_FIELDS",
    "VALIDATION_FIELDS",
    "NullLog",
    "RunLog",
    "read_metrics",
    "read_validation",
]

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
# The held-out scores (arvc.audio.score.SCORE_NAMES as val_NAME; empty where not computed that time) and the
# seconds they took came after val_stft in 2026-12; "best" stays last (a torn line is one without it), and a
# file with the older columns is read as it is and rewritten with these on resume.
SCORE_FIELDS = (*(f"val_{name}" for name in SCORE_NAMES), "score_s")
VALIDATION_FIELDS = ("epoch", "step", "val_mel_l1", "val_stft", *SCORE_FIELDS, "best")


def _read_csv(path: Path, last_field: str) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:  # a torn last line has no last field
        return [row for row in csv.DictReader(handle) if row.get(last_field)]


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of `run_dir/metrics.csv` as dicts of strings ([] if there is none); a torn last line
    (a run killed mid-write) is dropped."""
    return _read_csv(RunFolder(run_dir).metrics, "seconds")


def read_validation(run_dir: Path) -> list[dict]:
    """The rows of `run_dir/validation.csv` (one per held-out evaluation), as read_metrics reads its file."""
    return _read_csv(RunFolder(run_dir).validation, "best")


def _append_row(path: Path, fields: tuple[str, ...], row: dict) -> None:
    try:  # a torn last line (the disk filled mid-row) is dropped when read
        with path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fields).writerow({k: row.get(k, "") for k in fields})
    except OSError as error:
        raise WriteError(path, error) from error


class RunLog:
    """Appends one metrics row per logged step, mirrors it to TensorBoard, redraws loss.png per epoch.

    On resume, rows newer than the checkpoint are dropped first, so metrics.csv never repeats a step.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None, validation: bool = False) -> None:
        self.run_dir = Path(run_dir)
        folder = RunFolder(run_dir)
        self.csv_path, self.validation_path, self.plot_path = (
            folder.metrics,
            folder.validation,
            folder.loss_plot,
        )
        files = [(self.csv_path, METRIC_FIELDS, self.rows)]
        if validation:  # validation.csv: one row per held-out evaluation
            files.append((self.validation_path, VALIDATION_FIELDS, lambda: read_validation(self.run_dir)))
        for path, fields, rows in files:
            kept = [] if resume_step is None else [row for row in rows() if int(row["step"]) <= resume_step]
            self._rewrite(path, fields, kept)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder.tensorboard), purge_step=resume_step)

    def rows(self) -> list[dict]:
        return read_metrics(self.run_dir)

    @staticmethod
    def _rewrite(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
        with atomic_file(path) as temporary, temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def log_step(self, row: dict) -> None:
        _append_row(self.csv_path, METRIC_FIELDS, row)
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("epoch", "step", "skipped") and value is not None:
                group = "lr" if key.startswith("lr") else "grad_norm" if key.startswith("grad") else "loss"
                self.writer.add_scalar(f"{group}/{key}", float(value), step)

    def log_validation(self, record: dict, evaluation, best: bool) -> None:
        """One held-out evaluation: a validation.csv row, TensorBoard scalars and the mel figure of the
        first held-out piece (real above generated)."""
        row = {
            "epoch": record["epoch"],
            "step": record["step"],
            "val_mel_l1": f"{record['mel_l1']:.6g}",
            "val_stft": f"{record['stft']:.6g}",
            **{f"val_{k}": f"{v:.6g}" for k, v in evaluation.scores.items()},
            "score_s": f"{evaluation.score_s:.3f}" if evaluation.scores else "",
            "best": "yes" if best else "no",
        }
        _append_row(self.validation_path, VALIDATION_FIELDS, row)
        self.writer.add_scalar("validation/mel_l1", record["mel_l1"], record["step"])
        self.writer.add_scalar("validation/stft", record["stft"], record["step"])
        for key, value in evaluation.scores.items():
            if value == value:  # nan: nothing to measure this time (no frame voiced in both, ...)
                self.writer.add_scalar(f"validation/{key}", value, record["step"])
        if evaluation.mel_real is not None:
            self.log_mel_figure("mel/heldout", record["step"], evaluation.mel_real, evaluation.mel_fake)

    def log_mel_figure(self, tag: str, step: int, real: torch.Tensor, generated: torch.Tensor) -> None:
        """Log-mel spectrograms, real above generated, one pixel per frame and band, on a shared colour
        scale, as a TensorBoard figure (axes in frames and mel bands)."""
        plt = _pyplot()
        real, generated = real.detach().float().cpu().numpy(), generated.detach().float().cpu().numpy()
        low, high = float(min(real.min(), generated.min())), float(max(real.max(), generated.max()))
        bands, frames = real.shape
        fig, axes = plt.subplots(2, 1, figsize=(max(6.0, frames / 50), max(4.0, 2 * bands / 40)), sharex=True)
        for axis, image, title in zip(axes, (real, generated), ("recording", "generated"), strict=True):
            axis.imshow(image, origin="lower", aspect="auto", interpolation="nearest", vmin=low, vmax=high)
            axis.set_title(title)
            axis.set_ylabel("mel band")
        axes[1].set_xlabel("frame")
        fig.tight_layout()
        self.writer.add_figure(tag, fig, step)  # closes the figure

    def log_samples(
        self, folder: Path, names, waves, sample_rate: int, step: int, once: bool = False
    ) -> None:
        """Write waves as NAME.wav under `folder` and as TensorBoard audio (`once`: skip if written)."""
        from arvc.audio.io import write_wav

        if once and folder.is_dir():
            return
        folder.mkdir(parents=True, exist_ok=True)
        for name, wave in zip(names, waves, strict=True):
            wave = wave.detach().float().cpu().reshape(-1)
            write_wav(folder / f"{name}.wav", wave.numpy(), sample_rate)
            tag = f"samples/{name}/{'recording' if once else 'generated'}"
            self.writer.add_audio(tag, wave.clamp(-1, 1)[None], step, sample_rate=sample_rate)

    def plot(self) -> None:
        """Redraw loss.png from metrics.csv (Agg backend: no display needed)."""
        plt = _pyplot()
        rows, validation = self.rows(), read_validation(self.run_dir)
        if not rows:
            return
        steps = [int(r["step"]) for r in rows]
        fig, axes = plt.subplots(1, 4 if validation else 3, figsize=(17 if validation else 13, 3.6))
        for key in ("loss_mel", "loss_g", "loss_d"):
            axes[0 if key == "loss_mel" else 1].plot(steps, [float(r[key]) for r in rows], label=key)
        axes[2].plot(steps, [float(r["lr_g"]) for r in rows], label="lr_g")
        titles = ("training mel L1 ×45", "generator / discriminator", "learning rate")
        if validation:
            x = [int(r["step"]) for r in validation]
            axes[3].plot(x, [float(r["val_mel_l1"]) for r in validation], marker=".", label="held-out mel L1")
            best = [r for r in validation if r["best"] == "yes"]
            if best:
                low = min(best, key=lambda r: float(r["val_mel_l1"]))
                axes[3].scatter([int(low["step"])], [float(low["val_mel_l1"])], color="red", zorder=3,
                                label=f"best (epoch {low['epoch']})")  # fmt: skip
            titles += ("held-out validation",)
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


class NullLog:
    """What ranks other than 0 log to in a multi-process run: nothing (rank 0 writes for all)."""

    def log_step(self, *args, **kwargs) -> None: ...
    def log_validation(self, *args, **kwargs) -> None: ...
    def log_mel_figure(self, *args, **kwargs) -> None: ...
    def log_samples(self, *args, **kwargs) -> None: ...
    def plot(self, *args, **kwargs) -> None: ...
    def close(self) -> None: ...
