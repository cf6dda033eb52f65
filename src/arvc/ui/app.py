"""`arvc ui`: a Gradio page over the library functions the CLI calls (train, compare, convert, models).

The page holds no logic of its own: each button calls what the matching `arvc` command calls, and shows
its message (the same words) when it refuses. Every path typed or uploaded must lie inside the server's
folder (`root`); one outside is refused. One job (a training or a comparison) runs at a time per server,
in a thread that outlives the browser tab (`arvc.ui.jobs`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import gradio as gr

from arvc.audio.f0 import F0_METHODS
from arvc.audio.features import FEATURE_EXTRACTORS
from arvc.config import BUILTIN_CONFIGS, PRECISIONS, TrainConfig
from arvc.data.outputs import RunFolder
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import resolve_device
from arvc.optim import OPTIMIZERS
from arvc.train.optimizers import DEFAULT_LR, DEFAULT_OPTIMIZER
from arvc.train.precision import AUTO as AUTO_PRECISION
from arvc.train.weights import WEIGHTS
from arvc.ui.jobs import Busy, Jobs

__all__ = ["build_app", "exports_of", "inside", "optimizer_rows", "runs_of"]

logger = logging.getLogger(__name__)
AUTO_F0 = "auto (the run's data, else pm)"
AUTO_FEATURES = "auto (the run's data, else mel)"
HELD_OUT = "held-out mel × c_mel"
SERIES = ("loss_mel", "loss_g", "loss_d", HELD_OUT)
OPTIMIZER_HEADERS = ["rating", "name", "category", "best for", "paired scheduler"]


class PathRefused(ValueError):
    """A path outside the server's folder."""


def inside(root: Path, text: str | Path | None, what: str) -> Path | None:
    """`text` as a path inside `root` (relative paths are taken from root); None for an empty field."""
    if text is None or not str(text).strip():
        return None
    root = Path(root).resolve()
    path = Path(str(text).strip()).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    if path != root and root not in path.parents:
        raise PathRefused(
            f"{what} {text} is outside the server's folder {root}; only paths inside it are used"
        )
    return path


def optimizer_rows() -> list[list]:
    """The rated table `arvc optimizers` shows, one row per registry entry."""
    return [
        [
            "★" * s.rating + "☆" * (5 - s.rating),
            s.name,
            s.category,
            s.best_for,
            s.scheduler_label,
        ]
        for s in OPTIMIZERS.values()
    ]


def runs_of(runs_dir: Path) -> list[str]:
    """Run names under runs_dir that have a checkpoint to resume from and that no process trains now."""
    from arvc.train.checkpoint import latest_checkpoint
    from arvc.train.runlock import lock_holder

    if not runs_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in runs_dir.iterdir()
        if latest_checkpoint(p) is not None and lock_holder(p, include_self=True) is None
    )


def exports_of(runs_dir: Path) -> list[str]:
    """The exported models under runs_dir (each run's export and export/best), as paths to convert with."""
    if not runs_dir.is_dir():
        return []
    runs = [RunFolder(p) for p in runs_dir.iterdir() if p.is_dir()]
    folders = [folder for run in runs for folder in (run.export, run.best_export)]
    return sorted(str(f) for f in folders if (f / "model.safetensors").is_file())


_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")


def report_for_page(markdown: str) -> str:
    """The compare report for the Compare tab: its figure links point to files beside report.md, which the
    page cannot load, so each one points to the Figures gallery, where the figure is shown under its title."""
    return _IMAGE.sub("*Shown in Figures below.*", markdown)


def report_figures(folder: Path) -> list[tuple[str, str]]:
    """The compare report's figures in `folder` as the Figures gallery shows them: (path, title)."""
    from arvc.compare.report import FIGURES

    return [(str(p), FIGURES.get(p.name, p.stem)) for p in sorted(folder.glob("*.png"))]


def _recommendation(epochs, precision, device: str = AUTO_DEVICE) -> str:
    """The guide's advice for the Train tab's epochs and precision; `auto` is the precision training will
    use on the server's `device` (arvc.train.precision.device_precision, as the loop decides it)."""
    from arvc.optim.recommend import recommend
    from arvc.train.precision import device_precision

    note = ""
    try:
        if precision == AUTO_PRECISION:
            choice = device_precision(resolve_device(device).device)
            precision, note = choice.precision, f" (Precision auto trains in {choice.precision} here.)"
        r = recommend(int(epochs), precision)
    except (TypeError, ValueError) as error:
        return f"error: {error}"
    return (
        f"**Recommended for {r.epochs} epochs:** {r.optimizer}, lr {r.lr:g}, batch {r.batch_size}. {r.reason}"
        + note
    )


def _number(value, kind=float):
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    return kind(value)


def _status_text(status) -> str:
    if status is None:
        return "No job has run on this server yet."
    lines = [f"**{status.kind} {status.name}: {status.state}**"]
    if status.detail:
        lines.append(status.detail)
    if status.total_steps:
        lines.append(f"epoch {status.epoch}/{status.total_epochs} · step {status.step}/{status.total_steps}")
        eta = status.eta_s()
        if eta is not None:
            lines.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
    if status.losses:
        last = status.losses[-1]
        lines.append(" · ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in last.items() if k != "step"))
    if status.message:
        lines.append(status.message)
    return "\n\n".join(lines)


def _loss_frame(status):
    import pandas as pd

    rows = []
    if status is not None:
        for point in status.losses:
            rows += [
                {"step": point["step"], "value": v, "series": k} for k, v in point.items() if k != "step"
            ]
        if status.kind == "train":
            from arvc.train.logs import read_validation

            for row in read_validation(status.folder):
                # on the same axis as the training mel loss (mel L1 × the run's c_mel, 45 by default)
                rows.append(
                    {
                        "step": int(row["step"]),
                        "value": float(row["val_mel_l1"]) * status.mel_weight,
                        "series": HELD_OUT,
                    }
                )
    if not rows:
        rows = [{"step": 0, "value": math.nan, "series": series} for series in SERIES]
    return pd.DataFrame(rows)


def _loss_figure(status):
    """The Train tab's plot: the training losses as lines and the held-out mel L1 (× c_mel, on the training
    mel loss's scale) as a line with a marker on each evaluation, so that its first point shows before
    there is a line to draw (a plain line of one point draws nothing, though its legend entry is there).
    Every series is in the legend from the start."""
    from matplotlib.figure import Figure  # not pyplot: a figure per refresh, freed with it, no display

    frame = _loss_frame(status)
    scores = _held_out_scores(status)
    figure = Figure(figsize=(8, 5.6 if scores else 3.2), layout="constrained")
    grid = figure.add_gridspec(
        2 if scores else 1, max(1, len(scores)), height_ratios=[1.4, 1] if scores else None
    )
    axis = figure.add_subplot(grid[0, :])
    for series in SERIES:
        points = frame[frame["series"] == series].dropna()
        style = {"marker": "o", "markersize": 5} if series == HELD_OUT else {}
        axis.plot(points["step"], points["value"], label=series, **style)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper right", fontsize="small")
    for column, (title, points) in enumerate(scores.items()):  # below: one small plot per held-out score
        small = figure.add_subplot(grid[1, column])
        small.plot(*zip(*points, strict=True), marker="o", markersize=3)
        small.set_title(title, fontsize="small")
        small.tick_params(labelsize="x-small")
        small.grid(alpha=0.3)
    return figure


def _held_out_scores(status) -> dict[str, list[tuple[int, float]]]:
    """A training's held-out scores (validation.csv, docs/scoring.md): header -> (step, value) of the
    evaluations that computed it; only the scores with a value yet."""
    if status is None or status.kind != "train":
        return {}
    from arvc.audio.score import COLUMNS
    from arvc.train.logs import read_validation

    rows = read_validation(status.folder)
    found = {}
    for key, header, _ in COLUMNS:
        points = [(int(r["step"]), _number(r.get(f"val_{key}"))) for r in rows]
        points = [(step, value) for step, value in points if value is not None and math.isfinite(value)]
        if points:
            found[header] = points
    return found


def _samples(status) -> tuple[str | None, str | None, str]:
    """(a held-out original, its conversion at the latest epoch with samples, a label) once a training
    ended. An epoch's folder left empty (a crash while writing it) is passed over."""
    if status is None or status.kind != "train" or status.running or not status.result.get("samples_dir"):
        return None, None, ""
    run = RunFolder(status.folder)
    found = ((epoch, sorted(folder.glob("*.wav"))) for epoch, folder in reversed(run.sampled_epochs()))
    epoch, converted = next(((epoch, wavs) for epoch, wavs in found if wavs), (None, []))
    if not converted:
        return None, None, ""
    original = run.sample_originals / converted[0].name
    return (
        (str(original) if original.is_file() else None),
        str(converted[0]),
        f"{converted[0].stem}, converted at epoch {epoch}",
    )


def build_app(root: Path, jobs: Jobs | None = None, device: str = AUTO_DEVICE) -> gr.Blocks:
    """The page, for a server whose folder is `root` (runs in root/runs, comparisons in root/compare);
    trainings, comparisons and conversions run on `device` (arvc.device: auto, cpu, cuda, cuda:N)."""
    from arvc.compare.runner import DEFAULT_EPOCHS as COMPARE_EPOCHS
    from arvc.compare.runner import DEFAULT_SEEDS as COMPARE_SEEDS
    from arvc.train.request import TrainRequest

    defaults = TrainConfig()  # the fields' first values: the CLI's defaults
    where = resolve_device(device)  # a bad device: ValueError now, not at the first job
    root = Path(root).resolve()
    jobs = jobs if jobs is not None else Jobs()
    runs_dir, compare_dir = root / "runs", root / "compare"

    with gr.Blocks(title="arvc") as app:
        gr.Markdown("# arvc — train RVC voice models")
        gr.Markdown(f"Device: **{where.describe()}** (arvc ui --device)", elem_id="device")
        with gr.Tab("Train"):
            gr.Dataframe(
                value=optimizer_rows(),
                headers=OPTIMIZER_HEADERS,
                interactive=False,
                label="Optimizers",
                elem_id="optimizers",
            )
            with gr.Row():
                dataset = gr.Textbox(label="Dataset folder (empty: the demo voice)", elem_id="dataset")
                name = gr.Textbox(label="Run name (runs/NAME)", elem_id="run-name")
                config = gr.Dropdown(list(BUILTIN_CONFIGS), value="tiny", label="Config")
                train_f0 = gr.Dropdown([AUTO_F0, *F0_METHODS], value=AUTO_F0, label="Pitch (f0) method")
                rmvpe = gr.Textbox(label="RMVPE weights (rmvpe.pt, for rmvpe)")
            with gr.Row():
                # The RVC configs (v1-*/v2-*) train on HuBERT/ContentVec features only: without these two
                # fields the page could not start one.
                train_features = gr.Dropdown(
                    [AUTO_FEATURES, *FEATURE_EXTRACTORS],
                    value=AUTO_FEATURES,
                    label="Content features",
                    elem_id="features",
                )
                hubert = gr.Textbox(
                    label="HuBERT/ContentVec (hubert_base.pt or a model folder, for hubert)", elem_id="hubert"
                )
            with gr.Row():
                optimizer = gr.Dropdown(
                    list(OPTIMIZERS), value=DEFAULT_OPTIMIZER, label="Optimizer", elem_id="optimizer"
                )
                lr = gr.Number(value=DEFAULT_LR, label="Learning rate")
                epochs = gr.Number(value=defaults.epochs, precision=0, label="Epochs", elem_id="epochs")
                batch = gr.Number(value=defaults.batch_size, precision=0, label="Batch size", elem_id="batch")
                precision = gr.Dropdown(
                    [AUTO_PRECISION, *PRECISIONS], value=AUTO_PRECISION, label="Precision"
                )
                eight_bit = gr.Checkbox(label="8-bit (bitsandbytes)")
                max_steps = gr.Number(
                    value=0, precision=0, label="Stop after N steps (0: no limit)", elem_id="max-steps"
                )
                ema = gr.Number(value=0, label="EMA decay of G's weights (0: off; e.g. 0.999)", elem_id="ema")
            recommendation = gr.Markdown(_recommendation(defaults.epochs, AUTO_PRECISION, device))
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start")
                stop = gr.Button("Stop (save a checkpoint)", elem_id="stop")
            with gr.Row():
                resume_run = gr.Dropdown(runs_of(runs_dir), label="Resume a run", allow_custom_value=False)
                resume = gr.Button("Resume", elem_id="resume")
            status = gr.Markdown(_status_text(jobs.status()), elem_id="status")
            log = gr.Textbox(label="Log", lines=6, max_lines=6, interactive=False, elem_id="log")
            plot = gr.Plot(_loss_figure(jobs.status()), label="Losses", elem_id="plot", format="png")
            with gr.Row():
                original_player = gr.Audio(label="Held-out original", type="filepath", elem_id="original")
                converted_player = gr.Audio(label="Converted", type="filepath", elem_id="sample")

        shown = gr.State(None)  # the samples this page shows (the players are not reset on every tick)

        def refresh(shown_samples=None):
            current = jobs.status()
            text, frame = _status_text(current), _loss_figure(current)
            original, converted, label = _samples(current)
            lines = "\n".join(current.log[-50:]) if current is not None else ""
            if (original, converted) == tuple(shown_samples or (None, None)):
                return text, frame, lines, gr.skip(), gr.skip(), shown_samples
            return (
                text,
                frame,
                lines,
                gr.Audio(
                    value=original, label="Held-out original" + (f": {label.split(',')[0]}" if label else "")
                ),
                gr.Audio(value=converted, label="Converted" + (f": {label}" if label else "")),
                (original, converted),
            )

        def start_training(dataset_text, name_text, config_name, f0_method, rmvpe_text, features_choice,
                           hubert_text, opt, lr_value, epochs_value, batch_value, precision_value, use_8bit,
                           steps_value, ema_value=0):  # fmt: skip
            try:
                request = TrainRequest(
                    dataset=inside(root, dataset_text, "dataset folder"),
                    name=(name_text or "").strip() or None,
                    runs_dir=runs_dir,
                    config=config_name,
                    f0=None if f0_method == AUTO_F0 else f0_method,
                    rmvpe=inside(root, rmvpe_text, "RMVPE weights"),
                    features=None if features_choice == AUTO_FEATURES else features_choice,
                    hubert=inside(root, hubert_text, "HuBERT model"),
                    optimizer=opt,
                    lr=_number(lr_value),
                    epochs=_number(epochs_value, int),
                    batch_size=_number(batch_value, int),
                    precision=precision_value,
                    use_8bit=bool(use_8bit) or None,
                    max_steps=_number(steps_value, int) or None,  # 0: no limit
                    ema=_number(ema_value) or None,  # 0: off
                    device=device,
                )
                jobs.start_training(request)
            except (Busy, ValueError, ImportError, RuntimeError) as error:
                gr.Warning(f"error: {error}")
            return refresh()[:2]

        def resume_training(run_name):
            try:
                if not run_name:
                    raise ValueError("choose a run to resume")
                jobs.start_training(
                    TrainRequest(resume=runs_dir / run_name, runs_dir=runs_dir, device=device)
                )
            except (Busy, ValueError, ImportError, RuntimeError) as error:
                gr.Warning(f"error: {error}")
            return refresh()[:2]

        def stop_job():
            if not jobs.stop():
                gr.Info("nothing is running")
            return refresh()[0]

        inputs = [
            dataset,
            name,
            config,
            train_f0,
            rmvpe,
            train_features,
            hubert,
            optimizer,
            lr,
            epochs,
            batch,
            precision,
            eight_bit,
            max_steps,
            ema,
        ]
        start.click(start_training, inputs, [status, plot])
        resume.click(resume_training, [resume_run], [status, plot])
        stop.click(stop_job, None, [status])

        def advise(epochs_value, precision_value):  # for the server's device: `auto` as training resolves it
            return _recommendation(epochs_value, precision_value, device)

        epochs.change(advise, [epochs, precision], recommendation)
        precision.change(advise, [epochs, precision], recommendation)
        gr.Timer(1.0).tick(refresh, shown, [status, plot, log, original_player, converted_player, shown])
        runs_now = lambda: gr.Dropdown(choices=runs_of(runs_dir))  # noqa: E731
        app.load(runs_now, None, resume_run)
        resume_run.focus(runs_now, None, resume_run)  # runs made since the page was opened are listed too

        with gr.Tab("Compare"):
            with gr.Row():
                c_dataset = gr.Textbox(label="Dataset folder (empty: the demo voice)", elem_id="c-dataset")
                c_name = gr.Textbox(label="Comparison name (compare/NAME)", value="demo", elem_id="c-name")
                c_optimizers = gr.Textbox(
                    label="Contestants ('all' or names)", value="all", elem_id="c-optimizers"
                )
                c_seeds = gr.Number(value=COMPARE_SEEDS, precision=0, label="Seeds", elem_id="c-seeds")
                c_epochs = gr.Number(value=COMPARE_EPOCHS, precision=0, label="Epochs", elem_id="c-epochs")
                c_batch = gr.Number(
                    value=defaults.batch_size, precision=0, label="Batch size", elem_id="c-batch"
                )
            c_start = gr.Button("Run the comparison", variant="primary", elem_id="c-start")
            c_status = gr.Markdown(elem_id="c-status")
            c_report = gr.Markdown(elem_id="c-report")
            c_figures = gr.Gallery(label="Figures", elem_id="c-figures")

            def start_compare(dataset_text, name_text, optimizers, seeds, epochs_value, batch_value):
                try:
                    target = inside(root, compare_dir / (name_text or "demo").strip(), "comparison folder")
                    jobs.start_compare(
                        inside(root, dataset_text, "dataset folder"),
                        target,
                        optimizers,
                        epochs=_number(epochs_value, int) or COMPARE_EPOCHS,
                        seeds=_number(seeds, int) or COMPARE_SEEDS,
                        overrides={"train.batch_size": _number(batch_value, int) or defaults.batch_size},
                        device=device,
                    )
                except (Busy, ValueError, ImportError) as error:
                    gr.Warning(f"error: {error}")
                return _status_text(jobs.status())

            def compare_report():
                from arvc.compare.report import REPORT_FILE

                current = jobs.status()
                if current is None or current.kind != "compare":
                    return "", "", []
                report = current.folder / REPORT_FILE
                text = report_for_page(report.read_text()) if report.is_file() and not current.running else ""
                figures = report_figures(current.folder) if text else []
                return _status_text(current), text, figures

            c_start.click(
                start_compare, [c_dataset, c_name, c_optimizers, c_seeds, c_epochs, c_batch], c_status
            )
            gr.Timer(2.0).tick(compare_report, None, [c_status, c_report, c_figures])

        with gr.Tab("Convert"):
            with gr.Row():
                model_path = gr.Dropdown(
                    exports_of(runs_dir),
                    allow_custom_value=True,
                    label="Model (a run's export, or a path: model.safetensors, ckpt_*.pt, RVC .pth)",
                    elem_id="model",
                )
                source = gr.Audio(label="Recording", type="filepath", sources=["upload"], elem_id="source")
            with gr.Row():
                pitch = gr.Number(value=0, label="Pitch shift (semitones)")
                f0 = gr.Dropdown(list(F0_METHODS), value="pm", label="f0 method")
                index_path = gr.Textbox(label="Index (added.index, optional)")
                index_rate = gr.Slider(0, 1, value=0.75, label="Index rate")
            convert_button = gr.Button("Convert", variant="primary", elem_id="convert")
            converted = gr.Audio(label="Converted", type="filepath", interactive=False, elem_id="converted")

            def convert_one(model_text, source_path, pitch_value, f0_method, index_text, rate):
                from arvc.infer.convert import convert, load_voice_model

                try:
                    model = inside(root, model_text, "model")
                    if model is None:
                        raise ValueError("choose a model")
                    if not source_path:
                        raise ValueError("upload a recording to convert")
                    index = inside(root, index_text, "index")
                    net, cfg = load_voice_model(model, device)
                    out_dir = root / "converted"
                    out_dir.mkdir(exist_ok=True)
                    output = out_dir / f"{Path(source_path).stem}_{time.strftime('%Y%m%d-%H%M%S')}.wav"
                    convert(net, cfg, source_path, output, pitch=float(pitch_value or 0), f0_method=f0_method,
                            index=index, index_rate=float(rate) if index is not None else 0.0)  # fmt: skip
                    return str(output)
                except (ValueError, FileNotFoundError, ImportError) as error:
                    gr.Warning(f"error: {error}")
                    return None

            model_path.focus(lambda: gr.Dropdown(choices=exports_of(runs_dir)), None, model_path)
            convert_button.click(
                convert_one, [model_path, source, pitch, f0, index_path, index_rate], converted
            )

        with gr.Tab("Models"):
            m_path = gr.Textbox(label="Model file or run folder", elem_id="m-path")
            with gr.Row():
                inspect_button = gr.Button("Inspect", elem_id="inspect")
                export_button = gr.Button("Export (a run; a model file: to ONNX)", elem_id="export")
                index_button = gr.Button("Build the run's index", elem_id="index")
            m_onnx = gr.Checkbox(
                label="ONNX for w-okada's VC Client too (export and merge; needs arvc[onnx])",
                value=False,
                elem_id="m-onnx",
            )
            m_weights = gr.Radio(
                choices=list(WEIGHTS),
                value=WEIGHTS[0],
                label="Weights (export of a run)",
                info="averaged: what the run evaluated (an --ema run's EMA, a schedule-free run's x); "
                "live: the weights it trained",
                elem_id="m-weights",
            )
            with gr.Accordion("Merge models (RVC's model fusion)", open=False):
                merge_paths = gr.Textbox(
                    label="Models to merge, one per line (RVC .pth, export folder, model.safetensors)",
                    lines=3,
                    elem_id="merge-paths",
                )
                with gr.Row():
                    merge_weights = gr.Textbox(
                        label="Shares, comma-separated, summing to 1 (empty: equal)", elem_id="merge-weights"
                    )
                    merge_out = gr.Textbox(label="Output folder", elem_id="merge-out")
                    merge_overwrite = gr.Checkbox(label="Replace its model files", value=False)
                merge_button = gr.Button("Merge", elem_id="merge")
            m_out = gr.JSON(label="Result", elem_id="m-out")

            def inspect_file(text):
                from arvc.modelfile.describe import describe_model_file

                try:
                    return describe_model_file(inside(root, text, "model file") or "")
                except (ValueError, OSError) as error:
                    gr.Warning(f"error: {error}")
                    return None

            def export(text, onnx, weights=WEIGHTS[0]):
                from arvc.modelfile.onnx import export_model_file_onnx
                from arvc.train.export import export_run

                try:
                    path = inside(root, text, "run folder or model file") or Path("")
                    if path.is_file():  # a model file: its ONNX beside it (never replacing a file)
                        if not onnx:
                            raise ValueError(f"{text} is a model file: tick ONNX to export it to ONNX")
                        return {"onnx": str(export_model_file_onnx(path))}
                    done = export_run(path, onnx=bool(onnx), weights=weights)
                except (ValueError, RuntimeError, ImportError, OSError) as error:  # + ExportError
                    gr.Warning(f"error: {error}")
                    return None
                return {"checkpoint": done.checkpoint.name, "epoch": done.epoch, "step": done.step,
                        "weights": done.weights,
                        **{k: str(v) for k, v in done.written.items()}}  # fmt: skip

            def index(text):
                from arvc.infer.index import FeatureIndexError, build_index

                try:
                    return {"index": str(build_index(inside(root, text, "run folder") or Path("")))}
                except (FeatureIndexError, ImportError, ValueError) as error:
                    gr.Warning(f"error: {error}")
                    return None

            def merge(paths_text, weights_text, out_text, overwrite, onnx=False):
                from arvc.modelfile.merge import merge_models, parse_weights

                try:
                    paths = [inside(root, line, "model file") for line in (paths_text or "").splitlines()]
                    paths = [path for path in paths if path is not None]
                    shares = parse_weights(len(paths), weights=(weights_text or "").strip() or None)
                    out = inside(root, out_text, "output folder")
                    if out is None:
                        raise ValueError("give an output folder for the merged model")
                    done = merge_models(paths, shares, out, overwrite=bool(overwrite), onnx=bool(onnx))
                except (ValueError, RuntimeError, ImportError, OSError) as error:  # + ExportError, WriteError
                    gr.Warning(f"error: {error}")
                    return None
                return {"weights": shares, **{k: str(v) for k, v in done.written.items()}}

            inspect_button.click(inspect_file, m_path, m_out)
            merge_button.click(merge, [merge_paths, merge_weights, merge_out, merge_overwrite, m_onnx], m_out)
            export_button.click(export, [m_path, m_onnx, m_weights], m_out)
            index_button.click(index, m_path, m_out)
    return app
