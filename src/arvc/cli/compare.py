"""`arvc compare`: flags in, `run_compare` called, a progress bar per optimizer (plain lines where stdout is
not a terminal), the report's path out."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from arvc.cli._app import ConfigOption, app, console, fail
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import DEVICE_HELP

# arvc.compare.runner's DEFAULT_EPOCHS / DEFAULT_SEEDS, written out so `arvc --help` need not import the
# training engine (tests/compare/test_compare.py checks they agree).
DEFAULT_EPOCHS, DEFAULT_SEEDS = 60, 3


class _Bar:
    """Turns run_compare's progress events into one rich task per optimizer."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.task, self.name = progress, None, ""

    def __call__(self, event: str, **info) -> None:
        if event == "run":
            self.name = f"{info['index'] + 1}/{info['count']} {info['name']} seed {info['seed']}"
            self.task = self.progress.add_task(self.name, total=None, stats="")
        elif event == "skip":
            self.progress.update(self.task, total=1, completed=1, stats="already done")
        elif event == "start":
            self.progress.update(self.task, total=info["total"], completed=info["done"])
        elif event == "step":
            losses = info["losses"]
            stats = f"epoch {info['epoch']}  mel {losses['loss_mel']:.2f}  lr {info['lr']:.2e}"
            self.progress.update(self.task, advance=1, stats=stats)


class _Lines:
    """run_compare's progress events as `arvc train`'s plain progress lines, each led by the contestant, for
    output that is not a terminal (nohup, CI logs), where a bar would be drawn once at the end."""

    def __init__(self) -> None:
        self.lines = None

    def __call__(self, event: str, **info) -> None:
        from arvc.cli.train import _LineCallbacks

        if event == "run":  # (the log says which contestant starts, or is skipped as already done)
            label = f"{info['index'] + 1}/{info['count']} {info['name']} seed {info['seed']}: "
            self.lines = _LineCallbacks(label=label)
        elif event == "start":
            self.lines.on_start(info["epochs"], info["steps_per_epoch"], info["start_epoch"])
        elif event == "step":
            self.lines.on_step(info["epoch"], info["step"], info["losses"], info["lr"])
        elif event == "epoch":
            self.lines.on_epoch(info["epoch"], info["losses"])


@app.command()
def compare(
    dataset: Annotated[
        Path | None, typer.Argument(help="Folder of recordings; omit to compare on the demo voice.")
    ] = None,
    optimizers: Annotated[
        str, typer.Option(help="'all' or comma-separated names (see `arvc optimizers`, plus variants).")
    ] = "all",
    epochs: Annotated[
        int, typer.Option(min=1, help="Epochs per run (60: 300 steps on the demo voice at batch 8).")
    ] = DEFAULT_EPOCHS,
    seeds: Annotated[
        int,
        typer.Option(min=1, help="Seeds per optimizer (seed, seed+1, ...); the table shows their spread."),
    ] = DEFAULT_SEEDS,
    schedule: Annotated[
        str,
        typer.Option(
            help="paired (each optimizer's own schedule), same (all on RVC's exponential) or one of "
            "cosine, inverse_sqrt, exponential, constant for all."
        ),
    ] = "paired",
    warmup_epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Warm-up of inverse_sqrt, in epochs (default: a tenth of the run, 1-10)."),
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    name: Annotated[
        str | None, typer.Option(help="Comparison name (OUT_DIR/NAME); default: dataset or 'demo'.")
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Where comparisons are kept.")] = Path("compare"),
    config: ConfigOption = "tiny",
    seed: Annotated[
        int, typer.Option(help="First seed (runs use seed ... seed+seeds-1); also makes the held-out split.")
    ] = 1234,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size (default: the config's).")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop each run after N steps.")] = None,
    device: Annotated[str, typer.Option(help=f"{DEVICE_HELP}.")] = AUTO_DEVICE,
    allow_mel_rvc_config: Annotated[
        bool,
        typer.Option(
            "--allow-mel-rvc-config",
            help="For testing only: compare on a v1-*/v2-* config (a comparison trains on mel features, "
            "which RVC's tools would not feed its models).",
        ),
    ] = False,
    precision_study: Annotated[
        bool,
        typer.Option("--precision-study", help="Run the bf16 precision study instead (20k cheap steps)."),
    ] = False,
    study_steps: Annotated[int, typer.Option(min=200, help="Steps of the precision study.")] = 20_000,
) -> None:
    """Train the same voice with each optimizer (same data, seed and config); report how they compare."""
    if precision_study:
        _run_precision_study(out_dir / (name or "precision-study"), study_steps)
        return
    from arvc.compare.report import short_run_warning, short_runs
    from arvc.compare.runner import check_request, run_compare
    from arvc.data.preprocess import DataError
    from arvc.train.checkpoint import CheckpointError
    from arvc.train.errors import SaveInterrupted
    from arvc.train.faults import exit_status
    from arvc.train.loop import TrainError

    overrides = {"train.batch_size": batch_size} if batch_size is not None else None
    try:
        check_request(
            dataset, optimizers, schedule, precision, device, config, overrides, allow_mel_rvc_config
        )
    except ValueError as error:
        fail(str(error))
    target = out_dir / (name or (dataset.name if dataset is not None else "demo"))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) if console.is_terminal else contextlib.nullcontext() as bar:
            result = run_compare(
                dataset,
                target,
                optimizers,
                epochs,
                config=config,
                seed=seed,
                precision=precision,
                progress=_Bar(bar) if bar is not None else _Lines(),
                seeds=seeds,
                schedule=schedule,
                warmup_epochs=warmup_epochs,
                max_steps=max_steps,
                overrides=overrides,
                device=device,
                allow_mel_rvc_config=allow_mel_rvc_config,
            )
    except SaveInterrupted as error:  # a second Ctrl-C during a contestant's save: the signal's status, not 1
        fail(str(error), error.exit_status)
    except (DataError, TrainError, CheckpointError, ValueError) as error:
        fail(str(error))
    status = exit_status(result.stopped_by)  # as `arvc train`: `arvc compare ... && next` stops here
    if status is not None:  # (the report of the runs finished so far is written)
        console.print(
            f"stopped by {result.stopped_by}; run the same command again to continue\n"
            f"(exit status {status}: the comparison is not finished)",
            soft_wrap=True,
        )
        raise typer.Exit(status)
    if result.stopped_by:  # the web UI's stop request (not reachable from here, kept for the API's sake)
        console.print(f"stopped by {result.stopped_by}; run the same command again to continue")
        return
    for name, seed, error in result.failures:
        console.print(f"[yellow]{name} seed {seed} failed:[/yellow] {error}", highlight=False)
    if not result.ranked:  # a report with nothing in it is not a success
        fail(f"no contestant finished; the errors are above and in {target / 'report.md'}")
    short = short_runs(result.results)
    if short is not None:
        console.print(
            f"[yellow]warning:[/yellow] {short_run_warning(short)}", highlight=False, soft_wrap=True
        )
    console.print(f"report: {target / 'report.md'} and {target / 'report.html'}")


def _run_precision_study(folder: Path, steps: int) -> None:
    """fp32 AdamW vs AnyPrecisionAdamW bf16 with/without Kahan and stochastic rounding (see the docs)."""
    import json
    from dataclasses import asdict

    from arvc.compare.precision_study import plot_precision_study, precision_study

    console.print(f"precision study: 5 configurations x {steps} steps (about 2 minutes per 20k on a CPU)")
    runs = precision_study(steps=steps)
    folder.mkdir(parents=True, exist_ok=True)
    plot = plot_precision_study(runs, folder / "precision_study.png")
    (folder / "precision_study.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    for run in runs:
        console.print(f"  {run.name:40s} distance from fp32 {run.distance[-1]:.3e}  loss {run.loss[-1]:.3e}")
    console.print(f"figure: {plot}")
