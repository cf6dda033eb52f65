"""`arvc inspect`, `arvc export`, `arvc merge`, `arvc index` and `arvc infer`: models in and out of arvc.

Registered on the main app when :mod:`arvc.cli` imports this module. The console is looked up
on :mod:`arvc.cli._app` at call time, so tests that swap it see this module's output too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from arvc.cli import _app
from arvc.cli._app import EmbedderLayerOption, RmvpeOption, app, fail
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import DEVICE_HELP

DEFAULT_INDEX_RATE = 0.75  # RVC WebUI's default when an index is given


def _format(key: str, value) -> str:
    if key == "parameters" and isinstance(value, int):
        return f"{value:,} ({value / 1e6:.1f} M)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format(k, v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "-" if value is None else str(value)


@app.command(name="inspect")
def inspect_command(
    file: Annotated[Path, typer.Argument(help="Model file: .pth (RVC), ckpt_*.pt, model.safetensors/json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Say what a model file is: format, version, sample rate, f0, size, training state."""
    from arvc.modelfile.describe import describe_model_file
    from arvc.modelfile.read import PretrainedError

    try:
        info = describe_model_file(file)
    except PretrainedError as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=str(file), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in info.items():
        if key != "path":
            table.add_row(key.replace("_", " "), _format(key, value))
    _app.console.print(table)


@app.command(name="export")
def export_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_MODEL",
            help="A run folder (runs/NAME), or with --onnx/--onnx-half a model file: model.safetensors/json "
            "(or its folder), RVC .pth, ckpt_*.pt.",
        ),
    ],
    onnx: Annotated[
        bool,
        typer.Option("--onnx", help="Also write model.onnx for w-okada's VC Client (arvc\\[onnx])."),
    ] = False,
    onnx_half: Annotated[
        bool,
        typer.Option("--onnx-half", help="Also write model_fp16.onnx (float16, for the client on a GPU)."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="A model file's .onnx (default: beside it, NAME.onnx / NAME_fp16.onnx)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="A model file's export: replace an existing .onnx.")
    ] = False,
    embedder_layer: EmbedderLayerOption = None,
    weights: Annotated[
        str,
        typer.Option(
            help="averaged (default): the weights the run evaluated (an --ema run's EMA, a schedule-free "
            "optimizer's average); live: the weights it trained."
        ),
    ] = "averaged",
) -> None:
    """Export the run's newest checkpoint to RUN/export (safetensors + json, and RVC's .pth if RVC-sized),
    or a model file to ONNX for the VC Client."""
    from arvc.modelfile.export import ExportError
    from arvc.modelfile.read import PretrainedError

    if source.is_file() or (source / "model.safetensors").is_file():  # a model file or an export folder
        if weights != "averaged":
            fail(
                f"--weights {weights} is for a run folder (which weights of its checkpoint to export); "
                f"{source} is a model file, exported as it is"
            )
        _export_model_file(source, onnx, onnx_half, output, overwrite, embedder_layer)
        return
    if output is not None or overwrite or embedder_layer is not None:
        fail(
            f"{source} is not a model file: -o, --overwrite and --embedder-layer are for exporting a model "
            "file to ONNX; a run exports to RUN/export (the HuBERT layer is the run's own)"
        )
    from arvc.train.export import export_run

    try:
        done = export_run(source, onnx=onnx, onnx_half=onnx_half, weights=weights)
    except (PretrainedError, ExportError, ImportError, OSError) as error:
        fail(str(error))
    which = f", {done.weights} weights" if done.weights != "live" or weights == "live" else ""
    _app.console.print(f"exported {done.checkpoint.name} (epoch {done.epoch}, step {done.step}{which})")
    for kind, path in done.written.items():
        _app.console.print(f"  {kind}: {path}", highlight=False)


def _export_model_file(model: Path, onnx: bool, half: bool, output, overwrite: bool, layer) -> None:
    """`arvc export MODEL --onnx/--onnx-half`: the model file's generator as VC Client ONNX file(s)."""
    from arvc.modelfile.export import ExportError
    from arvc.modelfile.onnx import export_model_file_onnx
    from arvc.modelfile.read import PretrainedError

    if not (onnx or half):
        fail(
            f"{model} is a model file: it exports to ONNX only (pass --onnx or --onnx-half); a run folder "
            "exports to safetensors + RVC .pth (arvc export runs/NAME)"
        )
    if onnx and half and output is not None:
        fail("-o names one .onnx file: export --onnx and --onnx-half one at a time, each with its -o")
    try:
        for kind, asked in (("onnx", onnx), ("onnx-fp16", half)):
            if asked:
                path = export_model_file_onnx(
                    model, output, half=kind == "onnx-fp16", overwrite=overwrite, embedder_layer=layer
                )
                _app.console.print(f"  {kind}: {path}", highlight=False)
    except (PretrainedError, ExportError, ImportError, OSError) as error:
        fail(str(error))


@app.command(name="merge")
def merge_command(
    models: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL",
            help="Two or more models: RVC .pth, arvc checkpoints (ckpt_*.pt), model.safetensors/json or "
            "export folders.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder for the merged model (safetensors + json + RVC .pth)."),
    ],
    ratio: Annotated[
        float | None, typer.Option(help="Two models: the first one's share, 0..1 (RVC's alpha; default 0.5).")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="One share per model, comma-separated, summing to 1: e.g. 0.5,0.3,0.2 (default equal)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the model files in OUTPUT.")
    ] = False,
    onnx: Annotated[
        bool, typer.Option("--onnx", help="Also write OUTPUT/model.onnx for the VC Client (arvc\\[onnx]).")
    ] = False,
) -> None:
    """Merge voice models as RVC does: a weighted average of their weights, saved in fp16."""
    from arvc.modelfile.export import ExportError
    from arvc.modelfile.merge import MergeError, merge_models, parse_weights
    from arvc.modelfile.read import PretrainedError

    try:
        shares = parse_weights(len(models), ratio, weights)
        done = merge_models(models, shares, output, overwrite=overwrite, onnx=onnx)
    except (MergeError, PretrainedError, ExportError, ImportError, OSError) as error:  # OSError: WriteError
        fail(str(error))
    _app.console.print(
        "merged " + " + ".join(f"{w:g} x {p}" for p, w in zip(models, shares, strict=True)), highlight=False
    )
    for kind, path in done.written.items():
        _app.console.print(f"  {kind}: {path}", highlight=False)


@app.command(name="index")
def index_command(
    run_dir: Annotated[Path, typer.Argument(help="A preprocessed run folder, runs/NAME.")],
) -> None:
    """Build the retrieval index RUN/export/added.index from the run's features (needs faiss-cpu)."""
    from arvc.infer.index import FeatureIndexError, build_index

    try:
        path = build_index(run_dir)
    except (FeatureIndexError, ImportError) as error:
        fail(str(error))
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    _app.console.print(
        f"index {path}: {meta['factory']} over {meta['n_vectors']:,} vectors of {meta['feature_dim']} dims",
        highlight=False,
    )


@app.command(name="infer")
def infer_command(
    model: Annotated[
        Path,
        typer.Argument(help="model.safetensors/json, export folder, ckpt_*.pt, RVC .pth or VC Client .onnx."),
    ],
    input_wav: Annotated[Path, typer.Argument(metavar="INPUT", help="Recording to convert.")],
    output_wav: Annotated[
        Path,
        typer.Argument(
            metavar="OUTPUT", help="Where to write the conversion: .wav or .flac (16-bit), .ogg (or .mp3)."
        ),
    ],
    pitch: Annotated[float, typer.Option(help="Transpose by N semitones (12 = an octave up).")] = 0.0,
    f0: Annotated[
        str, typer.Option(help="Pitch extractor: pm, harvest, dio, crepe, crepe-tiny, rmvpe.")
    ] = "pm",
    rmvpe: RmvpeOption = None,
    index: Annotated[Path | None, typer.Option(help="Retrieval index (added.index) of the voice.")] = None,
    index_rate: Annotated[
        float | None,
        typer.Option(help=f"0..1, how much retrieval (default {DEFAULT_INDEX_RATE} with --index)."),
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="Content features: mel or hubert (default: what the model was trained on where its file "
            "says, else hubert if --hubert is given, else mel)."
        ),
    ] = None,
    hubert: Annotated[
        Path | None,
        typer.Option(help="Local HuBERT/ContentVec folder or fairseq hubert_base.pt (--features hubert)."),
    ] = None,
    embedder_layer: EmbedderLayerOption = None,
    chunk_seconds: Annotated[float, typer.Option(help="Convert long inputs in chunks of about N s.")] = 10.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")] = False,
    device: Annotated[str, typer.Option(help=f"{DEVICE_HELP}.")] = AUTO_DEVICE,
) -> None:
    """Convert a recording into the model's voice."""
    from arvc.infer.convert import check_output, convert, load_voice_model

    if not input_wav.is_file():
        fail(f"input audio {input_wav} does not exist")
    if output_wav.resolve() == input_wav.resolve():
        fail(f"output {output_wav} is the input file; choose another output path")
    try:
        check_output(output_wav, overwrite)  # before the model is even loaded
    except ValueError as error:
        fail(str(error))
    rate = index_rate if index_rate is not None else (DEFAULT_INDEX_RATE if index is not None else 0.0)
    kind = features or ("hubert" if hubert is not None else None)  # None: the model's own, else mel
    columns = (TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        net, cfg = load_voice_model(model, device)
        with Progress(*columns, console=_app.console) as bar:
            task = bar.add_task("", total=None)
            convert(
                net,
                cfg,
                input_wav,
                output_wav,
                pitch=pitch,
                f0_method=f0,
                index=index,
                index_rate=rate,
                features=kind,
                hubert_path=hubert,
                rmvpe_path=rmvpe,
                embedder_layer=embedder_layer,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                chunk_seconds=chunk_seconds,
                overwrite=overwrite,
            )
    except (ValueError, ImportError, OSError) as error:  # OSError: FileNotFoundError, a failed write
        fail(str(error))
    _app.console.print(f"wrote {output_wav} ({cfg.data.sampling_rate} Hz)", highlight=False)
