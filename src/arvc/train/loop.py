"""The training loop: config → data → models → optimizers → for each epoch: D step, G step, log, save.

It reads top to bottom like nanoGPT's train.py. Optimizers come only from the registry
(`arvc.optim.build_optimizer`), schedulers from `build_scheduler(..., "auto")`, stepped once per epoch
as RVC does. Everything needed to continue a run bit for bit is in its checkpoints.

Under torchrun each process runs this same loop on its share of every global batch (`distributed.py`
holds what differs: DDP wrapping, ZeRO, collectives, rank 0 alone writing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from arvc.config import RunConfig
from arvc.data.dataset import VoiceDataset, make_loader
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.modelfile.export import export_generator
from arvc.modelfile.read import load_pretrained_discriminator, load_pretrained_generator
from arvc.optim import build_scheduler
from arvc.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_save,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    optimizer_record,
    prune_checkpoints,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from arvc.train.distributed import Ranks, process_group
from arvc.train.errors import TrainError
from arvc.train.faults import StopOnSignal
from arvc.train.logs import NullLog, RunLog
from arvc.train.optimizers import DEFAULT_LR, hyperparameters, make_optimizer, restore_optimizer
from arvc.train.step import GanStep

__all__ = ["DEFAULT_LR", "PRECISIONS", "TrainError", "TrainOptions", "TrainResult", "train"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainOptions:
    """What `arvc train` decides; None means "the config's value" (or the checkpoint's, on resume)."""

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
    precision: str | None = None  # None: fp32, or on resume the run's precision
    compile: bool = False
    resume: Path | None = None  # a run directory (newest checkpoint) or one checkpoint file
    pretrained_g: Path | None = None  # RVC or arvc generator to start from (fine-tuning)
    pretrained_d: Path | None = None
    max_steps: int | None = None  # stop early (tests, quick looks); a checkpoint is still written
    device: str = "cpu"  # "cuda": under torchrun each rank takes the GPU of its LOCAL_RANK
    max_bad_steps: int = 20  # consecutive non-finite steps before training stops
    zero: bool = False  # shard optimizer state over the ranks (ZeroRedundancyOptimizer)


@dataclass
class TrainResult:
    epochs_done: int
    steps_done: int
    last_checkpoint: Path | None
    exports: dict[str, Path]
    final_losses: dict[str, float]
    stopped_by: str | None = None  # "SIGINT"/"SIGTERM" (checkpoint saved, no export) or "max_steps"


class Callbacks(Protocol):
    """How the CLI shows progress; the library itself never prints."""

    def on_start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None: ...
    def on_step(self, epoch: int, step: int, losses: dict[str, float], lr: float) -> None: ...
    def on_epoch(self, epoch: int, losses: dict[str, float]) -> None: ...

    # Optional: `on_optimizers(optim_g, optim_d)` is called once the optimizers exist (e.g. to time their
    # steps with register_step_pre_hook/register_step_post_hook).


class _Silent:
    def on_start(self, *args) -> None: ...
    def on_step(self, *args) -> None: ...
    def on_epoch(self, *args) -> None: ...


# ---------------------------------------------------------------------------------------------------------
def _resolve_resume(resume: Path) -> Path:
    resume = Path(resume)
    if resume.is_dir():
        found = latest_checkpoint(resume)
        if found is None:
            raise TrainError(f"--resume {resume}: no checkpoint in {resume / 'checkpoints'}")
        return found
    return resume


# ---------------------------------------------------------------------------------------------------------
def train(opts: TrainOptions, callbacks: Callbacks | None = None) -> TrainResult:
    """Train (or continue training) a voice model; returns where the results are.

    Started by torchrun (RANK, WORLD_SIZE, ... set), each process trains its share of every global batch
    with DistributedDataParallel and rank 0 alone writes; see docs/distributed.md.
    """
    with process_group(opts.device) as ranks:
        return _train(opts, callbacks if callbacks is not None and ranks.is_main else _Silent(), ranks)


def _train(opts: TrainOptions, callbacks: Callbacks, ranks: Ranks) -> TrainResult:
    cfg, device, run_dir = opts.config, ranks.train_device(opts.device), Path(opts.run_dir)
    resume_from = _resolve_resume(opts.resume) if opts.resume is not None else None
    checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
    precision = opts.precision or (checkpoint.get("precision", "fp32") if checkpoint else "fp32")
    if precision not in PRECISIONS:
        raise TrainError(f"Unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if checkpoint is not None and precision != checkpoint.get("precision", "fp32"):
        raise TrainError(
            f"{resume_from} was trained in {checkpoint.get('precision')}; resume it in the same precision"
        )
    opts = replace(opts, precision=precision)
    if checkpoint is not None and (opts.pretrained_g or opts.pretrained_d):
        raise TrainError(
            "--pretrained-g/--pretrained-d start a new run; a resumed run continues from its checkpoint"
        )
    cfg.validate()
    hp = hyperparameters(opts, cfg, checkpoint["optim_g"] if checkpoint else None)
    zero = opts.zero and ranks.distributed
    if opts.zero and not ranks.distributed:
        logger.warning("--zero shards optimizer state over processes; with one process it does nothing")
    if zero and hp["use_8bit"]:
        raise TrainError("--zero and --use-8bit cannot be combined (8-bit state is already 4x smaller)")

    # --- data: this rank's share of every global batch ------------------------------------------------
    dataset = VoiceDataset(opts.data_dir, cfg.data)
    loader = make_loader(
        dataset, cfg.train.batch_size, seed=cfg.train.seed, drop_last=True, **ranks.sharding()
    )
    steps_per_epoch = len(loader)

    # --- models -----------------------------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    if checkpoint is None:  # fine-tuning starts from pretrained weights; a resume has its own
        if opts.pretrained_g is not None:
            load_pretrained_generator(net_g, opts.pretrained_g, cfg)
        if opts.pretrained_d is not None:
            load_pretrained_discriminator(net_d, opts.pretrained_d, cfg)
    net_g, net_d = net_g.to(device), net_d.to(device)
    if precision == "bf16" and hp["optimizer"] == "AnyPrecisionAdamW" and not hp["use_8bit"]:
        # AnyPrecisionAdamW's bf16 mode keeps the weights themselves in bf16 (Kahan on by default).
        net_g.to(torch.bfloat16)
        net_d.to(torch.bfloat16)

    # --- optimizers and per-epoch schedulers, from the registry (--zero: each rank steps a shard) ------
    def build(params) -> torch.optim.Optimizer:
        if zero:
            return ranks.zero(params, lambda shard: make_optimizer(shard, hp), hp["lr"])
        return make_optimizer(params, hp)

    optim_g, optim_d = build(net_g.parameters()), build(net_d.parameters())
    sched_g = build_scheduler(optim_g, "auto", total_epochs=cfg.train.epochs, gamma=cfg.train.lr_decay)
    sched_d = build_scheduler(optim_d, "auto", total_epochs=cfg.train.epochs, gamma=cfg.train.lr_decay)
    if hasattr(callbacks, "on_optimizers"):
        callbacks.on_optimizers(optim_g, optim_d)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # bf16 needs no loss scaling

    epochs_done, batches_done, step = 0, 0, 0
    if checkpoint is not None:
        net_g.load_state_dict(checkpoint["generator"])
        net_d.load_state_dict(checkpoint["discriminator"])
        epochs_done, step = checkpoint["epoch"], checkpoint["step"]
        batches_done = checkpoint.get("batch_in_epoch", 0)
        restore_optimizer("generator", optim_g, sched_g, checkpoint["optim_g"], hp, epochs_done)
        restore_optimizer("discriminator", optim_d, sched_d, checkpoint["optim_d"], hp, epochs_done)
        scaler.load_state_dict(checkpoint["scaler"])
        if not ranks.distributed:
            set_rng_state(checkpoint["rng"])
        logger.info(
            "resumed %s: %d epochs + %d batches done, step %d", resume_from, epochs_done, batches_done, step
        )
    if ranks.distributed:
        ranks.seed(cfg.train.seed, step)  # each rank's own RNG; training noise is per item (model/noise.py)

    def prepare_run_dir() -> RunLog:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        return RunLog(run_dir, resume_step=step if checkpoint is not None else None)

    log = ranks.on_main(prepare_run_dir, f"prepare {run_dir}") or NullLog()
    # DDP around the models that take gradients; G's phase calls D unwrapped (its parameters are frozen).
    g_forward, d_forward, d_frozen = ranks.wrap(net_g), ranks.wrap(net_d), net_d
    if opts.compile:
        g_forward, d_forward = torch.compile(g_forward), torch.compile(d_forward)
        d_frozen = torch.compile(net_d) if ranks.distributed else d_forward
    elif not ranks.distributed:
        d_frozen = d_forward
    train_step = GanStep(
        cfg, net_g, net_d, g_forward, d_forward, optim_g, optim_d, scaler, precision, d_frozen, ranks
    )

    def save(epochs_done: int, batches_done: int) -> Path:
        """Checkpoint after `epochs_done` whole epochs plus `batches_done` batches of the next one.

        Collective: ZeRO state is gathered on rank 0, which writes while the others wait."""
        path = checkpoint_path(run_dir, epochs_done, step)
        ranks.consolidate(optim_g, optim_d)
        ranks.on_main(lambda: write(path, epochs_done, batches_done), "write a checkpoint")
        return path

    def write(path: Path, epochs_done: int, batches_done: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": epochs_done,
            "batch_in_epoch": batches_done,
            "step": step,
            "config": cfg.to_dict(),
            "precision": precision,
            "generator": net_g.state_dict(),
            "discriminator": net_d.state_dict(),
            "optim_g": {**optimizer_record(hp["optimizer"], hp, optim_g), "scheduler": sched_g.state_dict()},
            "optim_d": {**optimizer_record(hp["optimizer"], hp, optim_d), "scheduler": sched_d.state_dict()},
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
        }
        try:
            atomic_save(state, path)
        except OSError as error:
            previous = latest_checkpoint(run_dir)
            raise TrainError(
                f"checkpoint not saved: {error}. "
                + (f"The previous checkpoint {previous} is intact; " if previous else "")
                + "free disk space or fix permissions, then continue with --resume "
                + str(run_dir)
            ) from error
        if cfg.train.keep_last:
            prune_checkpoints(run_dir, cfg.train.keep_last)

    # --- the loop ---------------------------------------------------------------------------------------
    callbacks.on_start(cfg.train.epochs, steps_per_epoch, epochs_done + 1)
    last_checkpoint, losses, bad_steps, stopped_by = resume_from, {}, 0, None
    with StopOnSignal() as stop_signal, _flush_denormals(device):
        for epoch in range(epochs_done + 1, cfg.train.epochs + 1):
            net_g.train()
            net_d.train()
            loader.sampler.set_epoch(epoch, start=batches_done * cfg.train.batch_size)
            for batch in loader:
                started = time.perf_counter()
                result = train_step(batch.to(device), step + 1)
                step, batches_done, losses = step + 1, batches_done + 1, result.losses
                bad_steps = bad_steps + 1 if result.skipped else 0
                if result.skipped:
                    logger.warning(
                        "step %d: non-finite loss or gradients, %s update skipped (%s)",
                        step,
                        " and ".join(result.skipped),
                        _short(losses),
                    )
                lr_g = optim_g.param_groups[0]["lr"]
                if step % cfg.train.log_interval == 0 or step == 1:
                    log.log_step(
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
                if bad_steps >= opts.max_bad_steps:
                    raise TrainError(
                        f"training diverged: {bad_steps} steps in a row had non-finite losses or gradients "
                        f"(last: {_short(losses)}). Nothing was saved after the last good checkpoint "
                        f"({latest_checkpoint(run_dir)}); resume from it with a lower --lr."
                    )
                callbacks.on_step(epoch, step, losses, lr_g)
                limit = "max_steps" if opts.max_steps is not None and step >= opts.max_steps else None
                stopped_by = ranks.stop_reason(stop_signal.requested or limit)  # all ranks stop together
                if stopped_by:
                    break
            if stopped_by and batches_done < steps_per_epoch:
                last_checkpoint = save(epoch - 1, batches_done)  # mid-epoch: resume continues this epoch
                break
            batches_done, epochs_done = 0, epoch
            sched_g.step()
            sched_d.step()
            log.log_mels(step, result.mel_real, result.mel_fake)
            log.plot()
            callbacks.on_epoch(epoch, losses)
            if epoch % cfg.train.save_every == 0 or epoch == cfg.train.epochs or stopped_by:
                last_checkpoint = save(epoch, 0)
            if stopped_by:
                break
    log.plot()
    log.close()
    if stopped_by not in (None, "max_steps"):
        if ranks.is_main:  # the other ranks stopped with it
            message = "stopped by %s after step %d; continue with --resume %s"
            logger.warning(message, stopped_by, step, run_dir)
        return TrainResult(epochs_done, step, last_checkpoint, {}, losses, stopped_by)
    info = f"arvc {hp['optimizer']} epoch {epochs_done}"
    exports = ranks.on_main(lambda: export_generator(net_g, cfg, run_dir / "export", info=info), "export")
    exports = exports or {}  # the model is exported by rank 0
    logger.info("done: %d epochs, %d steps; model in %s", epochs_done, step, run_dir / "export")
    return TrainResult(epochs_done, step, last_checkpoint, exports, losses, stopped_by)


@contextlib.contextmanager
def _flush_denormals(device: torch.device):
    """On CPU, denormal floats (early RAdam/Adam moments) can make a step ~100x slower; flush them to 0."""
    flushed = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _short(losses: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
