"""What a user asks of a training run — `arvc train`'s flags or the web UI's fields — checked before any work.

`plan_training(request)` does every check that can be done without touching data and returns the plan:
the run folder, the config and the run's settings for `arvc.train.loop.train`. It checks here what only a
request has (its flags, the run folder, the data already in it, the analysers, the devices and processes),
builds the `TrainOptions` and hands them to `arvc.train.settings.check_run`, the one check of a run's
settings that every entry point calls (the Python API and compare's runs through `train`), with the resume
checkpoint it loaded (once). `prepare(plan)` then preprocesses the data when the run has none yet. Both
front ends call these two, so a value refused by one is refused by the other with the same words.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from arvc.audio.f0 import F0_METHODS, RMVPE_NEEDED, rmvpe_model
from arvc.config import (
    CHECKPOINTING,
    DEMO_EPOCHS,
    RunConfig,
    apply_overrides,
    load_config,
)
from arvc.data.outputs import RunFolder, check_run_name, leftovers_of_a_run, restarted_folder, run_products
from arvc.data.prepare import DataSettings, data_settings, prepare_data, preprocessed_from
from arvc.data.preprocess import unused_analysis_flags
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import resolve_device
from arvc.modelfile.export import is_rvc_sized
from arvc.train.checkpoint import latest_checkpoint, load_checkpoint
from arvc.train.runlock import check_unlocked
from arvc.train.settings import RunSettings, TrainOptions, check_run, resolve_resume

logger = logging.getLogger(__name__)

__all__ = [
    "TrainPlan",
    "TrainRequest",
    "check_features_fit_config",
    "check_processes",
    "plan_training",
    "prepare",
]


# Where a request's value goes (a field's metadata): a run option (`TrainOptions`, the same name) or a config
# key. Fields without it are read by `plan_training` itself: the data and the analysers, the run folder, the
# processes, and the three that make the config (`config`, `overrides` and `batch_size`, a number or auto).
_GOES_TO = "goes_to"
_OPTION = "option"


def _option(default: Any = None) -> Any:
    """A request field passed to `TrainOptions` as it is, under the same name."""
    return field(default=default, metadata={_GOES_TO: _OPTION})


def _setting(key: str) -> Any:
    """A request field that overrides config `key` (as `--set KEY=VALUE` does) when given."""
    return field(default=None, metadata={_GOES_TO: key})


@dataclass
class TrainRequest:
    """A training run as asked for; None means "not asked" (the config's value, or on resume the run's).

    Each field says where it goes: to the run's `TrainOptions` (`_option`) or into the config (`_setting`:
    the key it overrides); `plan_training` forwards them by that declaration, so a new flag of either kind
    is one field here. The plain fields it reads itself: the data, the analysers, the run folder, the
    processes, and `config`, `overrides` (--set) and `batch_size` (a number, or auto), which make the
    config."""

    dataset: Path | None = None  # folder of recordings; None: the embedded demo voice
    name: str | None = None  # runs/NAME; default: the dataset folder's name or "demo"
    runs_dir: Path = Path("runs")
    config: str = "tiny"
    optimizer: str | None = _option()
    lr: float | None = _option()
    betas: tuple[float, float] | None = _option()
    eps: float | None = _option()
    weight_decay: float | None = _option()
    use_8bit: bool | None = _option()
    precision: str | None = _option()
    epochs: int | None = _setting("train.epochs")
    batch_size: int | str | None = None  # a number (train.batch_size), or "auto"
    accumulate: int | None = _setting("train.accumulate")  # micro-batches per optimizer step
    checkpointing: str | None = _setting("train.checkpointing")  # auto, on or off
    save_every: int | None = _setting("train.save_every")
    seed: int | None = _setting("train.seed")
    compile: bool = _option(False)
    resume: Path | None = _option()  # runs/NAME or one checkpoint file
    f0: str | None = None
    rmvpe: Path | None = None
    features: str | None = None
    hubert: Path | None = None
    embedder_layer: int | None = None
    allow_mel_rvc_config: bool = False  # for tests only: an RVC-sized config trained on mel features
    overrides: dict[str, Any] = field(default_factory=dict)  # config KEY -> value (--set)
    pretrained_g: Path | None = _option()
    pretrained_d: Path | None = _option()
    max_steps: int | None = _option()
    device: str = _option(AUTO_DEVICE)  # auto, cpu, cuda or cuda:N (arvc.device)
    nproc: int | None = None
    zero: bool = _option(False)
    val_fraction: float | None = _setting("train.val_fraction")
    val_every: int | None = _setting("train.val_every")
    early_stop: int | None = _setting("train.early_stop")
    min_delta: float | None = _setting("train.min_delta")
    ema: float | None = _setting("train.ema")  # EMA decay of G's weights, e.g. 0.999
    select: str | None = _setting("train.select")  # the metric that chooses the best model

    def options(self) -> dict[str, Any]:
        """The values that go to `TrainOptions` unchanged."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get(_GOES_TO) == _OPTION}

    def settings(self) -> dict[str, Any]:
        """Config key -> value of the config settings asked for (those given)."""
        return {
            f.metadata[_GOES_TO]: getattr(self, f.name)
            for f in fields(self)
            if f.metadata.get(_GOES_TO, _OPTION) != _OPTION and getattr(self, f.name) is not None
        }


@dataclass
class TrainPlan:
    request: TrainRequest
    run_dir: Path
    settings: DataSettings  # how the data is (or will be) made
    run_settings: RunSettings  # checked and resolved (arvc.train.settings.check_run): what the loop runs
    # A run started again (it never saved a checkpoint): its leftovers, moved into `restart_folder` by
    # `prepare` before any other work.
    leftovers: list[Path] = field(default_factory=list)
    restart_folder: Path | None = None

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def options(self) -> TrainOptions:
        return self.run_settings.options

    @property
    def cfg(self) -> RunConfig:
        return self.run_settings.config


def _batch_size(value: int | str | None) -> int | None:
    """None, or the number; "auto" is handled by the caller."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(f"--batch-size {value!r}: use a whole number >= 1, or auto")
    return number


def check_features_fit_config(
    cfg: RunConfig, features: str, allow_mel_rvc_config: bool = False, *, features_flag: bool = True
) -> None:
    """An RVC-sized config (v1-*/v2-*) trained on mel features is refused (ValueError) unless the user opts
    in for testing: RVC, Applio and the VC Client would feed its model HuBERT/ContentVec features. `arvc
    train` and `arvc compare` both check it here; `features_flag=False` for a front end that trains on mel
    features only (compare), so the advice names no --features flag it does not have."""
    if features != "mel" or not is_rvc_sized(cfg) or allow_mel_rvc_config:
        return
    choose = (
        "pass --features hubert --hubert PATH, or --config tiny" if features_flag else "use --config tiny"
    )
    raise ValueError(
        f"config {cfg.name} is an RVC model, which RVC, Applio and the VC Client feed HuBERT/ContentVec "
        f"features, but this run would train it on {cfg.data.feature_dim}-d mel features"
        f"{' (the default)' if features_flag else ''}: {choose} to train on mel features; only to test arvc "
        "itself, pass --allow-mel-rvc-config (its export then has no RVC .pth)"
    )


def check_processes(nproc: int | None, device: str, batch_size: int) -> int:
    """How many processes will train; a bad --nproc/--device is an error before any work starts."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if nproc is not None and world > 1:
        raise ValueError(f"--nproc starts the processes itself; under torchrun (WORLD_SIZE={world}) drop it")
    choice = resolve_device(device)
    chosen = choice.device
    processes = nproc or world
    if chosen.type == "cuda" and processes > 1 and chosen.index is not None:
        raise ValueError(
            f"--device {device}: with {processes} processes each takes the GPU of its local rank; "
            "pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    if chosen.type == "cuda" and nproc is not None and nproc > torch.cuda.device_count():
        raise ValueError(
            f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s), one per process"
            + ("; pass --device cpu to train on the CPU" if choice.why.startswith("auto") else "")
        )
    if batch_size % processes:
        raise ValueError(
            f"batch size {batch_size} cannot be split over {processes} processes (it is the global batch; "
            f"each process takes batch/processes): use a multiple of {processes}, e.g. --batch-size "
            f"{processes * max(1, batch_size // processes)}"
        )
    return processes


def plan_training(request: TrainRequest) -> TrainPlan:
    """Every check of `request` that needs no work done; raises ValueError (or PretrainedError, ImportError,
    TrainError, CheckpointError, DataError) with a message for the user. Nothing is written."""
    r = request
    if r.f0 is not None and r.f0 not in F0_METHODS:
        raise ValueError(f"unknown f0 method {r.f0!r}; valid: {', '.join(F0_METHODS)}")
    if r.features == "hubert" and (r.hubert is None or not r.hubert.exists()):
        raise ValueError(f"--features hubert needs --hubert PATH to a local checkpoint (got {r.hubert})")
    for label, value in (
        ("--max-steps", r.max_steps),
        ("--epochs", r.epochs),
        ("--save-every", r.save_every),
        ("--accumulate", r.accumulate),
    ):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{label} {value!r}: use a whole number >= 1")
    if r.checkpointing is not None and r.checkpointing not in CHECKPOINTING:
        raise ValueError(f"--checkpointing {r.checkpointing!r}: use one of {', '.join(CHECKPOINTING)}")
    auto_batch = r.batch_size == "auto"
    batch = None if auto_batch else _batch_size(r.batch_size)
    if r.ema is not None and not (isinstance(r.ema, (int, float)) and 0 < r.ema < 1):
        raise ValueError(
            f"--ema {r.ema!r}: the EMA decay must be between 0 and 1 (exclusive), e.g. 0.999 (each step "
            "keeps 99.9% of the average); leave --ema out for none"
        )
    overrides = dict(r.overrides) | r.settings()
    if batch is not None:
        overrides["train.batch_size"] = batch
    leftovers: list[Path] = []
    saved = resume_file = None
    if r.resume is not None:  # the checkpoint is the truth: its config, changed only where allowed
        if r.resume.is_dir():
            check_unlocked(r.resume)  # another process trains it: refused before anything else is said
        if r.resume.is_dir() and latest_checkpoint(r.resume) is None:
            raise ValueError(_nothing_to_resume(r.resume))
        resume_file = resolve_resume(r.resume)
        if not r.resume.is_dir() and resume_file.parent != RunFolder(resume_file.parent.parent).checkpoints:
            # Its run is the folder above checkpoints/: anywhere else that would be a folder of the
            # user's (~ for ~/Downloads/ckpt.pt), filled with demo data and run files.
            raise ValueError(
                f"--resume {r.resume}: a checkpoint file resumes its own run from RUN/checkpoints/, and this "
                "one is not in a checkpoints folder; pass the run folder, or put the file in "
                "RUN/checkpoints/ first (nothing was changed)"
            )
        run_dir = r.resume if r.resume.is_dir() else resume_file.parent.parent
        check_unlocked(run_dir)
        saved = load_checkpoint(resume_file)  # once: the run continues from this copy
        saved_config = saved.get("config", {})
        _say_what_resume_ignores(r, run_dir)
        cfg = RunConfig.from_dict(saved_config)
    else:
        if r.name is not None:
            check_run_name(r.name)
        # `arvc train .` is named after the folder itself (Path(".").name is "")
        default = r.dataset.resolve().name if r.dataset is not None else "demo"
        run_dir = r.runs_dir / (r.name if r.name is not None else check_run_name(default))
        check_unlocked(run_dir)  # a live run: never restarted nor refused for the products it is writing
        products = run_products(run_dir)
        if latest_checkpoint(run_dir) is not None:
            raise ValueError(
                f"{run_dir} already holds a run ({', '.join(p.name for p in products)}); continue it "
                f"with --resume {run_dir}, or choose another --name (nothing was changed)"
            )
        export = RunFolder(run_dir).export
        if export in products:  # a model, and no checkpoint to continue from
            raise ValueError(
                f"{run_dir} holds an exported model ({export}) but no checkpoint: choose another "
                f"--name, or move {export} out of the run to train it again (nothing was changed)"
            )
        if products:  # killed before its first checkpoint: start it again, keeping what it left
            leftovers = leftovers_of_a_run(run_dir)
        if r.dataset is None:
            _check_the_data_is_the_demo_voice(r, run_dir)
        cfg = load_config(r.config)
        if r.dataset is None and "train.epochs" not in overrides:  # neither --epochs nor --set train.epochs
            overrides["train.epochs"] = DEMO_EPOCHS
        if r.dataset is not None and not r.dataset.is_dir():
            raise ValueError(f"dataset folder {r.dataset} does not exist")
    check_writable(run_dir)
    cfg = apply_overrides(cfg, overrides)
    if r.resume is not None:
        _check_there_is_more_to_train(saved, cfg, r.max_steps, resume_file)
    data_dir = RunFolder(run_dir).data
    settings = data_settings(data_dir, cfg, r.f0, r.features, r.embedder_layer)  # reuses data there
    unused = unused_analysis_flags(
        settings.f0_method, settings.features, rmvpe=r.rmvpe, hubert=r.hubert, embedder_layer=r.embedder_layer
    )
    if r.min_delta is not None and cfg.train.early_stop is None:
        unused.append(
            f"--min-delta {r.min_delta} is used only by early stopping, which is off: add --early-stop "
            "PATIENCE, or drop --min-delta"
        )
    if r.val_every is not None and cfg.train.val_fraction == 0:
        unused.append(
            f"--val-every {r.val_every} has nothing to evaluate: validation is off (val_fraction 0); drop "
            "--val-every, or hold pieces out with --val-fraction F"
        )
    if r.select is not None and cfg.train.val_fraction == 0:
        unused.append(
            f"--select {r.select} has nothing to choose from: validation is off (val_fraction 0); drop "
            "--select, or hold pieces out with --val-fraction F"
        )
    if unused:
        raise ValueError("; ".join(unused) + " (nothing was changed)")
    if r.resume is None:
        check_features_fit_config(cfg, settings.features, r.allow_mel_rvc_config)
    if settings.f0_method == "rmvpe":
        if r.rmvpe is not None:
            rmvpe_model(r.rmvpe)  # a missing or wrong file fails here (loaded once, reused by preprocessing)
        elif not RunFolder(run_dir).filelist.is_file():
            raise ValueError(RMVPE_NEEDED)
    if settings.features == "hubert" and (r.hubert is None or not r.hubert.exists()):
        raise ValueError(f"{data_dir} holds hubert features: pass --hubert PATH (got {r.hubert})")
    processes = check_processes(r.nproc, r.device, cfg.train.batch_size)
    options = TrainOptions(
        run_dir=run_dir, data_dir=data_dir, config=cfg, auto_batch_size=auto_batch, **r.options()
    )
    # every check of the run's settings, as for a run started from Python
    resolved = check_run(options, checkpoint=saved, resume_from=resume_file, flags=True, processes=processes)
    plan = TrainPlan(request, run_dir, settings, resolved)
    if leftovers:
        plan.leftovers, plan.restart_folder = leftovers, restarted_folder(run_dir)
        logger.warning(
            "%s holds a run that stopped before its first checkpoint: starting it again. Reused: %s; "
            "moved to %s (nothing is deleted): %s",
            run_dir,
            f"the preprocessed data in {data_dir}" if plan.folder.filelist.is_file() else "nothing",
            plan.restart_folder,
            ", ".join(p.name for p in leftovers),
        )
    return plan


def _nothing_to_resume(run_dir: Path) -> str:
    """--resume of a run folder without a checkpoint: the run was stopped before its first save. The
    message gives the command that starts it again (same name, same data)."""
    what, folder = [p.name for p in leftovers_of_a_run(run_dir)], RunFolder(run_dir)
    if not what and not folder.data.is_dir():
        return f"--resume {run_dir}: no checkpoint in {folder.checkpoints}; pass runs/NAME of a trained run"
    source = preprocessed_from(folder.data)
    words = ["arvc", "train"]
    if source is not None and not source.demo:
        words.append(str(source.folder) if source.folder is not None else "RECORDINGS")
    words += ["--name", run_dir.name]
    if run_dir.parent != TrainRequest.runs_dir:
        words += ["--runs-dir", str(run_dir.parent)]
    kept = []
    if folder.filelist.is_file():
        kept.append(f"its preprocessed data in {folder.data} is reused")
    if what:
        kept.append(f"{', '.join(what)} are moved to a dated {run_dir.name}/restarted-… folder")
    return (
        f"--resume {run_dir}: no checkpoint in {folder.checkpoints}; the run stopped before its first "
        f"save, so there is nothing to continue. Start it again with: {shlex.join(words)}"
        + (f" ({'; '.join(kept)})" if kept else "")
        + " (nothing was changed)"
    )


def _check_the_data_is_the_demo_voice(r: TrainRequest, run_dir: Path) -> None:
    """No dataset means the demo voice: into a run whose data/ came from the user's recordings (`arvc
    preprocess RECORDINGS --name X`, then `arvc train --name X`) it would preprocess the demo voice beside
    them, and the run would train on both."""
    data_dir = RunFolder(run_dir).data
    source = preprocessed_from(data_dir)
    if source is None or source.demo:
        return
    folder = str(source.folder) if source.folder is not None else "RECORDINGS"
    words = ["arvc", "train", folder, "--name", run_dir.name]
    if r.runs_dir != TrainRequest.runs_dir:
        words += ["--runs-dir", str(r.runs_dir)]
    where = (
        f"from {source.folder}"
        if source.folder is not None
        else "from recordings (their folder is not recorded)"
    )
    raise ValueError(
        f"{data_dir} holds data preprocessed {where}, and no dataset was given, which means the "
        f"demo voice: it would be preprocessed into the same run. Pass the dataset: {shlex.join(words)} "
        "(nothing was changed)"
    )


def _say_what_resume_ignores(r: TrainRequest, run_dir: Path) -> None:
    """A resumed run continues where it is, with its own config and data: say which flags it leaves aside."""
    ignored = [
        flag
        for flag, given in (
            ("--name", r.name is not None),
            ("--runs-dir", r.runs_dir != TrainRequest.runs_dir),
            ("--config", r.config != TrainRequest.config),
        )
        if given
    ]
    if ignored:
        logger.warning(
            "--resume continues %s with its own config, where it is: %s ignored", run_dir, ", ".join(ignored)
        )
    if r.dataset is not None and RunFolder(run_dir).filelist.is_file():
        logger.warning(
            "--resume: %s is not read; the run trains on the data it prepared in %s (to train on new "
            "recordings, start a new run from its weights with --pretrained-g/--pretrained-d)",
            r.dataset,
            RunFolder(run_dir).data,
        )


def _check_there_is_more_to_train(saved: dict, cfg: RunConfig, max_steps: int | None, source: Path) -> None:
    """A resumed run must have something left: it trained nothing, said "trained", and rewrote its export
    and config.json (--epochs below what is done), or took one more step past --max-steps."""
    epochs_done, step = int(saved["epoch"]), int(saved["step"])
    if cfg.train.epochs <= epochs_done:
        raise ValueError(
            f"{source} has trained {epochs_done} of {cfg.train.epochs} epochs: nothing is left to train; "
            f"pass --epochs N with N > {epochs_done} to train on (nothing was changed)"
        )
    if max_steps is not None and max_steps <= step:
        raise ValueError(
            f"--max-steps {max_steps}: {source} is already at step {step}; pass a larger one (it counts "
            "from the start of the run, not from the resume)"
        )


def check_writable(run_dir: Path) -> None:
    """Refuse, before any work, a run folder that cannot be made or written: its nearest existing folder
    is a file, or is read-only (a read-only mount refuses root too)."""
    existing = Path(run_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing} is a file, not a folder: the run cannot be written to {run_dir}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing} is not writable (read-only, or no permission): the run is {run_dir}")


def prepare(plan: TrainPlan, progress=None, device: str | None = None) -> None:
    """Preprocess the run's data unless a resumed run has it already (finished files are kept anyway).
    A run started again first moves what its earlier start left into its restarted-… folder. `device`
    runs the neural analysers instead of the request's (the `--nproc` launcher's "cpu")."""
    r = plan.request
    if plan.leftovers:
        plan.restart_folder.mkdir()
        for path in plan.leftovers:
            if path.exists():
                os.replace(path, plan.restart_folder / path.name)
        logger.info(
            "moved %d leftover(s) of the earlier start to %s", len(plan.leftovers), plan.restart_folder
        )
    if r.resume is None or not plan.folder.filelist.is_file():
        prepare_data(
            plan.cfg,
            plan.run_dir,
            r.dataset,
            f0_method=plan.settings.f0_method,
            features=plan.settings.features,
            hubert_path=r.hubert,
            progress=progress,
            rmvpe_path=r.rmvpe,
            embedder_layer=plan.settings.embedder_layer,
            device=device or r.device,
        )
