"""The training loop: config → data → models → optimizers → for each epoch: D step, G step, log, save.

It runs the settings `arvc.train.settings.check_run` checked and resolved before any work (`train` calls
it first when given `TrainOptions`); it checks nothing a user asked for itself. It reads top to bottom like
nanoGPT's train.py. Optimizers come only from the registry
(`arvc.optim.build_optimizer`); the lr of each epoch is a pure function of the epoch and the run's plan
(`arvc.optim.schedulers.Schedule`, "auto" = the registry's pairing), set once per epoch as RVC steps its
scheduler. Everything needed to continue a run bit for bit is in its checkpoints.

Under torchrun each process runs this same loop on its share of every global batch (`distributed.py`
holds what differs: DDP wrapping, ZeRO, collectives, rank 0 alone writing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from arvc._files import WriteError, write_text
from arvc.audio.io import highpass
from arvc.config import RunConfig, apply_overrides
from arvc.data.dataset import VoiceDataset, make_loader
from arvc.data.outputs import RunFolder
from arvc.data.prepare import recorded_features
from arvc.data.preprocess import FILELIST
from arvc.data.split import Split, split_pieces, write_split
from arvc.device import DeviceChoice, current_gpu
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.model.checkpointing import set_checkpointing
from arvc.modelfile.export import export_generator, name_some, non_finite_tensors
from arvc.modelfile.read import load_pretrained_discriminator, load_pretrained_generator
from arvc.optim.denormals import flush_denormals
from arvc.optim.schedulers import Schedule
from arvc.train.callbacks import Callbacks
from arvc.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    abandon_later_checkpoints,
    atomic_save,
    best_record,
    checkpoint_path,
    latest_checkpoint,
    optimizer_record,
    prune_checkpoints,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from arvc.train.distributed import Ranks, process_group
from arvc.train.errors import SaveInterrupted, TrainError
from arvc.train.faults import EARLY_STOP, MAX_STEPS, STOP_REQUEST, StopOnSignal, exit_status, interrupted
from arvc.train.logs import NullLog, RunLog
from arvc.train.memory import (
    GIB,
    MAX_AUTO_BATCH,
    estimate_memory,
    free_memory,
    plan_memory,
    probe_activations,
)
from arvc.train.optimizers import (
    DEFAULT_LR,
    Hyperparameters,
    bf16_weights,
    build_for_role,
    plan_schedule,
    restore_optimizer,
    run_state_bytes_per_param,
)
from arvc.train.precision import tf32_matmuls
from arvc.train.runlock import run_lock
from arvc.train.settings import RunSettings, TrainOptions, check_run
from arvc.train.step import GanStep, autocast
from arvc.train.validation import Evaluation, Validator, describe_scores, improves, selected
from arvc.train.weights import (
    AVERAGED,
    WeightAverage,
    averaged_kind,
    averaged_record,
    evaluation_weights,
    set_train_mode,
)

__all__ = [
    "Callbacks",
    "DEFAULT_LR",
    "SAMPLE_CLIPS",
    "STOP_REQUEST",
    "TrainError",
    "RunSettings",
    "TrainOptions",
    "TrainResult",
    "check_run",
    "train",
]

logger = logging.getLogger(__name__)

SAMPLE_CLIPS = 4  # held-out pieces converted into listening samples at every save


@dataclass
class TrainResult:
    epochs_done: int
    steps_done: int
    last_checkpoint: Path | None
    exports: dict[str, Path]
    final_losses: dict[str, float]
    # "SIGINT"/"SIGTERM"/STOP_REQUEST (checkpoint saved, no export), "max_steps" or "early_stop"
    # (arvc.train.faults says what each means)
    stopped_by: str | None = None
    best: dict | None = None  # the best held-out evaluation: epoch, step, mel_l1, stft, checkpoint
    last_validation: dict | None = None  # the last one
    samples_dir: Path | None = None  # runs/RUN/samples (held-out originals and conversions)

    @property
    def interrupted(self) -> bool:
        """Stopped by a signal or a stop request: a checkpoint was saved, nothing exported; resume goes on."""
        return interrupted(self.stopped_by)

    def summary(self, where: Path | None = None) -> str:
        """What was trained (in `where`) and, if the run stopped early, why: the line a user reads first."""
        text = f"trained {self.epochs_done} epochs ({self.steps_done} steps)"
        text += f" in {where}" if where is not None else ""
        if self.stopped_by == EARLY_STOP:
            text += ", stopped early (held-out mel L1 stopped improving)"
        return text


# ---------------------------------------------------------------------------------------------------------
def train(run: TrainOptions | RunSettings, callbacks: Callbacks | None = None) -> TrainResult:
    """Train (or continue training) a voice model; returns where the results are.

    `run`: the settings `arvc.train.settings.check_run` returned (the CLI, the web UI), or `TrainOptions`,
    which are checked by it here first, before any work (the Python API, compare's runs).

    Started by torchrun (RANK, WORLD_SIZE, ... set), each process trains its share of every global batch
    with DistributedDataParallel and rank 0 alone writes; see docs/distributed.md.
    """
    settings = check_run(run) if isinstance(run, TrainOptions) else run
    asked = settings.device
    with (
        process_group(str(asked.device)) as ranks,
        run_lock(settings.options.run_dir),  # one trainer per run folder
        _current_gpu(asked.device, ranks),
    ):
        callbacks = callbacks if callbacks is not None and ranks.is_main else Callbacks()
        return _train(settings, callbacks, ranks, _training_device(asked, ranks))


def _train(settings: RunSettings, callbacks: Callbacks, ranks: Ranks, device: DeviceChoice) -> TrainResult:
    settings = replace(settings, options=replace(settings.options, device=device.name), device=device)
    opts, resume_from, checkpoint = settings.options, settings.resume_from, settings.checkpoint
    if ranks.is_main:  # what check_run resolved: the precision, the optimizer's values
        for name, level, message in settings.notes:
            logging.getLogger(name).log(level, "%s", message)
    if opts.zero and not ranks.distributed:
        logger.warning("--zero shards optimizer state over processes; with one process it does nothing")
    run = _build_run(settings, ranks)
    opts = run.settings.options  # the run's own from here on (its config with the memory plan's choices)
    callbacks.on_optimizers(run.optim_g, run.optim_d)
    callbacks.on_evaluation_weights(lambda: _evaluated(run))
    progress = _resume(run, checkpoint, resume_from) if checkpoint is not None else _Progress()
    _prepare_folder_and_step(run, progress, resume_from, compile=opts.compile)
    progress.last_checkpoint = resume_from

    cfg = run.cfg
    callbacks.on_start(cfg.train.epochs, run.steps_per_epoch, progress.epochs_done + 1)
    with StopOnSignal() as stop_signal, flush_denormals(run.device.type == "cpu"), tf32_matmuls(run.tf32):
        for epoch in range(progress.epochs_done + 1, cfg.train.epochs + 1):
            result = _one_epoch(run, progress, epoch, opts, callbacks, stop_signal)
            if progress.stopped_by and progress.batches_done < run.steps_per_epoch:
                # mid-epoch: the checkpoint says how far into this epoch, resume continues it
                progress.last_checkpoint = _save(run, progress, epoch - 1, progress.batches_done, stop_signal)
                break
            progress.batches_done, progress.epochs_done = 0, epoch
            evaluation = _validate(run, progress, epoch)  # held-out scores, best model, early stop
            if run.validator is None:  # no held-out piece: the mel figure of the last training slice
                run.log.log_mel_figure("mel/train_slice", progress.step, result.mel_real, result.mel_fake)
            run.log.plot()
            callbacks.on_epoch(epoch, progress.losses)
            scheduled = epoch % cfg.train.save_every == 0 or epoch == cfg.train.epochs or progress.stopped_by
            new_best = progress.best is not None and progress.best["epoch"] == epoch
            if scheduled or new_best:  # the best model's checkpoint is always written (and never pruned)
                progress.last_checkpoint = _save(run, progress, epoch, 0, stop_signal)
            if new_best:
                _export_best(run, progress)
            if scheduled:
                _write_samples(run, progress, epoch, evaluation)
            if progress.stopped_by:
                break
    run.log.plot()
    run.log.close()
    return _finish(run, progress)


# --- the phases of a run, in the order _train calls them ---------------------------------------------------
def _current_gpu(device: torch.device, ranks: Ranks):
    """One process on `cuda:N`: GPU N is torch's current device for the run (arvc.device.current_gpu).
    Under torchrun each rank has already made its own GPU current."""
    return contextlib.nullcontext() if ranks.distributed else current_gpu(device)


def _training_device(asked: DeviceChoice, ranks: Ranks) -> DeviceChoice:
    """The device this rank trains on (with its index), logged with why it was chosen."""
    choice = replace(asked, device=ranks.train_device(asked.device))
    choice = replace(choice, device=torch.device(choice.name))  # "cuda" -> the current GPU, cuda:N
    if ranks.is_main:
        processes = f"; {ranks.world_size} processes" if ranks.distributed else ""
        if processes and choice.device.type == "cuda":
            processes += ", each on the GPU of its local rank"
        logger.info("device: %s%s", choice.describe(), processes)
    return choice


@dataclass
class _Run:
    """What a run is made of: built by `_build_run` (train step and log by `_prepare_folder_and_step`),
    then fixed. Its settings are the checked ones on this rank's device, with the memory plan's choices in
    the config (activation checkpointing; with --batch-size auto, the batch): what the checkpoint saves."""

    settings: RunSettings
    ranks: Ranks
    loader: Any
    steps_per_epoch: int
    net_g: torch.nn.Module
    net_d: torch.nn.Module
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer
    schedule: Schedule  # the lr of every epoch, for both optimizers
    scaler: torch.amp.GradScaler
    split: Split  # the held-out validation pieces (none: validation off)
    validator: Validator | None
    train_step: GanStep | None = None  # set by _prepare_folder_and_step (after a resume restored the RNG)
    log: RunLog | NullLog = field(default_factory=NullLog)
    features: str | None = None  # what the data holds (mel, hubert), recorded in the exports
    average: WeightAverage | None = None  # --ema: the EMA of G's weights (arvc.train.weights)

    @property
    def device(self) -> torch.device:
        """This rank's device, with its index (cuda:0); recorded in the checkpoint with device_name."""
        return self.settings.device.device

    @property
    def device_name(self) -> str:
        """The GPU's model ("" on the CPU), recorded in the checkpoint beside `device`."""
        return self.settings.device.model

    @property
    def cfg(self) -> RunConfig:
        return self.settings.config

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def hp(self) -> Hyperparameters:
        return self.settings.hp

    @property
    def tf32(self) -> bool:
        return self.settings.tf32

    @property
    def run_dir(self) -> Path:
        return Path(self.settings.options.run_dir)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)


@dataclass
class _Progress:
    """How far the run is; the only state the loop changes as it goes."""

    epochs_done: int = 0
    batches_done: int = 0  # batches of the epoch in progress
    step: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    bad_steps: int = 0  # consecutive steps with a skipped update
    stopped_by: str | None = None
    last_checkpoint: Path | None = None
    best: dict | None = None  # the best evaluation so far: epoch, step, mel_l1, stft, checkpoint (a name)
    # early stopping: the held-out mel L1 a new evaluation must beat by more than min_delta (the one of the
    # last such gain), and the evaluations since that gain (checkpoint keys "reference" and "stale")
    mel_l1_to_beat: float | None = None
    evaluations_without_gain: int = 0
    last_validation: dict | None = None


def _build_run(settings: RunSettings, ranks: Ranks) -> _Run:
    """Data (this rank's share of every global batch), models, optimizers, schedules, loss scaler;
    `settings` on this rank's device."""
    opts, hp, checkpoint = settings.options, settings.hp, settings.checkpoint
    cfg, precision, device = opts.config, opts.precision, settings.device.device
    split = _split(opts, checkpoint)
    dataset = VoiceDataset(opts.data_dir, cfg.data, lines=split.train)

    torch.manual_seed(cfg.train.seed)
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    if checkpoint is None:  # fine-tuning starts from pretrained weights; a resume has its own
        if opts.pretrained_g is not None:
            load_pretrained_generator(net_g, opts.pretrained_g, cfg)
        if opts.pretrained_d is not None:
            load_pretrained_discriminator(net_d, opts.pretrained_d, cfg)
    net_g, net_d = net_g.to(device), net_d.to(device)
    if bf16_weights(precision, hp):  # the optimizer's bf16 mode keeps the weights themselves in bf16
        net_g.to(torch.bfloat16)
        net_d.to(torch.bfloat16)

    # The memory a step needs (and with --batch-size auto, the batch that fits), then the data in batches.
    zero = opts.zero and ranks.distributed
    cfg = _fit_memory(opts, cfg, hp, device, net_g, net_d, dataset, checkpoint, ranks, zero)
    set_checkpointing(net_g, net_d, cfg.train.checkpointing == "on")
    # A step's batch is `accumulate` micro-batches (the step cuts it, arvc.train.step): one step = one batch.
    if cfg.train.step_batch > len(dataset) and cfg.train.accumulate > 1:
        raise TrainError(
            f"batch size {cfg.train.batch_size} x accumulate {cfg.train.accumulate} = {cfg.train.step_batch} "
            f"items per step is more than the dataset's {len(dataset)} training pieces; lower --accumulate "
            "or --batch-size, or add more audio"
        )
    loader = make_loader(
        dataset, cfg.train.step_batch, seed=cfg.train.seed, drop_last=True, **ranks.sharding()
    )

    # Optimizers from the registry (--zero: each rank steps a shard); the lr plan (new, or the checkpoint's).
    optim_g = build_for_role(net_g.parameters(), hp, "generator", cfg.train.seed, ranks if zero else None)
    optim_d = build_for_role(net_d.parameters(), hp, "discriminator", cfg.train.seed, ranks if zero else None)
    set_train_mode(optim_g, optim_d)  # schedule-free: the weights train at y (arvc.train.weights)
    schedule = plan_schedule(cfg, hp, checkpoint)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # bf16 needs no loss scaling
    validator = Validator(cfg, opts.data_dir, split.held, cfg.train.seed, device) if split.held else None
    average = WeightAverage(net_g, cfg.train.ema) if cfg.train.ema is not None else None
    settings = replace(settings, options=replace(opts, config=cfg))  # with the memory plan's choices
    return _Run(
        settings, ranks, loader, len(loader), net_g, net_d, optim_g, optim_d, schedule, scaler, split,
        validator, features=recorded_features(opts.data_dir), average=average,
    )  # fmt: skip


def _fit_memory(opts, cfg, hp, device, net_g, net_d, dataset, checkpoint, ranks, zero) -> RunConfig:
    """Log what a step will need beside the free memory and decide how it fits (`memory.plan_memory`):
    activation checkpointing (`auto`: on where the batch does not fit otherwise) and, with `--batch-size
    auto` (a new run), the micro-batch and the accumulation. Returns the config with the choices in it."""
    frames = max(dataset.lengths)  # the longest training piece
    activations = probe_activations(cfg, net_g, net_d, frames, lambda: autocast(opts.precision, device.type))
    state = run_state_bytes_per_param(hp, next(net_g.parameters()).dtype) / (ranks.world_size if zero else 1)
    free, what = free_memory(device)
    ema = cfg.train.ema is not None
    fixed = estimate_memory(net_g, net_d, state, 0, 0, ema=ema).total
    t = cfg.train
    auto = opts.auto_batch_size and checkpoint is None
    if opts.auto_batch_size and checkpoint is not None:
        logger.info("--batch-size auto: a resumed run keeps its batch size %d", t.batch_size)
    assert not (auto and ranks.distributed), "check_run refuses --batch-size auto with several processes"
    if auto and free is None:
        raise TrainError(
            f"--batch-size auto: the free {what} of {device} cannot be read; pass --batch-size N"
        )
    plan = plan_memory(
        fixed, activations, free, what,
        batch=None if auto else t.batch_size // ranks.world_size, accumulate=t.accumulate,
        mode=t.checkpointing, target=t.step_batch, limit=min(MAX_AUTO_BATCH, len(dataset)),
    )  # fmt: skip
    if plan.batch_size == 0:
        smallest = t.checkpointing != "off"
        need = estimate_memory(net_g, net_d, state, activations.per_item(smallest), 1, 1, smallest, ema=ema)
        raise TrainError(
            f"not even batch 1 fits: a step needs {need.describe()}, but only {free / GIB:.2f} GiB of "
            f"{what} is free; close other programs, use a smaller --config, or train on another device"
        )
    choices = {"train.checkpointing": "on" if plan.checkpointing else "off"}
    if auto:
        choices.update({"train.batch_size": plan.batch_size, "train.accumulate": plan.accumulate})
        accumulated = f", accumulate {plan.accumulate}" if plan.accumulate > 1 else ""
        logger.info("batch size %d%s (auto: %s)", plan.batch_size, accumulated, plan.reason)
    elif plan.checkpointing and t.checkpointing == "auto":
        logger.info("%s", plan.reason)
    cfg = apply_overrides(cfg, choices)
    t = cfg.train
    per_item = activations.per_item(plan.checkpointing)
    estimate = estimate_memory(
        net_g, net_d, state, per_item, t.batch_size // ranks.world_size, t.accumulate, plan.checkpointing,
        ema=ema,
    )  # fmt: skip
    if ranks.is_main:
        room = f"{free / GIB:.2f} GiB {what}" if free is not None else f"{what} unknown"
        logger.info("memory per step: %s; %s", estimate.describe(), room)
        if free is not None and estimate.total > free:
            logger.warning(
                "batch %d likely does not fit: it needs more than the %s (%.2f GiB) and may spill into "
                "shared memory (several times slower) or run out; try --batch-size auto, or a smaller "
                "--batch-size with --accumulate N (the same update: N micro-batches per step)",
                t.batch_size, what, free / GIB,
            )  # fmt: skip
    return cfg


def _split(opts: TrainOptions, checkpoint: dict | None) -> Split:
    """The validation split: made for a new run (seeded), the checkpoint's own on resume."""
    cfg = opts.config
    filelist = Path(opts.data_dir) / FILELIST
    try:
        lines = [line for line in filelist.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise TrainError(
            f"cannot read the training data's {filelist} ({error}); preprocess it first"
        ) from error
    if checkpoint is None:
        split = split_pieces(lines, cfg.train.val_fraction, cfg.train.seed)
    elif "validation" not in checkpoint:  # written before arvc validated: the run goes on as it was
        logger.warning("%s was trained without held-out validation; it continues without it", opts.resume)
        return Split(lines, [], "no validation (the run started without it)", 0.0, cfg.train.seed)
    else:
        record = checkpoint["validation"]
        held = set(record["held"])
        split = Split([line for line in lines if line not in held], list(record["held"]), record["how"],
                      cfg.train.val_fraction, cfg.train.seed)  # fmt: skip
    if split.held:
        logger.info("%s", split.how)
    return split


def _resume(run: _Run, checkpoint: dict, resume_from: Path) -> _Progress:
    """Load weights, optimizer and scaler states and RNG: the run continues as if never stopped."""
    run.net_g.load_state_dict(checkpoint["generator"])
    run.net_d.load_state_dict(checkpoint["discriminator"])
    progress = _Progress(
        epochs_done=checkpoint["epoch"],
        batches_done=checkpoint.get("batch_in_epoch", 0),
        step=checkpoint["step"],
    )
    for name, optimizer, key, net in (
        ("generator", run.optim_g, "optim_g", run.net_g),
        ("discriminator", run.optim_d, "optim_d", run.net_d),
    ):
        restore_optimizer(name, optimizer, checkpoint[key], run.hp, net.parameters())
    if run.average is not None:  # (its decay is train.ema, which a resume keeps)
        run.average.load_state_dict(checkpoint[AVERAGED])
    run.scaler.load_state_dict(checkpoint["scaler"])
    record = checkpoint.get("validation") or {}
    progress.best, progress.mel_l1_to_beat = record.get("best"), record.get("reference")
    progress.evaluations_without_gain, progress.last_validation = record.get("stale", 0), record.get("last")
    if not run.ranks.distributed:
        set_rng_state(checkpoint["rng"])
    written_on = checkpoint.get("device")  # absent in checkpoints of older arvc versions
    moved = f" (written on {written_on}, continues on {run.device})" if written_on != str(run.device) else ""
    logger.info(
        "resumed %s: %d epochs + %d batches done, step %d%s",
        resume_from,
        progress.epochs_done,
        progress.batches_done,
        progress.step,
        moved if written_on else "",
    )
    return progress


def _prepare_folder_and_step(run: _Run, progress: _Progress, resume_from: Path | None, compile: bool) -> None:
    """Seed the ranks, prepare the run folder and its logs, wrap the models and make the train step."""
    cfg, ranks = run.cfg, run.ranks
    if ranks.distributed:
        ranks.seed(cfg.train.seed, progress.step)  # each rank's own RNG; training noise is per item

    def prepare_run_dir() -> RunLog:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run.run_dir)
        if resume_from is not None:  # from an older checkpoint: the later ones are another continuation
            abandon_later_checkpoints(run.run_dir, resume_from, (progress.epochs_done, progress.step))
        write_text(run.folder.config, json.dumps(cfg.to_dict(), indent=2))
        if run.split.held:  # for the user to read; the checkpoint keeps it too
            write_split(run.split, run.folder.split)
        resume_step = progress.step if resume_from is not None else None
        return RunLog(run.run_dir, resume_step=resume_step, validation=run.validator is not None)

    run.log = ranks.on_main(prepare_run_dir, f"prepare {run.run_dir}") or NullLog()
    # DDP around the models that take gradients; G's phase calls D unwrapped (its parameters are frozen).
    g_forward, d_forward, d_frozen = ranks.wrap(run.net_g), ranks.wrap(run.net_d), run.net_d
    if compile:
        if run.device.type == "cpu":
            logger.warning(
                "--compile on a CPU: measured slower than eager here (v2-40k 1.33x, tiny 1.07x the eager "
                "step, after 3-4 minutes of compiling; docs/training.md) -- it is meant for GPUs"
            )
        g_forward, d_forward = torch.compile(g_forward), torch.compile(d_forward)
        d_frozen = torch.compile(run.net_d) if ranks.distributed else d_forward
    elif not ranks.distributed:
        d_frozen = d_forward
    run.train_step = GanStep(
        cfg=cfg,
        net_g=run.net_g,
        net_d=run.net_d,
        optim_g=run.optim_g,
        optim_d=run.optim_d,
        scaler=run.scaler,
        precision=run.precision,
        g_forward=g_forward,
        d_forward=d_forward,
        d_frozen=d_frozen,
        ranks=ranks,
    )


def _one_epoch(run: _Run, progress: _Progress, epoch: int, opts: TrainOptions, callbacks, stop_signal):
    """Train the (rest of the) epoch; returns the last step's result. Stops early when asked to."""
    cfg, optim_g, optim_d = run.cfg, run.optim_g, run.optim_d
    lr = run.schedule.lr(epoch - 1)  # epoch is 1-based, the schedule counts epochs done
    for group in (*optim_g.param_groups, *optim_d.param_groups):
        group["lr"] = lr
    run.net_g.train()
    run.net_d.train()
    run.loader.sampler.set_epoch(epoch, start=progress.batches_done * cfg.train.step_batch)
    result = None
    for batch in run.loader:
        started = time.perf_counter()
        result = run.train_step(batch.to(run.device), progress.step + 1)
        progress.step, progress.batches_done = progress.step + 1, progress.batches_done + 1
        progress.losses = losses = result.losses
        progress.bad_steps = progress.bad_steps + 1 if result.skipped else 0
        if run.average is not None and "generator" not in result.skipped:
            run.average.update(run.net_g)  # after each G step
        step = progress.step
        if result.skipped:
            reason = "non-finite loss or gradients"
            if run.scaler.is_enabled():  # usually the loss scale overflowing fp16; update() lowered it
                reason += f" (fp16 loss scale now {run.scaler.get_scale():g})"
            logger.warning(
                "step %d: %s, %s update skipped (%s)",
                step,
                reason,
                " and ".join(result.skipped),
                _short(losses),
            )
        lr_g = optim_g.param_groups[0]["lr"]
        if step % cfg.train.log_interval == 0 or step == 1:
            run.log.log_step(
                {
                    "epoch": epoch,
                    "step": step,
                    **losses,
                    "lr_g": lr_g,
                    "lr_d": optim_d.param_groups[0]["lr"],
                    "grad_norm_g": result.grad_norm_g,
                    "grad_norm_d": result.grad_norm_d,
                    "skipped": "+".join(result.skipped),
                    "seconds": round(time.perf_counter() - started, 4),
                }
            )
        if progress.bad_steps >= opts.max_bad_steps:
            raise TrainError(
                f"training diverged: {progress.bad_steps} steps in a row had non-finite losses or "
                f"gradients (last: {_short(losses)}). Nothing was saved after the last good checkpoint "
                f"({latest_checkpoint(run.run_dir)}); resume from it with a lower --lr."
            )
        callbacks.on_step(epoch, step, losses, lr_g)
        limit = MAX_STEPS if opts.max_steps is not None and step >= opts.max_steps else None
        asked = STOP_REQUEST if opts.stop is not None and opts.stop.is_set() else None
        progress.stopped_by = run.ranks.stop_reason(stop_signal.requested or asked or limit)  # all ranks
        if progress.stopped_by:
            break
    return result


def _validate(run: _Run, progress: _Progress, epoch: int) -> Evaluation | None:
    """Score the generator on the held-out pieces (when due); track the best and decide an early stop.

    The best is the best held-out `train.select` so far (mel L1 by default); early stopping counts
    evaluations since held-out mel L1 last improved by more than `min_delta`. Every rank evaluates the same
    weights on the same pieces, so they agree; rank 0 writes the log."""
    t = run.cfg.train
    if run.validator is None or (epoch % t.val_every and epoch != t.epochs):
        return None
    with _evaluated(run):
        evaluation = run.validator(run.net_g.parameters(), keep=SAMPLE_CLIPS, final=epoch == t.epochs)
    record = {"epoch": epoch, "step": progress.step, "mel_l1": evaluation.mel_l1, "stft": evaluation.stft}
    record.update(evaluation.scores)
    improved = evaluation.finite and improves(t.select, record, progress.best)
    if improved:
        name = checkpoint_path(run.run_dir, epoch, progress.step).name
        progress.best = {**record, "checkpoint": name}
    if evaluation.finite and (
        progress.mel_l1_to_beat is None or evaluation.mel_l1 < progress.mel_l1_to_beat - t.min_delta
    ):
        progress.mel_l1_to_beat, progress.evaluations_without_gain = evaluation.mel_l1, 0
    else:
        progress.evaluations_without_gain += 1
    progress.last_validation = record
    run.ranks.on_main(lambda: run.log.log_validation(record, evaluation, improved), "log validation")
    best = progress.best
    note = (
        " (best so far)"
        if improved
        else f" (best {t.select} {best[t.select]:.4g}, epoch {best['epoch']})"
        if best
        else ""
    )
    logger.info(
        "epoch %d/%d: held-out mel L1 %.4f, STFT %.4f%s%s",
        epoch,
        t.epochs,
        evaluation.mel_l1,
        evaluation.stft,
        describe_scores(evaluation.scores),
        note,
    )
    patience_spent = t.early_stop is not None and progress.evaluations_without_gain >= t.early_stop
    if run.ranks.stop_reason(EARLY_STOP if patience_spent else None) and progress.stopped_by is None:
        progress.stopped_by = EARLY_STOP
        logger.warning(
            "stopping early after epoch %d: held-out mel L1 has not improved by more than %g for %d "
            "evaluations (best %.4f at epoch %d)",
            epoch,
            t.min_delta,
            progress.evaluations_without_gain,
            progress.best["mel_l1"] if progress.best else float("nan"),
            progress.best["epoch"] if progress.best else 0,
        )
    return evaluation


def _evaluated(run: _Run):
    """`with _evaluated(run):` G holds the weights the run evaluates and exports (arvc.train.weights)."""
    return evaluation_weights(run.net_g, run.optim_g, run.average)


def _which_weights(run: _Run) -> str:
    """For an export's info: " (ema weights)" / " (schedule-free weights)", as `arvc export` says it."""
    kind = averaged_kind(run.optim_g, run.average)
    return f" ({kind} weights)" if kind else ""


def _export_best(run: _Run, progress: _Progress) -> None:
    """Export the generator as it is now (the best so far) to export/best/, with best.json saying which."""
    best = progress.best
    folder = run.folder.best_export

    def export() -> None:
        criterion = selected(run.cfg.train.select, best)
        info = f"arvc {run.hp.optimizer} epoch {best['epoch']}{_which_weights(run)}"
        info += f" (best held-out {criterion})"
        export_generator(run.net_g, run.cfg, folder, info=info, explain=False, features=run.features)
        write_text(best_record(run.run_dir), json.dumps(best, indent=2))

    with _evaluated(run):  # on every rank (--zero gathers x from every shard); rank 0 writes
        run.ranks.on_main(export, "export the best model")


def listening_waves(waves: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
    """An evaluation's conversions as the listening samples hold them: as `arvc infer` gives them, without
    the generator's DC offset (see arvc.infer.convert)."""
    return [
        torch.from_numpy(highpass(w.detach().float().cpu().reshape(-1).numpy(), sample_rate, settle=True))
        for w in waves
    ]


def _write_samples(run: _Run, progress: _Progress, epoch: int, evaluation: Evaluation | None) -> None:
    """Listening samples: the first held-out pieces converted by the model as it is now (and once, the
    recordings themselves), as wav files under samples/ and as TensorBoard audio."""
    if run.validator is None:
        return
    if evaluation is None:  # a save between evaluations: convert (the scores are not recorded)
        with _evaluated(run):
            evaluation = run.validator(run.net_g.parameters(), keep=SAMPLE_CLIPS, scores=False)
    names = run.validator.names[:SAMPLE_CLIPS]
    originals = run.validator.originals(SAMPLE_CLIPS)
    sample_rate = run.cfg.data.sampling_rate
    waves = listening_waves(evaluation.waves, sample_rate)

    def write() -> None:
        run.log.log_samples(run.folder.sample_originals, names, originals, sample_rate, step=0, once=True)
        converted = run.folder.epoch_samples(epoch)
        run.log.log_samples(converted, names, waves, sample_rate, progress.step)

    run.ranks.on_main(write, "write listening samples")


def _save(run: _Run, progress: _Progress, epochs_done: int, batches_done: int, signals: StopOnSignal) -> Path:
    """Checkpoint after `epochs_done` whole epochs plus `batches_done` batches of the next one.

    Collective: ZeRO state (and a schedule-free x, from every shard) is gathered on rank 0, which writes
    while the others wait."""
    path = checkpoint_path(run.run_dir, epochs_done, progress.step)
    run.ranks.consolidate(run.optim_g, run.optim_d)
    averaged = averaged_record(run.net_g, run.optim_g, run.average)  # on every rank, as _evaluated
    state = lambda: _checkpoint_state(run, progress, epochs_done, batches_done, averaged)  # noqa: E731
    write = lambda: _write(run, path, state(), signals)  # noqa: E731
    run.ranks.on_main(write, "write a checkpoint")
    return path


def _checkpoint_state(
    run: _Run, progress: _Progress, epochs_done: int, batches_done: int, averaged: dict | None
) -> dict:
    hp, step = run.hp, progress.step
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epochs_done,
        "batch_in_epoch": batches_done,
        "step": step,
        **run.settings.saved(),  # config, precision, tf32
        "device": str(run.device),  # where it was written (rank 0's); a resume may continue anywhere
        "device_name": run.device_name,
        "generator": run.net_g.state_dict(),  # the live weights (schedule-free: y), which G trains
        "discriminator": run.net_d.state_dict(),
        "optim_g": optimizer_record(hp.optimizer, hp.record(), run.optim_g),
        "optim_d": optimizer_record(hp.optimizer, hp.record(), run.optim_d),
        "schedule": run.schedule.to_dict(),  # the lr plan: a pure function of the epoch
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
        "validation": {
            "held": run.split.held,
            "how": run.split.how,
            "best": progress.best,
            "reference": progress.mel_l1_to_beat,
            "stale": progress.evaluations_without_gain,
            "last": progress.last_validation,
        },
        # the evaluated weights (schedule-free x, the EMA), when they are not the live ones
        **({AVERAGED: averaged} if averaged is not None else {}),
    }


def _write(run: _Run, path: Path, state: dict, signals: StopOnSignal) -> None:
    best = (state["validation"]["best"] or {}).get("checkpoint")
    # Weights with NaN/inf are never a checkpoint: a resume would continue the divergence, and keep_last
    # would prune the good checkpoints to make room for it. So every checkpoint is finite, and pruning
    # (only after a write) never deletes the last finite one.
    bad = [
        f"{net}.{name}" for net in ("generator", "discriminator") for name in non_finite_tensors(state[net])
    ]
    if bad:
        previous = latest_checkpoint(run.run_dir)
        raise TrainError(
            f"training diverged: at step {state['step']} {len(bad)} weight tensors hold non-finite values "
            f"(NaN or inf): {name_some(bad)}; they were not saved as checkpoint {path.name}. "
            + (
                f"The last good checkpoint is {previous}: continue from it with a lower --lr "
                f"(--resume {previous} --lr ...)"
                if previous
                else "No checkpoint was saved before it; train again with a lower --lr"
            )
        )
    try:
        atomic_save(state, path)
    except (OSError, KeyboardInterrupt) as error:
        # A second Ctrl-C during the save breaks torch's writer ("unexpected pos", a WriteError): that is
        # the user exiting at once, not a full disk.
        if signals.forced is not None:
            kept = path if path.is_file() else latest_checkpoint(run.run_dir)
            after = (
                f"the newest checkpoint {kept} is intact; continue with --resume {run.run_dir}"
                if kept
                else "no checkpoint was saved; start the run again with the same command"
            )
            raise SaveInterrupted(
                f"{signals.forced} again while checkpoint {path} was being written: exited without "
                f"finishing the save (nothing is wrong with the disk or the folder); {after}",
                exit_status(signals.forced),
            ) from error
        if not isinstance(error, OSError):
            raise
        # a WriteError names the file itself; any other OSError gets it named here
        previous = latest_checkpoint(run.run_dir)
        what = error if isinstance(error, WriteError) else f"could not write checkpoint {path}: {error}"
        raise TrainError(
            f"checkpoint not saved: {what}. "
            + (f"The previous checkpoint {previous} is intact; " if previous else "")
            + "free disk space or fix permissions, then continue with --resume "
            + str(run.run_dir)
        ) from error
    if run.cfg.train.keep_last:
        protect = run.folder.checkpoints / best if best else None
        prune_checkpoints(run.run_dir, run.cfg.train.keep_last, written=path, protect=protect)


def _finish(run: _Run, progress: _Progress) -> TrainResult:
    """Export the generator (unless a signal stopped the run: then say how to continue)."""
    result = TrainResult(
        progress.epochs_done,
        progress.step,
        progress.last_checkpoint,
        {},
        progress.losses,
        progress.stopped_by,
        progress.best,
        progress.last_validation,
        run.folder.samples if run.validator is not None else None,
    )
    if result.interrupted:
        if run.ranks.is_main:  # the other ranks stopped with it
            message = "stopped by %s after step %d; continue with --resume %s"
            logger.warning(message, progress.stopped_by, progress.step, run.run_dir)
        return result
    info = f"arvc {run.hp.optimizer} epoch {progress.epochs_done}{_which_weights(run)}"

    def export() -> dict[str, Path]:
        return export_generator(run.net_g, run.cfg, run.folder.export, info=info, features=run.features)

    with _evaluated(run):  # on every rank, as in _export_best
        result.exports = run.ranks.on_main(export, "export") or {}  # the model is exported by rank 0
    if progress.best is not None:
        result.exports["best"] = run.folder.best_export
    logger.info(
        "done: %d epochs, %d steps; model in %s", progress.epochs_done, progress.step, run.folder.export
    )
    return result


def _short(losses: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
