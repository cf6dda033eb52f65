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
from arvc.cli._app import EmbedderLayerOption, RmvpeOption, app, fail
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import DEVICE_HELP


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return sum(values) / len(values) if values else math.nan


def _cell(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


def _json_safe(row: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


@app.command(name="score")
def score_command(
    original: Annotated[
        Path,
        typer.Argument(
            metavar="ORIGINAL|MODEL",
            help="The original recording or a folder of them; or a voice model (.safetensors, export folder, "
            "ckpt_*.pt, RVC .pth, VC Client .onnx) to score on RECORDINGS.",
        ),
    ],
    converted: Annotated[
        Path,
        typer.Argument(
            metavar="CONVERTED|RECORDINGS",
            help="Its conversion/reconstruction (same take, time-aligned) or a folder of them; after a "
            "MODEL, a recording or a folder of recordings it converts into its own voice.",
        ),
    ],
    f0: Annotated[
        str, typer.Option(help="Pitch extractor: pm, harvest, dio, crepe, crepe-tiny, rmvpe.")
    ] = "pm",
    rmvpe: RmvpeOption = None,
    metrics: Annotated[
        str,
        typer.Option(
            help="Comma-separated: f0 (RMSE, correlation, V/UV), mcd, pesq, stoi, speaker (speaker "
            "similarity, resemblyzer; not by default)."
        ),
    ] = "f0,mcd,pesq,stoi",
    features: Annotated[
        str | None,
        typer.Option(
            help="With a MODEL: content features, mel or hubert (default: the model's, as arvc infer)."
        ),
    ] = None,
    hubert: Annotated[
        Path | None, typer.Option(help="With a MODEL: HuBERT/ContentVec folder or hubert_base.pt.")
    ] = None,
    embedder_layer: EmbedderLayerOption = None,
    device: Annotated[str, typer.Option(help=f"With a MODEL: {DEVICE_HELP}.")] = AUTO_DEVICE,
    target_voice: Annotated[
        Path | None,
        typer.Option(
            help="With a MODEL: a target speaker's recording or folder of recordings; adds each "
            "conversion's speaker similarity to that voice (resemblyzer, arvc[score])."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Score conversions against their originals: F0 RMSE/correlation, V/UV error, MCD, PESQ, STOI.

    Two audio files, or two folders (paired by relative path without the extension, subfolders too: a/b.wav
    with a/b.flac); no DTW, so each conversion must be of the same take, time-aligned with its original.
    Or MODEL RECORDINGS: the model converts each recording into its own voice (as arvc infer, no
    transposition) and the conversion is scored against the recording, as held-out validation does.
    """
    from arvc.audio.io import AudioLoadError
    from arvc.audio.score import COLUMNS, check_metrics, pair_recordings, score_files
    from arvc.infer.scoring import is_model_path, recordings_of

    chosen = tuple(m.strip() for m in metrics.split(",") if m.strip())
    with_model = is_model_path(original)
    try:
        check_metrics(chosen, f0, rmvpe)
        targets = None
        if target_voice is not None:
            if not with_model:
                raise ValueError(
                    "--target-voice scores a model's conversions (arvc score MODEL RECORDINGS --target-voice "
                    "FOLDER); for two recordings or folders use --metrics speaker"
                )
            try:
                targets = recordings_of(target_voice)
            except ValueError as error:
                raise ValueError(f"--target-voice: {error}") from error
            check_metrics(("speaker",))  # resemblyzer, or an error naming arvc[score]
        if not with_model:
            if is_model_path(converted):
                raise ValueError(
                    f"{converted} is a voice model: put it first, then the recordings it should convert "
                    f"(arvc score {converted} {original})"
                )
            unused = [flag for flag, value in (("--features", features), ("--hubert", hubert),
                      ("--embedder-layer", embedder_layer)) if value is not None]  # fmt: skip
            if unused or device != AUTO_DEVICE:
                raise ValueError(
                    f"{', '.join(unused + (['--device'] if device != AUTO_DEVICE else []))} convert with a "
                    "model (arvc score MODEL RECORDINGS); two recordings or folders are scored as they are"
                )
            pairs = pair_recordings(original, converted)  # names, lengths: headers only
    except (ValueError, ImportError, AudioLoadError) as error:
        fail(str(error))
    rows = []
    if with_model:
        rows = _score_model(
            original, converted, f0, chosen, rmvpe, features, hubert, embedder_layer, device, targets
        )
        title = f"{original} on {converted}, converted to its own voice (pitch: {f0})"
        if target_voice is not None:
            title += f"; Target sim: speaker similarity to {target_voice}"
    else:
        for name, ref_path, conv_path in pairs:
            try:
                result = score_files(ref_path, conv_path, f0_method=f0, metrics=chosen, rmvpe_path=rmvpe)
            except (ValueError, AudioLoadError) as error:
                fail(f"{conv_path}: {error}")
            rows.append({"name": name, **result.as_dict()})
        title = f"{converted} against {original} (pitch: {f0})"
    keys = [key for key, _, _ in COLUMNS if any(not math.isnan(r[key]) for r in rows)]
    mean = {key: _mean(rows, key) for key in keys}
    if as_json:
        report = {"f0_method": f0, "recordings": [_json_safe(r) for r in rows], "mean": _json_safe(mean)}
        if with_model:
            report["model"] = str(original)
        if target_voice is not None:
            report["target_voice"] = str(target_voice)
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=title)
    table.add_column("recording")
    shown = [c for c in COLUMNS if c[0] in keys]
    for _, header, _ in shown:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(row["name"], *(_cell(row[key], fmt) for key, _, fmt in shown))
    if len(rows) > 1:
        table.add_row("mean", *(_cell(mean[key], fmt) for key, _, fmt in shown), style="bold")
    _app.console.print(table)


def _score_model(
    model, recordings, f0, metrics, rmvpe, features, hubert, embedder_layer, device, targets=None
) -> list[dict]:
    """Rows of `arvc score MODEL RECORDINGS`: the recordings listed, the model loaded and the target voice's
    embedding computed (from the recordings ``targets``, if any) before any conversion; an error names the
    recording it happened on."""
    from arvc.audio.io import AudioLoadError
    from arvc.audio.score import voice_embedding
    from arvc.infer.convert import load_voice_model
    from arvc.infer.scoring import recordings_of, score_model

    try:
        paths = recordings_of(recordings)
        net, cfg = load_voice_model(model, device)
    except (ValueError, ImportError, OSError) as error:
        fail(str(error))
    target = None
    if targets is not None:
        try:
            target = voice_embedding(targets)
        except (ValueError, ImportError, AudioLoadError) as error:
            fail(f"--target-voice: {error}")
    root = recordings if recordings.is_dir() else None
    rows = []
    scored = score_model(
        net, cfg, paths, root, f0_method=f0, metrics=metrics, rmvpe_path=rmvpe, features=features,
        hubert_path=hubert, embedder_layer=embedder_layer, target=target,
    )  # fmt: skip
    try:
        for name, result in scored:
            rows.append({"name": name, **result.as_dict()})
    except (ValueError, ImportError, OSError, AudioLoadError) as error:
        fail(f"{paths[len(rows)]}: {error}")  # the recording being converted or scored
    return rows
