"""`arvc compare`: train the same model on the same data with each optimizer, one after another.

Every contestant runs `seeds` seeds (seed, seed + 1, …) into runs/NAME/seed-K; for a given seed every
contestant shares the config, the initial weights and the batch order, and all of them share one prepared
dataset and one held-out split (made with the first seed). Only the optimizer (and, for the
AnyPrecisionAdamW variants, the precision) differs; the schedule is a controlled variable: "paired"
(each optimizer with the schedule its registry entry pairs it with) or one schedule for all.
Runs are resumable: a finished run leaves `result.json` and is skipped; an interrupted one continues from
its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arvc.compare.evaluate import split_dataset
from arvc.compare.report import MIN_RANKING_STEPS, finished_runs, short_run_warning
from arvc.compare.variants import VARIANTS, Variant, resolve_optimizers
from arvc.config import PRECISIONS, apply_overrides, load_config
from arvc.data.outputs import COMPARE_SETUP, RunFolder
from arvc.data.prepare import prepare_data
from arvc.data.preprocess import DataError
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import resolve_device
from arvc.optim import get_spec, state_bytes_per_param
from arvc.optim.denormals import flush_denormals
from arvc.optim.schedulers import SCHEDULERS, default_warmup_epochs, paired_schedule
from arvc.train.callbacks import Callbacks
from arvc.train.checkpoint import checkpoint_position, latest_checkpoint
from arvc.train.errors import SaveInterrupted
from arvc.train.faults import MAX_STEPS
from arvc.train.logs import read_metrics
from arvc.train.loop import TrainOptions, train
from arvc.train.optimizers import bf16_weights
from arvc.train.request import check_features_fit_config
from arvc.train.runlock import RunLocked, check_unlocked, run_lock
from arvc.train.timing import OptimizerStepTimer
from arvc.train.validation import Validator

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_SEEDS",
    "RESULT_FILE",
    "SAME_SCHEDULE",
    "SCHEDULE_CHOICES",
    "VARIANTS",
    "CompareResult",
    "Variant",
    "check_request",
    "resolve_optimizers",
    "run_compare",
    "schedule_setting",
]

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # written after a run completes: its presence means "done, skip"
EPOCHS_FILE = "epochs.jsonl"  # one record per finished epoch, so an interrupted run keeps its history

# 60 epochs: 300 steps per run on the demo voice (5 steps per epoch at batch 8), enough for every
# paired schedule to take its shape (AdaBeliefV2's default warm-up is then 6 epochs, the cosine spans 60).
DEFAULT_EPOCHS = 60
DEFAULT_SEEDS = 3
# `--schedule same`: RVC's exponential decay, the schedule the Adam family already gets when paired.
SAME_SCHEDULE = "exponential"
SCHEDULE_CHOICES = ("paired", "same", *(name for name in SCHEDULERS if name != "auto"))


def schedule_setting(schedule: str) -> str:
    """`--schedule` → the runs' `train.scheduler`: paired → "auto" (the registry's pairing), same →
    SAME_SCHEDULE for every contestant, a scheduler name → that one for every contestant."""
    key = schedule.strip().lower().replace("-", "_")
    if key == "paired":
        return "auto"
    if key == "same":
        return SAME_SCHEDULE
    if key in SCHEDULE_CHOICES:
        return key
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULE_CHOICES)}")


def contestant_schedule(variant: Variant, scheduler: str) -> str:
    """The schedule one contestant follows under `train.scheduler` (what "auto" resolves to)."""
    return scheduler if scheduler != "auto" else paired_schedule(variant.optimizer, variant.use_8bit)


def warmup_epochs_of(cfg) -> int:
    """The inverse_sqrt warm-up a run gets: `train.warmup_epochs`, else the training loop's default
    (`default_warmup_epochs`: clamp(epochs // 10, 1, 10))."""
    return cfg.train.warmup_epochs or default_warmup_epochs(cfg.train.epochs)


def warmup_warnings(variants, cfg, steps_per_epoch: int, max_steps: int | None) -> list[str]:
    """One sentence per contestant whose run ends before its warm-up does (it never reaches its peak lr).

    The warm-up peaks in epoch `warmup` (inverse_sqrt's factor is 1 there), i.e. after
    (warmup - 1) * steps_per_epoch + 1 steps; a run shorter than that, in epochs or by --max-steps,
    ranks a schedule that never got going.
    """
    warmup = warmup_epochs_of(cfg)
    peak_step = (warmup - 1) * steps_per_epoch + 1
    steps = cfg.train.epochs * steps_per_epoch
    if max_steps is not None:
        steps = min(steps, max_steps)
    out = []
    for variant in variants:
        if contestant_schedule(variant, cfg.train.scheduler) != "inverse_sqrt" or steps >= peak_step:
            continue
        out.append(
            f"{variant.name}'s inverse_sqrt schedule warms up over {warmup} epochs ({peak_step} steps to its "
            f"peak lr) but the run has {steps} steps: it never reaches its peak; use more --epochs or a "
            "smaller --warmup-epochs"
        )
    return out


@dataclass
class CompareResult:
    out_dir: Path
    # variant name → {"name", "schedule", "runs": [one result.json content (or {"seed", "error"}) per seed]}
    results: dict[str, dict]
    stopped_by: str | None = None  # interrupted (arvc.train.faults): stopped; run it again to go on

    @property
    def failures(self) -> list[tuple[str, int, str]]:
        """(name, seed, error) for each failed run."""
        return [
            (name, run["seed"], run["error"])
            for name, entry in self.results.items()
            for run in entry["runs"]
            if "error" in run
        ]

    @property
    def ranked(self) -> list[str]:
        """The contestants with finished seeds and none failed: those the report ranks."""
        return list(finished_runs(self.results))


class _Recorder(Callbacks):
    """Training callbacks: time each optimizer.step, evaluate after each epoch, persist per-epoch records."""

    def __init__(self, run_dir: Path, evaluator: Validator, device: str, records: list[dict], progress):
        self.run_dir, self.evaluator, self.device, self.progress = run_dir, evaluator, device, progress
        self.records = records
        last = records[-1] if records else {}
        self.wall0 = last.get("wall_s", 0.0)
        self.opt0 = last.get("optimizer_s", 0.0)
        self.started = time.perf_counter()
        self.timer = OptimizerStepTimer(device)
        self.eval_s, self.lr, self.step = 0.0, None, 0
        self.total_epochs = 0
        self.nonfinite = last.get("nonfinite", 0)
        self.optimizers: tuple = ()
        self.evaluation_weights = contextlib.nullcontext  # the run's (arvc.train.weights), once it starts

    def on_optimizers(self, optim_g, optim_d) -> None:
        self.optimizers = (optim_g, optim_d)
        self.timer.attach(*self.optimizers)

    def on_evaluation_weights(self, weights) -> None:
        self.evaluation_weights = weights

    def on_start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.started = time.perf_counter()  # wall time counts training, not model building or data loading
        self.total_epochs = total_epochs
        if self.progress:
            self.progress(
                "start",
                total=total_epochs * steps_per_epoch,
                done=(start_epoch - 1) * steps_per_epoch,
                epochs=total_epochs,
                steps_per_epoch=steps_per_epoch,
                start_epoch=start_epoch,
            )

    def on_step(self, epoch: int, step: int, losses: dict[str, float], lr: float) -> None:
        self.step, self.lr = step, lr
        self.nonfinite += not all(math.isfinite(v) for v in losses.values())
        if self.progress:
            self.progress("step", epoch=epoch, step=step, losses=losses, lr=lr)

    def on_epoch(self, epoch: int, losses: dict[str, float]) -> None:
        self.record(epoch)
        if self.progress:
            self.progress("epoch", epoch=epoch, losses=losses)

    def record(self, epoch: int) -> None:
        """Evaluate the generator on the weights its run evaluates (a schedule-free optimizer's average,
        the EMA, else the live ones) and append this point to epochs.jsonl."""
        evaluating = time.perf_counter()
        params = list(self.optimizers[0].param_groups[0]["params"])
        with self.evaluation_weights():
            scores = self.evaluator(params, final=epoch == self.total_epochs)  # the last scores everything
        mel_l1 = scores.mel_l1
        self.eval_s += time.perf_counter() - evaluating
        record = {
            "epoch": epoch,
            "step": self.step,
            "heldout_mel_l1": mel_l1,
            "heldout_stft": scores.stft,
            "heldout_scores": scores.scores,  # arvc.audio.score's, those computed this time (nan: none)
            "lr": self.lr,
            "wall_s": self.wall0 + time.perf_counter() - self.started - self.eval_s,  # training only
            "optimizer_s": self.opt0 + self.timer.total,
            "nonfinite": self.nonfinite,
        }
        self.records.append(record)
        with (self.run_dir / EPOCHS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("epoch %d: held-out mel L1 %.4f", epoch, mel_l1)


def _state_bytes(optimizers) -> tuple[int, int]:
    """(bytes of optimizer state, parameters) summed over G and D, from the live objects."""
    state, params = 0, 0
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            params += sum(p.numel() for p in group["params"])
        for entry in optimizer.state.values():
            state += sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor))
    return state, params


def _kept_records(run_dir: Path) -> list[dict]:
    """Epoch records still valid for a resume: those not newer than the newest checkpoint."""
    path, epoch = run_dir / EPOCHS_FILE, _checkpoint_epoch(run_dir)
    if epoch is None or not path.is_file():
        path.unlink(missing_ok=True)
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["epoch"] <= epoch]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _checkpoint_epoch(run_dir: Path) -> int | None:
    checkpoint = latest_checkpoint(run_dir)
    return None if checkpoint is None else checkpoint_position(checkpoint)[0]


@dataclass(frozen=True)
class _Contest:
    """What every run of one comparison shares."""

    train_dir: Path
    evaluator: Validator
    precision: str
    device: str
    max_steps: int | None
    progress: Callable[..., None] | None
    stop: threading.Event | None


def _run_one(variant: Variant, run_dir: Path, cfg, contest: _Contest):  # cfg: this seed's config
    """Train (or resume) one contestant; returns (result dict, None) or (None, why it was
    interrupted: "SIGINT"/"SIGTERM"/STOP_REQUEST, arvc.train.faults)."""
    precision, device, progress = contest.precision, contest.device, contest.progress
    records = _kept_records(run_dir)
    run_precision = variant.precision or precision
    saved_epoch = _checkpoint_epoch(run_dir)
    if (
        saved_epoch is not None
        and saved_epoch >= cfg.train.epochs
        and RunFolder(run_dir).export.is_dir()
        and records
    ):
        # Trained to the end but stopped before result.json was written: only the summary is missing.
        metrics = read_metrics(run_dir)
        final = {k: float(v) for k, v in metrics[-1].items() if k.startswith("loss_")} if metrics else {}
        steps = int(metrics[-1]["step"]) if metrics else records[-1]["step"]
        return _summarize(
            variant, run_dir, cfg, records, run_precision, saved_epoch, steps, final, (), None
        ), None
    resume = run_dir if saved_epoch is not None else None
    if variant.ema is not None:
        cfg = apply_overrides(cfg, {"train.ema": variant.ema})
    options = TrainOptions(
        run_dir=run_dir,
        data_dir=contest.train_dir,
        config=cfg,
        optimizer=variant.optimizer,
        use_8bit=variant.use_8bit if resume is None else None,
        optimizer_kwargs=dict(variant.kwargs) if resume is None and variant.kwargs else None,
        precision=run_precision,
        resume=resume,
        max_steps=contest.max_steps,
        device=device,
        stop=contest.stop,
    )
    if resume is not None:
        logger.info("%s: resuming from %s", variant.name, latest_checkpoint(run_dir))
    recorder = _Recorder(run_dir, contest.evaluator, device, records, progress)
    result = train(options, recorder)
    if result.interrupted:
        return None, result.stopped_by
    if not records or records[-1]["step"] < result.steps_done:  # stopped mid-epoch by max_steps
        recorder.record(result.epochs_done + (1 if result.stopped_by == MAX_STEPS else 0))
    summary = _summarize(
        variant,
        run_dir,
        cfg,
        records,
        run_precision,
        result.epochs_done,
        result.steps_done,
        result.final_losses,
        recorder.optimizers,
        result.stopped_by,
    )
    return summary, None


def _summarize(
    variant, run_dir, cfg, records, precision, epochs, steps, final_losses, optimizers, stopped_by
) -> dict:
    """Everything the report needs about one finished run; also written to its result.json."""
    seed, scheduler = cfg.train.seed, cfg.train.scheduler
    metrics = read_metrics(run_dir)
    if optimizers:
        state, params = _state_bytes(optimizers)
        per_param = state / params if params else None
    else:  # no live optimizer (summary of an already trained run): the registry's measurement
        bf16 = bf16_weights(precision, variant)  # (a Variant has the optimizer and 8-bit switch)
        per_param = state_bytes_per_param(
            variant.optimizer,
            param_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_8bit=variant.use_8bit,
            **{**((get_spec(variant.optimizer).bf16_weights_kwargs or {}) if bf16 else {}), **variant.kwargs},
        )
        state, params = None, None
    step_s = sum(float(r["seconds"]) for r in metrics)
    mel = [r["heldout_mel_l1"] for r in records]
    last = records[-1]
    out = {
        "name": variant.name,
        "seed": seed,
        "schedule": contestant_schedule(variant, scheduler),
        "optimizer": variant.optimizer,
        "use_8bit": variant.use_8bit,
        "precision": precision,
        "kwargs": variant.kwargs,
        "ema": variant.ema,
        "epochs": epochs,
        "steps": steps,
        "final_losses": final_losses,
        "final_heldout_mel_l1": mel[-1],
        "best_heldout_mel_l1": min(mel),
        # the held-out scores of the last evaluation (the last epoch's scores everything)
        "final_heldout_scores": last.get("heldout_scores", {}),
        "wall_s": last["wall_s"],
        "optimizer_s": last["optimizer_s"],
        "step_s": step_s,
        "optimizer_share": last["optimizer_s"] / step_s if step_s else None,
        "state_bytes": state,
        "params": params,
        "state_bytes_per_param": per_param,
        "skipped_steps": sum(1 for r in metrics if r.get("skipped")),
        "nonfinite_steps": last["nonfinite"],
        "epoch_records": records,
        "stopped_by": stopped_by,
    }
    (run_dir / RESULT_FILE).write_text(json.dumps(out, indent=2))
    return out


def _differences(old, new, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two nested dicts (absent where missing)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [
            d for k in keys for d in _differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{prefix}{k}.")
        ]
    if old == new:
        return []
    show = lambda v: "absent" if v is _ABSENT else repr(v)  # noqa: E731
    return [f"{prefix.rstrip('.')}: {show(old)} -> {show(new)}"]


_ABSENT = object()


def _check_same_setup(out_dir: Path, setup: dict, extra: dict | None = None) -> None:
    """Finished runs are reused, so a comparison folder must keep one setup (optimizers and seeds may be
    added). `extra` (seeds, warnings) is recorded in compare.json for the report but not compared."""
    path = out_dir / COMPARE_SETUP
    setup = json.loads(json.dumps(setup))
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in setup if old.get(k) != setup[k])
        if changed:
            detail = _differences(old.get("config"), setup["config"]) if "config" in changed else []
            more = f" ({'; '.join(detail[:4])}{'; ...' if len(detail) > 4 else ''})" if detail else ""
            raise ValueError(
                f"{out_dir} holds a comparison with another {', '.join(changed)}{more}; its finished runs "
                "would not be comparable (a folder made by an older arvc differs in the settings it did not "
                "have yet). Use another --name (nothing was changed)."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**setup, **(extra or {})}, indent=2))


def check_request(
    dataset_dir: Path | None,
    optimizers,
    schedule: str = "paired",
    precision: str = "fp32",
    device: str = AUTO_DEVICE,
    config: str = "tiny",
    overrides: dict[str, Any] | None = None,
    allow_mel_rvc_config: bool = False,
) -> tuple[list[Variant], str]:
    """What `arvc compare`, the web UI's Compare tab and run_compare check before any work: ValueError
    naming it. Returns the contestants and the scheduler setting the request resolves to.

    A comparison trains on mel features, so an RVC-sized config (v1-*/v2-*) is refused by `arvc train`'s
    own rule unless `allow_mel_rvc_config` (for testing arvc)."""
    variants, scheduler = resolve_optimizers(optimizers), schedule_setting(schedule)
    resolve_device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if dataset_dir is not None and not Path(dataset_dir).is_dir():
        raise ValueError(f"dataset folder {dataset_dir} does not exist")
    cfg = apply_overrides(load_config(config), overrides or {})
    check_features_fit_config(cfg, "mel", allow_mel_rvc_config, features_flag=False)
    return variants, scheduler


def run_compare(
    dataset_dir: Path | None,
    out_dir: Path,
    optimizers: list[str] | str = "all",
    epochs: int = DEFAULT_EPOCHS,
    config: str = "tiny",
    seed: int = 1234,
    precision: str = "fp32",
    progress: Callable[..., None] | None = None,
    *,
    seeds: int = DEFAULT_SEEDS,
    schedule: str = "paired",
    warmup_epochs: int | None = None,
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = AUTO_DEVICE,
    holdout_fraction: float = 0.1,
    flush_denormal: bool = True,
    stop: threading.Event | None = None,
    allow_mel_rvc_config: bool = False,
) -> CompareResult:
    """Run every optimizer with seeds seed … seed+seeds-1 on the same data and config into
    out_dir/runs/NAME/seed-K; then write the report.

    `schedule`: "paired" (each optimizer's registry pairing), "same" (SAME_SCHEDULE for all) or a
    scheduler name for all; `warmup_epochs`: inverse_sqrt's warm-up (None: a tenth of the run, 1–10).
    The held-out split is made once, with `seed`, and is the same for every seed and contestant.

    `progress(event, **info)` gets "run" (name, seed, index, count), "start" (total, done: steps; epochs,
    steps_per_epoch, start_epoch), "step" (epoch, step, losses, lr), "epoch" (epoch, losses) and "skip"
    (name, seed) events. Runs go seed by seed (every contestant's first seed, then the second…),
    so a comparison stopped early has whole seeds. Finished runs are skipped, interrupted ones resumed. A
    run that raises is recorded as failed (its error in the report) and the others go on. `stop` (set
    from another thread, e.g. the web UI) stops the running contestant as Ctrl-C does.
    """
    from arvc.compare.report import write_report

    variants, scheduler = check_request(
        dataset_dir, optimizers, schedule, precision, device, config, overrides, allow_mel_rvc_config
    )
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    out_dir = Path(out_dir)
    cfg = load_config(config)
    cfg = apply_overrides(
        cfg,
        {
            "train.epochs": epochs,
            "train.seed": seed,
            "train.scheduler": scheduler,
            "train.warmup_epochs": warmup_epochs,
            "train.log_interval": 1,  # every step in metrics.csv: curves and skipped steps
            "train.save_every": 1,  # resume loses at most one epoch
            "train.val_fraction": 0,  # the comparison holds out its own pieces and scores every run itself
            **(overrides or {}),
        },
    )
    setup = {
        "precision": precision,
        "max_steps": max_steps,
        "schedule": "paired" if scheduler == "auto" else f"same: {scheduler}",
        "config": cfg.to_dict(),
    }
    run_seeds = list(range(cfg.train.seed, cfg.train.seed + seeds))
    check_unlocked(out_dir)  # another `arvc compare` (or the web UI) is running this comparison
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(out_dir):  # held until the report is written (each contestant's run is locked too)
        _check_same_setup(out_dir, setup)  # before any work: a refused folder stays as it was
        prepare_data(cfg, out_dir, dataset_dir)
        train_dir, split = split_dataset(out_dir / "data", out_dir, holdout_fraction, seed)
        pieces = sum(1 for line in (train_dir / "filelist.txt").read_text().splitlines() if line.strip())
        step_batch = cfg.train.step_batch  # the items of one optimizer step: batch x accumulate
        if pieces < step_batch:  # every contestant would fail the same way, one after another
            asked, lower = f"batch size {cfg.train.batch_size}", "--batch-size"
            if cfg.train.accumulate > 1:
                asked += f" x accumulate {cfg.train.accumulate} = {step_batch} items per step"
                lower += " or train.accumulate"
            raise DataError(
                f"{asked} is larger than the comparison's training pieces "
                f"({pieces}; {len(split.held)} more are held out); lower {lower} or add more audio"
            )
        warnings = warmup_warnings(variants, cfg, pieces // step_batch, max_steps)
        for warning in warnings:
            logger.warning("%s", warning)
        steps = cfg.train.epochs * (pieces // step_batch)
        steps = min(steps, max_steps) if max_steps is not None else steps
        if steps < MIN_RANKING_STEPS:  # said before the wait; the report is marked from the runs themselves
            logger.warning("%s", short_run_warning(steps))
        _check_same_setup(out_dir, setup, {"seeds": run_seeds, "warnings": warnings})
        where = resolve_device(device)
        logger.info("device: %s", where.describe())
        device = where.name  # every contestant, its scores and its step times on the same GPU (or the CPU)
        evaluator = Validator(cfg, out_dir / "data", split.held, seed=seed, device=device)
        # Denormal floats make some optimizers' first steps (RAdam's un-rectified phase) ~100x slower on
        # CPU, which would rank a CPU artefact, so they are flushed to zero for every run alike.
        with flush_denormals(flush_denormal):  # on every intra-op thread (arvc.optim.denormals)
            contest = _Contest(train_dir, evaluator, precision, device, max_steps, progress, stop)
            results, stopped_by = _run_all(variants, run_seeds, out_dir, cfg, contest)
        write_report(out_dir, results)
        return CompareResult(out_dir, results, stopped_by)


def run_folder(out_dir: Path, name: str, seed: int) -> Path:
    """Where one contestant's run with one seed lives."""
    return Path(out_dir) / "runs" / name / f"seed-{seed}"


def _run_all(variants, run_seeds, out_dir, cfg, contest: _Contest):
    progress = contest.progress
    results = {
        v.name: {"name": v.name, "schedule": contestant_schedule(v, cfg.train.scheduler), "runs": []}
        for v in variants
    }
    count, index = len(variants) * len(run_seeds), 0
    for run_seed in run_seeds:
        seed_cfg = apply_overrides(cfg, {"train.seed": run_seed})
        for variant in variants:
            run_dir = run_folder(out_dir, variant.name, run_seed)
            done = run_dir / RESULT_FILE
            if progress:
                progress("run", name=variant.name, seed=run_seed, index=index, count=count)
            index += 1
            runs = results[variant.name]["runs"]
            if done.is_file():
                logger.info("%s seed %d: already finished, skipping", variant.name, run_seed)
                runs.append(json.loads(done.read_text()))
                if progress:
                    progress("skip", name=variant.name, seed=run_seed)
                continue
            logger.info("%s seed %d: training (%d/%d)", variant.name, run_seed, index, count)
            try:
                result, stopped_by = _run_one(variant, run_dir, seed_cfg, contest)
            # another process trains this contestant's run, or the user pressed Ctrl-C again during its
            # checkpoint write: the comparison cannot (must not) go on to the next contestant
            except (RunLocked, SaveInterrupted):
                raise
            except Exception as error:  # one failing contestant (e.g. no bitsandbytes) must not end the rest
                logger.error("%s seed %d failed: %s", variant.name, run_seed, error)
                runs.append({"seed": run_seed, "error": f"{type(error).__name__}: {error}"})
                continue
            if stopped_by:
                return results, stopped_by
            runs.append(result)
    return results, None
