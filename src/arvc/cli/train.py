"""`arvc train` and `arvc preprocess`: flags in, the training library called, progress and results out."""

from __future__ import annotations

import contextlib
import datetime
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from arvc.cli._app import ConfigOption, EmbedderLayerOption, RmvpeOption, app, console, fail
from arvc.config import BETTER, DEMO_EPOCHS, TrainConfig
from arvc.data.outputs import RunFolder
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import DEVICE_HELP
from arvc.train.callbacks import Callbacks
from arvc.train.optimizers import DEFAULT_LR, DEFAULT_OPTIMIZER

# --- training -------------------------------------------------------------------------------------------


_DEFAULTS = TrainConfig()  # what a flag left out means, for the help texts


def _short(value: float) -> str:
    """A default as a person writes it: 1e-3 and 1e-9, but 0.01 and 0.8."""
    plain, power = f"{value:g}", f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e+")
    return power if float(power) == value and len(power) < len(plain) else plain


PROGRESS_SECONDS = 30.0  # output that is not a terminal: a progress line at most this often (and per epoch)


class _Every:
    """True at most once per `seconds` (the first time too)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, None

    def due(self) -> bool:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.seconds:
            return False
        self.last = now
        return True


def _line(text: str) -> None:
    """One plain line on stdout, never wrapped or marked up (output that is not a terminal)."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def _stats(losses: dict, lr: float) -> str:
    return f"mel {losses['loss_mel']:.2f}  G {losses['loss_g']:.2f}  D {losses['loss_d']:.2f}  lr {lr:.2e}"


class _LineCallbacks(Callbacks):
    """Training progress as plain lines, for output that is not a terminal (nohup, Colab, CI logs), where a
    bar is drawn once at the end: a line after every epoch and, within one, at most every PROGRESS_SECONDS,
    with epoch i/M, step, losses, seconds per step and the time left."""

    def __init__(self, every: float = PROGRESS_SECONDS, label: str = "") -> None:
        self.every, self.label = _Every(every), label  # label: what trains, before each line (compare)

    def on_start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.total_epochs, self.total_steps = total_epochs, total_epochs * steps_per_epoch
        self.started, self.first_step = time.monotonic(), None
        self.every.due()  # the first line comes after a step, not before

    def on_step(self, epoch: int, step: int, losses: dict, lr: float) -> None:
        if self.first_step is None:
            self.first_step = step - 1  # steps done before this process (a resumed run)
        self.epoch, self.step, self.losses, self.lr = epoch, step, losses, lr
        if self.every.due():
            self._line()

    def on_epoch(self, epoch: int, losses: dict) -> None:
        if self.first_step is not None:  # (a step of it ran in this process)
            self.every.due()
            self._line()

    def _line(self) -> None:
        # seconds per step over this process's steps, validation and checkpoints included: what is left
        # takes as long
        per_step = (time.monotonic() - self.started) / max(1, self.step - self.first_step)
        left = datetime.timedelta(seconds=round(per_step * max(0, self.total_steps - self.step)))
        _line(
            f"{self.label}epoch {self.epoch}/{self.total_epochs}  step {self.step}/{self.total_steps}  "
            f"{_stats(self.losses, self.lr)}  {per_step:.2f} s/step  ETA {left}"
        )


class _ProgressCallbacks(Callbacks):
    """A rich progress bar for the training loop: epoch, step, losses, lr, it/s, ETA."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None

    def on_start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.total_epochs = total_epochs
        self.task = self.progress.add_task(
            "train",
            total=total_epochs * steps_per_epoch,
            completed=(start_epoch - 1) * steps_per_epoch,
            epoch=f"{start_epoch}/{total_epochs}",
            stats="",
        )

    def on_step(self, epoch: int, step: int, losses: dict, lr: float) -> None:
        stats = _stats(losses, lr)
        self.progress.update(self.task, advance=1, epoch=f"{epoch}/{self.total_epochs}", stats=stats)


class _SpeedColumn(ProgressColumn):
    """Steps per second (rich's own speed column counts bytes)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "-- it/s")


def _progress() -> Progress:
    return Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        _SpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@contextlib.contextmanager
def _preprocess_progress():
    """Yields the library's `progress(done, total, name)` callback: a bar on a terminal, else a line at most
    every PROGRESS_SECONDS. Nothing is shown until a file is analysed (data reused as it is shows no
    bar that would look like a redo; the library says it reuses it)."""
    with contextlib.ExitStack() as stack:
        shown: dict = {}

        def on_terminal(done: int, total: int, what: str) -> None:
            if not shown:
                shown["bar"] = bar = stack.enter_context(
                    Progress(
                        TextColumn("preprocessing"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TextColumn("{task.description}"),
                        console=console,
                    )
                )
                shown["task"] = bar.add_task("", total=total)
            shown["bar"].update(shown["task"], completed=done, total=total, description=str(what))

        every = _Every(PROGRESS_SECONDS)

        def as_lines(done: int, total: int, what: str) -> None:
            if done and (every.due() or done == total):
                _line(f"preprocessing {done}/{total} {what}")

        yield on_terminal if console.is_terminal else as_lines


def _parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(
                f"{item!r}: expected KEY=VALUE, e.g. model.hidden_channels=96", param_hint="--set"
            )
        overrides[key.strip()] = value.strip()
    return overrides


def _without_nproc(args: list[str]) -> list[str]:
    """The command line again, minus --nproc N (what each of the N processes runs)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _parse_betas(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        beta1, beta2 = (float(v) for v in text.split(","))
    except ValueError as error:
        raise typer.BadParameter(
            f"{text!r}: expected two numbers, e.g. 0.8,0.99", param_hint="--betas"
        ) from error
    return beta1, beta2


@app.command()
def train(
    dataset: Annotated[
        Path | None, typer.Argument(help="Folder of recordings; omit to train the demo voice.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Run name (runs/NAME); default: the dataset folder or 'demo'.")
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs are kept.")] = Path("runs"),
    config: ConfigOption = "tiny",
    optimizer: Annotated[
        str | None, typer.Option(help=f"Any name from `arvc optimizers` (default {DEFAULT_OPTIMIZER}).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help=f"Learning rate (default {_short(DEFAULT_LR)}).")] = None,
    betas: Annotated[
        str | None,
        typer.Option(help="beta1,beta2 (default RVC's {},{}).".format(*map(_short, _DEFAULTS.betas))),
    ] = None,
    eps: Annotated[
        float | None,
        typer.Option(
            help=f"Epsilon in Adam's meaning (default RVC's {_short(_DEFAULTS.eps)}; AdaBelief/AdaBeliefV2 "
            f"get its square, {_short(_DEFAULTS.eps**2)}; a value given here is used as is)."
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            help=f"Decoupled weight decay (default: RVC's {_short(_DEFAULTS.weight_decay)}, for every "
            "optimizer)."
        ),
    ] = None,
    use_8bit: Annotated[
        bool | None, typer.Option("--use-8bit", help="bitsandbytes AdamW8bit (arvc\\[bnb]).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto (default: the device's safe choice, see docs/training.md; on resume the run's), "
            "fp32, bf16 or fp16."
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help=f"Epochs (config: {_DEFAULTS.epochs}; the demo: {DEMO_EPOCHS}).")
    ] = None,
    batch_size: Annotated[
        str | None,
        typer.Option(
            help=f"Batch size (default {_DEFAULTS.batch_size}), or auto: the largest that fits the "
            "device's free memory."
        ),
    ] = None,
    accumulate: Annotated[
        int | None,
        typer.Option(min=1, help="Micro-batches per step: batch N x batch-size, one micro-batch's memory."),
    ] = None,
    checkpointing: Annotated[
        str | None,
        typer.Option(
            help="Activation checkpointing: auto (default: on only when the batch does not fit), on, off."
        ),
    ] = None,
    save_every: Annotated[int | None, typer.Option(min=1, help="Checkpoint every N epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the models (needs a C++ compiler; for GPUs: on a CPU it measured slower).",
        ),
    ] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue a run: runs/NAME or one checkpoint file.")
    ] = None,
    f0: Annotated[
        str | None,
        typer.Option(
            help="Pitch: pm, harvest, dio, crepe(-tiny) or rmvpe (default: the preprocessed data's, else pm)."
        ),
    ] = None,
    rmvpe: RmvpeOption = None,
    features: Annotated[
        str | None,
        typer.Option(help="Content features: mel or hubert (default: the preprocessed data's, else mel)."),
    ] = None,
    hubert: Annotated[
        Path | None, typer.Option(help="Local HuBERT/ContentVec checkpoint for --features hubert.")
    ] = None,
    embedder_layer: EmbedderLayerOption = None,
    allow_mel_rvc_config: Annotated[
        bool,
        typer.Option(
            "--allow-mel-rvc-config",
            help="For testing only: train a v1-*/v2-* config on mel features (the model works in arvc only; "
            "no RVC .pth is exported).",
        ),
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override KEY=VALUE (repeatable).")
    ] = None,
    pretrained_g: Annotated[
        Path | None, typer.Option(help="Pretrained generator to fine-tune from (RVC f0G*.pth or arvc).")
    ] = None,
    pretrained_d: Annotated[
        Path | None, typer.Option(help="Pretrained discriminator (RVC f0D*.pth or arvc).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after N steps (a quick look).")] = None,
    device: Annotated[
        str, typer.Option(help=f"{DEVICE_HELP}; with several processes: cuda or auto, one GPU each.")
    ] = AUTO_DEVICE,
    nproc: Annotated[
        int | None,
        typer.Option(min=1, help="Train with N processes on this machine (DDP; see docs/distributed.md)."),
    ] = None,
    zero: Annotated[
        bool, typer.Option("--zero", help="Shard optimizer state over the processes (ZeRO).")
    ] = False,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help=f"Pieces held out for validation (default {_short(_DEFAULTS.val_fraction)}; at least 2, "
            "at most 20; 0: none)."
        ),
    ] = None,
    val_every: Annotated[
        int | None, typer.Option(min=1, help="Evaluate on the held-out pieces every K epochs (default 1).")
    ] = None,
    early_stop: Annotated[
        int | None,
        typer.Option(min=1, metavar="PATIENCE", help="Stop after PATIENCE evaluations without improvement."),
    ] = None,
    min_delta: Annotated[
        float | None, typer.Option(min=0.0, help="Early stopping: smallest held-out mel L1 gain that counts.")
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            metavar="DECAY",
            help="Keep an EMA of the generator's weights (e.g. 0.999); validation, samples and exports use "
            "it. Not with a schedule-free optimizer (it averages already).",
        ),
    ] = None,
    select: Annotated[
        str | None,
        typer.Option(
            metavar="METRIC",
            help=f"What chooses the best model (export/best): {', '.join(BETTER)} (default "
            f"{TrainConfig.select}; docs/scoring.md). Fixed for a run.",
        ),
    ] = None,
) -> None:
    """Train a voice model (with no arguments: the embedded demo voice, about 10 minutes on a CPU)."""
    from arvc._files import WriteError
    from arvc.data.preprocess import DataError
    from arvc.modelfile.export import ExportError
    from arvc.modelfile.read import PretrainedError
    from arvc.train.checkpoint import CheckpointError
    from arvc.train.distributed import DistributedError, launch, process_group
    from arvc.train.errors import SaveInterrupted
    from arvc.train.faults import exit_status
    from arvc.train.loop import TrainError
    from arvc.train.loop import train as run_training
    from arvc.train.request import TrainRequest, plan_training
    from arvc.train.request import prepare as prepare_run
    from arvc.train.runlock import run_lock

    try:  # everything the user typed is checked before any work starts
        plan = plan_training(
            TrainRequest(
                dataset=dataset,
                name=name,
                runs_dir=runs_dir,
                config=config,
                optimizer=optimizer,
                lr=lr,
                betas=_parse_betas(betas),
                eps=eps,
                weight_decay=weight_decay,
                use_8bit=use_8bit,
                precision=precision,
                epochs=epochs,
                batch_size=batch_size,
                accumulate=accumulate,
                checkpointing=checkpointing,
                save_every=save_every,
                seed=seed,
                compile=compile,
                resume=resume,
                f0=f0,
                rmvpe=rmvpe,
                features=features,
                hubert=hubert,
                embedder_layer=embedder_layer,
                allow_mel_rvc_config=allow_mel_rvc_config,
                overrides=_parse_overrides(set_ or []),
                pretrained_g=pretrained_g,
                pretrained_d=pretrained_d,
                max_steps=max_steps,
                device=device,
                nproc=nproc,
                zero=zero,
                val_fraction=val_fraction,
                val_every=val_every,
                early_stop=early_stop,
                min_delta=min_delta,
                ema=ema,
                select=select,
            )
        )
    except (ValueError, PretrainedError, ImportError, TrainError, CheckpointError) as error:  # DataError too
        fail(str(error))
    run_dir = plan.run_dir

    launcher = nproc is not None and nproc > 1  # this process only starts and waits for the ranks

    def prepare() -> None:
        # The launcher preprocesses on the CPU: an analyser run here on CUDA (rmvpe, hubert, crepe) would
        # keep a CUDA context (hundreds of MB) on GPU 0 beside rank 0's for the whole run, since a process
        # cannot give its context back. (Preprocessing in rank 0 instead would keep the other ranks waiting
        # in a collective, which fails after distributed.TIMEOUT on a large dataset.)
        with _preprocess_progress() as progress:
            prepare_run(plan, progress, device="cpu" if launcher else None)

    try:
        # under torchrun: join the other processes; one process trains a run at a time (its lock)
        with process_group(device) as ranks, run_lock(run_dir):
            if not ranks.is_main:
                logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports for all
            ranks.on_main(prepare, "prepare the data")  # once, before any process reads it
            if launcher:  # start N processes that run this command without --nproc
                # each loads the resume checkpoint itself: this process, which only waits, lets its copy go
                plan.run_settings = replace(plan.run_settings, checkpoint=None)
                raise typer.Exit(launch(nproc, _without_nproc(sys.argv[1:])))
            result = _run(ranks.is_main, run_training, plan.run_settings)
    except SaveInterrupted as error:  # a second Ctrl-C during the save: the signal's status, not 1
        fail(str(error), error.exit_status)
    except (
        DataError,
        TrainError,
        CheckpointError,
        PretrainedError,
        ExportError,
        WriteError,
        ImportError,
        DistributedError,
        OSError,  # a folder that turned read-only or full under a write without its own message
    ) as error:
        fail(str(error))
    status = exit_status(result.stopped_by)
    if not ranks.is_main:  # rank 0 reports; every rank exits with the same status
        raise typer.Exit(status or 0)
    _report(plan, result, status, hubert, rmvpe)


def _report(plan, result, status: int | None, hubert: Path | None, rmvpe: Path | None) -> None:
    """What `arvc train` prints when the run returns: how to continue an interrupted run (and its exit
    status), or what a finished one made, its held-out scores and the command that listens to it."""
    run_dir, settings = plan.run_dir, plan.settings
    if status is not None:  # non-zero, so that `arvc train ... && arvc export ...` stops here
        console.print(
            f"stopped by {result.stopped_by} after step {result.steps_done}, before the end of training; "
            f"checkpoint {result.last_checkpoint} saved\n"
            f"continue with: arvc train --resume {run_dir}\n"
            f"(exit status {status}: the run is not finished)",
            soft_wrap=True,
        )
        raise typer.Exit(status)
    console.print(result.summary(run_dir))
    for kind, path in result.exports.items():
        console.print(f"  {kind}: {path}")
    best, last = result.best, result.last_validation
    if last is not None:
        from arvc.train.validation import describe_scores, metric_label

        select = plan.cfg.train.select
        if best is not None:
            console.print(
                f"  held-out {metric_label(select)}: best {best[select]:.4f} at epoch "
                f"{best['epoch']} (export/best), last {last[select]:.4f} at epoch {last['epoch']}"
            )
        else:  # e.g. speaker similarity before the generator makes speech
            console.print(
                f"  held-out {metric_label(select)}: no evaluation had a value of it (nan at each; "
                "docs/scoring.md says when a score has none), so no best model was chosen: the export is "
                "the last epoch's",
                soft_wrap=True,
            )
        console.print(
            f"  held-out at epoch {last['epoch']}: mel L1 {last['mel_l1']:.4f}, STFT {last['stft']:.4f}"
            + describe_scores(last)
        )
    folder = RunFolder(run_dir)
    console.print(f"  TensorBoard: tensorboard --logdir {folder.tensorboard}   loss plot: {folder.loss_plot}")
    command = listen_command(
        run_dir, result, settings.f0_method, settings.features, hubert, rmvpe, settings.embedder_layer
    )
    console.print(f"  listen: {command}", soft_wrap=True, markup=False, highlight=False)  # one line to copy


def listen_command(
    run_dir: Path,
    result,
    f0_method: str,
    features: str,
    hubert: Path | None,
    rmvpe: Path | None = None,
    embedder_layer: int | None = None,
) -> str:
    """The `arvc infer` command that converts a held-out recording (or the user's own) with the best model.

    The held-out originals under samples/original are pieces the model never trained on; without them
    (no validation) the input is the user's to fill in."""

    folder = RunFolder(run_dir)
    model = result.exports.get("best", folder.export)
    originals = sorted(folder.sample_originals.glob("*.wav")) if result.samples_dir else []
    source = originals[0] if originals else Path("YOUR_RECORDING.wav")
    output = folder.samples / f"{source.stem}_converted.wav"
    words = ["arvc", "infer", str(model), str(source), str(output), "--f0", f0_method]
    if f0_method == "rmvpe":
        words += ["--rmvpe", str(rmvpe) if rmvpe is not None else "RMVPE.pt"]
    if features == "hubert":
        words += ["--features", "hubert", "--hubert", str(hubert)]
        if embedder_layer is not None:
            words += ["--embedder-layer", str(embedder_layer)]
    return shlex.join(words)


def _run(show: bool, run_training, settings):
    """Train with a progress bar, or progress lines where stdout is not a terminal (rank 0 of a
    multi-process run only); the result."""
    if not show:
        return run_training(settings)
    if not console.is_terminal:
        return run_training(settings, _LineCallbacks())
    with _progress() as bar:
        return run_training(settings, _ProgressCallbacks(bar))


@app.command()
def preprocess(
    dataset: Annotated[Path, typer.Argument(help="Folder of recordings (wav, flac, mp3, ogg).")],
    name: Annotated[str, typer.Option(help="Run name: data goes to runs/NAME/data.")],
    runs_dir: Annotated[Path, typer.Option(help="Where runs are kept.")] = Path("runs"),
    sample_rate: Annotated[int, typer.Option(help="16000 (tiny), 32000, 40000 or 48000.")] = 40000,
    f0: Annotated[str, typer.Option(help="pm, harvest, dio, crepe, crepe-tiny or rmvpe.")] = "pm",
    rmvpe: RmvpeOption = None,
    features: Annotated[str, typer.Option(help="mel (built in) or hubert.")] = "mel",
    feature_dim: Annotated[
        int | None,
        typer.Option(help="Feature size (mel: 80; hubert: 768, or 256 for v1 through final_proj)."),
    ] = None,
    hubert: Annotated[Path | None, typer.Option(help="Local HuBERT/ContentVec checkpoint.")] = None,
    embedder_layer: EmbedderLayerOption = None,
    device: Annotated[
        str, typer.Option(help=f"Where hubert, rmvpe and crepe run: {DEVICE_HELP}.")
    ] = AUTO_DEVICE,
) -> None:
    """Slice, resample and analyse recordings for training (re-running skips finished files)."""
    from arvc.data.outputs import check_run_name
    from arvc.data.preprocess import preprocess as run_preprocess
    from arvc.train.runlock import RunLocked, run_lock

    dim = feature_dim or (768 if features == "hubert" else 80)
    try:
        check_run_name(name)  # --f0 rmvpe without --rmvpe: preprocess refuses it before any work
        # a run another process trains is refused (its data would change under the trainer), and no trainer
        # starts on data still being written
        with run_lock(runs_dir / name), _preprocess_progress() as progress:
            result = run_preprocess(
                dataset,
                RunFolder(runs_dir / name).data,
                sample_rate,
                f0,
                features=features,
                feature_dim=dim,
                hubert_path=hubert,
                progress=progress,
                rmvpe_path=rmvpe,
                embedder_layer=embedder_layer,
                device=device,
            )
    except (
        ValueError,
        ImportError,
        OSError,
        RunLocked,
    ) as error:  # DataError: ValueError, WriteError: OSError
        fail(str(error))
    console.print(
        f"{result.n_pieces} pieces ({result.seconds:.1f} s) from {result.n_sources} files in {result.run_dir}"
    )
