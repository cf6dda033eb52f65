"""One run's settings, checked once before any work: `check_run(TrainOptions) -> RunSettings`.

Every way a run starts goes through `check_run`: `arvc train` and the web UI (through
`arvc.train.request.plan_training`, which first checks what only a request has: its flags, the run folder,
the data), `arvc compare`'s runs and the Python API (`arvc.train.loop.train` given `TrainOptions`). It
refuses a run that cannot go as asked (`SettingsError`, or the `CheckpointError` of a resume that changes a
fixed setting), loads the resume checkpoint (once: the loop continues from the same copy), and resolves
what the options leave open: the precision (`auto`: the device's safe choice; on resume the run's), the
optimizer's `Hyperparameters` (on resume the run's own), TF32 and the device. The loop is given the
`RunSettings` and only runs them: the run holds them (with the memory plan's choices in the config), and
every checkpoint keeps `RunSettings.saved()`, which the next `check_run` compares a resume against.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from arvc.config import PRECISIONS, RunConfig, optimizer_value_errors
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import DeviceChoice, resolve_device
from arvc.modelfile.read import check_pretrained
from arvc.optim.registry import eight_bit_optimizer_class
from arvc.train.checkpoint import check_resume_config, latest_checkpoint, load_checkpoint
from arvc.train.errors import SettingsError, TrainError
from arvc.train.optimizers import Hyperparameters, hyperparameters
from arvc.train.precision import AUTO, device_precision
from arvc.train.validation import check_select
from arvc.train.weights import averaging_conflict

__all__ = ["FLAG_NAMES", "RunSettings", "TrainOptions", "check_run", "resolve_resume"]

logger = logging.getLogger(__name__)

# How `arvc train` and the web UI name the optimizer values in their errors (the Python API: "lr =").
FLAG_NAMES = {"lr": "--lr", "betas": "--betas", "eps": "--eps", "weight_decay": "--weight-decay"}


@dataclass(frozen=True)
class TrainOptions:
    """What a run is asked to be; None means "the config's value" (or the checkpoint's, on resume)."""

    run_dir: Path
    data_dir: Path  # preprocessed data (arvc.data.prepare)
    config: RunConfig
    optimizer: str | None = None  # None: AdamW, or on resume the optimizer that wrote the checkpoint
    lr: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float | None = None
    use_8bit: bool | None = None
    optimizer_kwargs: dict[str, Any] | None = None
    # fp32, bf16 or fp16; auto (or None): the device's safe choice (arvc.train.precision), on resume the run's
    precision: str | None = AUTO
    compile: bool = False
    resume: Path | None = None  # a run directory (newest checkpoint) or one checkpoint file
    pretrained_g: Path | None = None  # RVC or arvc generator to start from (fine-tuning)
    pretrained_d: Path | None = None
    max_steps: int | None = None  # stop early (tests, quick looks); a checkpoint is still written
    # auto (CUDA when available, else CPU), cpu, cuda or cuda:N (arvc.device); under torchrun each rank
    # takes the GPU of its LOCAL_RANK
    device: str = AUTO_DEVICE
    max_bad_steps: int = 20  # consecutive non-finite steps before training stops
    zero: bool = False  # shard optimizer state over the ranks (ZeroRedundancyOptimizer)
    auto_batch_size: bool = False  # a new run picks the largest batch that fits (config's otherwise)
    # Set from another thread (the web UI's Stop): the same graceful stop as Ctrl-C, at a step boundary.
    stop: threading.Event | None = None


@dataclass(frozen=True)
class RunSettings:
    """A run's settings as checked and resolved by `check_run`: what the loop runs, unchanged."""

    options: TrainOptions  # as asked, with `precision` resolved (never auto)
    device: DeviceChoice  # what `options.device` means on this machine (each rank then takes its GPU)
    hp: Hyperparameters  # the optimizers' settings (on resume the run's own, --lr applied)
    tf32: bool  # TF32 matmuls (auto precision on Ampere and newer; on resume the run's)
    resume_from: Path | None = None  # the checkpoint a resume continues from
    checkpoint: dict | None = field(default=None, repr=False, compare=False)  # loaded once, here
    # How the open settings were resolved, (logger name, level, message): logged by the run when it starts
    # (rank 0; in the web UI's job thread, so its log shows them), not by the check before it.
    notes: tuple[tuple[str, int, str], ...] = ()

    @property
    def config(self) -> RunConfig:
        return self.options.config

    @property
    def precision(self) -> str:
        return self.options.precision

    def saved(self) -> dict[str, Any]:
        """What every checkpoint keeps of these settings, as top-level keys (the format of arvc's first
        checkpoints; the optimizer's `Hyperparameters` go in its own record beside its state). `check_run`
        reads them back on resume: the one place that compares a resume with the run."""
        return {"config": self.config.to_dict(), "precision": self.precision, "tf32": self.tf32}

    def with_stop(self, stop: threading.Event | None) -> RunSettings:
        """The same run, stopped gracefully when `stop` is set (the web UI's Stop button)."""
        return replace(self, options=replace(self.options, stop=stop))


def resolve_resume(resume: Path) -> Path:
    """The checkpoint `--resume` means: a run directory's newest one, or the file given."""
    resume = Path(resume)
    if resume.is_dir():
        found = latest_checkpoint(resume)
        if found is None:
            raise TrainError(f"--resume {resume}: no checkpoint in {resume / 'checkpoints'}")
        return found
    return resume


def check_run(
    opts: TrainOptions,
    *,
    checkpoint: dict | None = None,
    resume_from: Path | None = None,
    flags: bool = False,
    processes: int | None = None,
) -> RunSettings:
    """Check `opts` against each other and the resume checkpoint, before any work; resolve what they leave
    open. Raises SettingsError (a TrainError and a ValueError), CheckpointError, PretrainedError (a
    --pretrained-g/-d file that cannot be read or does not fit; a ValueError), or ImportError (a missing
    optional package) with a message for the user; nothing is written.

    `checkpoint`/`resume_from`: the resume checkpoint when the caller has loaded it already (it is loaded
    here otherwise). `flags`: the request came as flags (`arvc train`, the web UI), so values are named as
    flags and lr 0 is refused; from Python lr 0 (frozen weights, as torch.optim allows) is not.
    `processes`: how many processes will train (default: torchrun's WORLD_SIZE, else 1).
    """
    lr = None if opts.lr == 0 and not flags else opts.lr
    bad = optimizer_value_errors(
        lr=lr,
        betas=opts.betas,
        eps=opts.eps,
        weight_decay=opts.weight_decay,
        names=FLAG_NAMES if flags else None,
    )
    if bad:
        raise SettingsError("; ".join(bad))
    asked = AUTO if opts.precision is None else opts.precision
    if asked != AUTO and asked not in PRECISIONS:
        raise SettingsError(f"unknown precision {asked!r}; valid: {AUTO}, {', '.join(PRECISIONS)}")
    try:
        choice = resolve_device(opts.device)
    except ValueError as error:
        raise SettingsError(str(error)) from error
    device = choice.device
    if opts.resume is not None and checkpoint is None:
        resume_from = resolve_resume(opts.resume)
        checkpoint = load_checkpoint(resume_from)
    notes: list[tuple[str, int, str]] = []
    precision, tf32 = _precision(asked, device, checkpoint, resume_from, notes)
    opts = replace(opts, precision=precision)
    if checkpoint is not None and (opts.pretrained_g or opts.pretrained_d):
        raise SettingsError(
            "--pretrained-g/--pretrained-d start a new run; a resumed run continues from its checkpoint"
        )
    cfg = opts.config
    cfg.validate()
    if checkpoint is None:  # a missing, damaged or code-carrying file, or one of another size
        check_pretrained(cfg, opts.pretrained_g, opts.pretrained_d)
    check_select(cfg.train.select)  # an unknown metric, or PESQ/STOI without arvc[score]
    if checkpoint is not None:
        check_resume_config(checkpoint.get("config", {}), cfg, resume_from)
    hp = hyperparameters(opts, cfg, checkpoint["optim_g"] if checkpoint else None, notes)
    if opts.zero and hp.use_8bit:
        raise SettingsError("--zero and --use-8bit cannot be combined (8-bit state is already 4x smaller)")
    if hp.use_8bit:
        eight_bit_optimizer_class()  # bitsandbytes missing: ImportError naming arvc[bnb]
    conflict = averaging_conflict(hp.optimizer, cfg.train.ema, hp.use_8bit)
    if conflict:
        raise SettingsError(conflict)
    processes = processes if processes is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if opts.auto_batch_size and checkpoint is None and processes > 1:
        raise SettingsError("--batch-size auto fits one process; with several, pass --batch-size N")
    return RunSettings(opts, choice, hp, tf32, resume_from, checkpoint, tuple(notes))


def _precision(asked: str, device, checkpoint: dict | None, resume_from: Path | None, notes: list):
    """(precision, tf32): as asked; `auto`, the device's safe choice; on resume, the run's own. What
    `auto` chose, or that a resume keeps the run's own, goes to `notes`."""
    if checkpoint is not None:
        recorded = checkpoint.get("precision", "fp32")
        if asked not in (AUTO, recorded):
            raise SettingsError(f"{resume_from} was trained in {recorded}; resume it in the same precision")
        here = device_precision(device)
        if asked == AUTO and here.precision != recorded:
            # e.g. a bf16 run from a GPU continued on a CPU: it stays bf16 (slower there, but the same run)
            notes.append((logger.name, logging.WARNING,
                f"precision {recorded}: the run's own, which a resume keeps (auto would choose "
                f"{here.precision} for a new run on {device}: {here.reason}); to train in {here.precision}, "
                "start a new run from its weights with --pretrained-g/--pretrained-d",
            ))  # fmt: skip
        return recorded, bool(checkpoint.get("tf32", False))
    if asked != AUTO:
        return asked, False
    choice = device_precision(device)
    notes.append((logger.name, logging.INFO, f"precision {choice.precision} (auto): {choice.reason}"))
    return choice.precision, choice.tf32
