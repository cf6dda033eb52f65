"""`arvc bench`: time every optimizer's step against torch's fused AdamW and the installed peers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from arvc.bench.plot import plot_ratios
from arvc.bench.report import rich_tables, save_json
from arvc.bench.runner import BenchConfig, run_bench
from arvc.bench.shapes import format_size, parse_sizes
from arvc.cli._app import app, console
from arvc.device import resolve_device

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@app.command()
def bench(
    sizes: Annotated[str, typer.Option(help="Model sizes (RVC generator tensors, scaled).")] = "1M,8.5M,36M",
    dtype: Annotated[str, typer.Option(help="Parameter dtype: float32, bfloat16 or float16.")] = "float32",
    device: Annotated[
        str, typer.Option(help="cpu (default: timings are compared on one device), cuda, cuda:N or auto.")
    ] = "cpu",
    repeats: Annotated[int, typer.Option(min=1, help="Timed, interleaved rounds.")] = 20,
    warmup: Annotated[int, typer.Option(min=1, help="Untimed steps first (the first is reported).")] = 3,
    optimizers: Annotated[
        str, typer.Option(help="all, or comma-separated keys/packages: arvc, torch, peers, torchao, …")
    ] = "all",
    all_paths: Annotated[
        bool, typer.Option("--all-paths", help="Also time every for-loop/foreach/fused variant of arvc's.")
    ] = False,
    budget: Annotated[
        float | None, typer.Option(help="Stop repeating an optimizer after this many seconds (min 3 steps).")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads (default: torch's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also save the JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a bar chart of the ratios (PNG).")] = None,
) -> None:
    """Time optimizer.step() for every optimizer, interleaved, relative to torch's fused AdamW."""
    try:
        size_list = parse_sizes(sizes)
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
        config = BenchConfig(
            sizes=size_list,
            dtype=_DTYPES[dtype],
            device=str(resolve_device(device).device),
            repeats=repeats,
            warmup=warmup,
            optimizers=optimizers,
            all_paths=all_paths,
            budget_s=budget,
            threads=threads,
        )
        from arvc.bench.cases import all_cases, select_cases

        select_cases(all_cases(all_paths), optimizers)  # a typo fails now, not after the first size
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error

    if as_json:
        result = run_bench(config, progress=lambda message: None)
    else:
        with console.status(f"benchmarking {', '.join(format_size(s) for s in size_list)}") as status:
            result = run_bench(config, progress=lambda message: status.update(message))
    if output is not None:
        save_json(result, output)
    if plot is not None:
        plot_ratios(result, plot)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for table in rich_tables(result):
        console.print(table)
    bandwidth = result["copy_bandwidth_gbs"]
    method = next((r["memory_method"] for r in result["rows"] if r["status"] == "ok"), "n/a")
    console.print(
        f"copy bandwidth {bandwidth['used']:.1f} GB/s; ratios are medians against torch fused AdamW of this "
        f"run; memory: {method}"
    )
    for path in (output, plot):
        if path is not None:
            console.print(f"wrote {path}")
