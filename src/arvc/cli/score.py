"""`arvc score`: objective scores of conversions against their time-aligned originals (docs/scoring.md).

Registered on the main app when :mod:`arvc.cli` imports this module. The console is looked up
on :mod:`arvc.cli._app` at call time, so tests that swap it see this module's output too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from arvc.cli import _app
from arvc.cli._app import RmvpeOption, app, fail


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return sum(values) / len(values) if values else math.nan


def _cell(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


def _json_safe(row: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


@app.command(name="score")
def score_command(
    original: Annotated[Path, typer.Argument(help="The original recording, or a folder of them.")],
    converted: Annotated[
        Path,
        typer.Argument(help="Its conversion/reconstruction (same take, time-aligned), or a folder of them."),
    ],
    f0: Annotated[
        str, typer.Option(help="Pitch extractor: pm, harvest, dio, crepe, crepe-tiny, rmvpe.")
    ] = "pm",
    rmvpe: RmvpeOption = None,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated: f0 (RMSE, correlation, V/UV), mcd, pesq, stoi.")
    ] = "f0,mcd,pesq,stoi",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Score conversions against their originals: F0 RMSE/correlation, V/UV error, MCD, PESQ, STOI.

    Folders are paired by relative path without the extension, subfolders too (a/b.wav with a/b.flac).
    No DTW: each conversion must be of the same take, time-aligned with its original.
    """
    from arvc.audio.io import AudioLoadError
    from arvc.audio.score import COLUMNS, check_metrics, pair_recordings, score_files

    chosen = tuple(m.strip() for m in metrics.split(",") if m.strip())
    try:
        check_metrics(chosen, f0, rmvpe)
        pairs = pair_recordings(original, converted)  # names, lengths: headers only
    except (ValueError, ImportError, AudioLoadError) as error:
        fail(str(error))
    rows = []
    for name, ref_path, conv_path in pairs:
        try:
            result = score_files(ref_path, conv_path, f0_method=f0, metrics=chosen, rmvpe_path=rmvpe)
        except (ValueError, AudioLoadError) as error:
            fail(f"{conv_path}: {error}")
        rows.append({"name": name, **result.as_dict()})
    keys = [key for key, _, _ in COLUMNS if any(not math.isnan(r[key]) for r in rows)]
    mean = {key: _mean(rows, key) for key in keys}
    if as_json:
        report = {"f0_method": f0, "recordings": [_json_safe(r) for r in rows], "mean": _json_safe(mean)}
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"{converted} against {original} (pitch: {f0})")
    table.add_column("recording")
    shown = [c for c in COLUMNS if c[0] in keys]
    for _, header, _ in shown:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(row["name"], *(_cell(row[key], fmt) for key, _, fmt in shown))
    if len(rows) > 1:
        table.add_row("mean", *(_cell(mean[key], fmt) for key, _, fmt in shown), style="bold")
    _app.console.print(table)
