"""`arvc optimizers` and `arvc recommend`: the optimizer registry and the guide's advice, printed.

The console is looked up on :mod:`arvc.cli._app` at call time, so tests that swap it see this output.
"""

from __future__ import annotations

import json
from typing import Annotated

import torch
import typer
from rich.table import Table

from arvc.cli import _app
from arvc.cli._app import app
from arvc.config import PRECISIONS, TrainConfig
from arvc.optim import OPTIMIZERS, get_spec, state_bytes_per_param
from arvc.optim.recommend import GUIDE_EPOCHS, recommend

DATASET_PLACEHOLDER = "DATASET/"


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _stars(rating: int) -> str:
    return "★" * rating + "☆" * (5 - rating)


def _spec_summary(spec) -> dict:
    return {"rating": spec.rating, "name": spec.name, "category": spec.category, "best_for": spec.best_for}


def _spec_details(spec) -> dict:
    bytes_per_param = {"float32 params": round(state_bytes_per_param(spec.name), 2)}
    if spec.bf16_weights_kwargs is not None:
        bytes_per_param["bfloat16 params, bf16-weights mode"] = round(
            state_bytes_per_param(spec.name, param_dtype=torch.bfloat16, **spec.bf16_weights_kwargs), 2
        )
    config = TrainConfig()  # the Adam-family values every shipped config holds (RVC's)
    in_a_run = spec.run_hyperparameters(
        config_betas=config.betas, config_eps=config.eps, config_weight_decay=config.weight_decay
    )
    return {
        **_spec_summary(spec),
        "description": spec.description,
        "paper": spec.paper,
        "class": f"{spec.cls.__module__}.{spec.cls.__qualname__}",
        "supported_kwargs": list(spec.supported_kwargs),
        "weight_decay": spec.weight_decay,
        "paired_scheduler": spec.scheduler_label,
        # Schedule-free (read off the class): which weights the parameters hold, and which to evaluate.
        "weights": (
            "y while training, the average x after optimizer.eval() (schedule-free: evaluate x)"
            if spec.schedule_free
            else "the parameters (one set)"
        ),
        "fused_available": {device: spec.fused_on(device) for device in _devices()},
        "state_bytes_per_param": bytes_per_param,
        # What `arvc train --optimizer NAME` builds it with unless --betas/--eps/--weight-decay are given.
        "run_hyperparameters": {**in_a_run, "betas": list(in_a_run["betas"])},
        "run_eps": spec.eps_rule,
    }


@app.command()
def optimizers(
    name: Annotated[str | None, typer.Argument(help="Show one optimizer in detail.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the rated optimizers, or describe one."""
    if name is not None:
        try:
            details = _spec_details(get_spec(name))
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="NAME") from error
        if as_json:
            typer.echo(json.dumps(details, indent=2))
            return
        table = Table(title=f"{details['name']}  {_stars(details['rating'])}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in details.items():
            if key in ("name", "rating"):
                continue
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(value)
            table.add_row(key.replace("_", " "), str(value))
        _app.console.print(table)
        return
    rows = [_spec_summary(spec) for spec in OPTIMIZERS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="arvc optimizers")
    for column in ("rating", "name", "category", "best for"):
        table.add_column(column)
    for row in rows:
        table.add_row(_stars(row["rating"]), row["name"], row["category"], row["best_for"])
    _app.console.print(table)


@app.command(name="recommend")
def recommend_command(
    epochs: Annotated[int, typer.Option(min=1, help="Planned number of epochs.")] = GUIDE_EPOCHS,
    precision: Annotated[str, typer.Option(help=f"One of {', '.join(PRECISIONS)}.")] = "fp32",
    early_stop: Annotated[
        bool,
        typer.Option(
            "--early-stop", help="The run will stop on held-out validation (no fixed number of epochs)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the guide's recommended optimizer and settings for a run, with the reason."""
    try:
        advice = recommend(epochs, precision, early_stop=early_stop)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    if as_json:
        typer.echo(json.dumps(advice.__dict__, indent=2))
        return
    options = ", ".join(f"{k}={v}" for k, v in advice.options.items())
    _app.console.print(
        f"[bold]{advice.optimizer}[/bold]  lr {advice.lr:g}, batch {advice.batch_size}, "
        f"{advice.epochs} epochs" + (f" ({options})" if options else "")
    )
    command = (  # DATASET/ stands out: copied as is, a command without a dataset trains the demo voice
        f"arvc train {DATASET_PLACEHOLDER} --optimizer {advice.optimizer} --lr {advice.lr:g} "
        f"--batch-size {advice.batch_size} --epochs {advice.epochs} --precision {precision}"
        + (f" --early-stop {advice.early_stop}" if advice.early_stop else "")
    )
    _app.console.print(f"  {command}", soft_wrap=True, highlight=False, markup=False)
    _app.console.print(f"  ({DATASET_PLACEHOLDER}: your folder of recordings)", highlight=False, markup=False)
    _app.console.print(advice.reason)
