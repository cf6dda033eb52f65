"""Export a run's newest checkpoint (`arvc export`, the web UI's Models tab)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from arvc.data.outputs import RunFolder
from arvc.data.prepare import recorded_embedder_layer, recorded_features
from arvc.model import Synthesizer
from arvc.modelfile.export import export_generator
from arvc.modelfile.onnx import ONNX_FILE, ONNX_HALF_FILE, export_onnx, require_onnx
from arvc.modelfile.read import PretrainedError, load_state_strict, read_model_file
from arvc.train.checkpoint import latest_checkpoint
from arvc.train.weights import WEIGHTS

__all__ = ["RunExport", "export_run"]


@dataclass
class RunExport:
    checkpoint: Path
    epoch: int
    step: int
    written: dict[str, Path]  # kind (safetensors, config, pth) -> file
    weights: str = "live"  # which of the checkpoint's weights were exported: "live" or e.g. "ema"


def export_run(
    run_dir: Path, onnx: bool = False, onnx_half: bool = False, weights: str = "averaged"
) -> RunExport:
    """Write RUN/export (safetensors + json, and RVC's .pth if RVC-sized) from the newest checkpoint; with
    `onnx` also RUN/export/model.onnx for the VC Client (:mod:`arvc.modelfile.onnx`), with `onnx_half` its
    fp16 twin RUN/export/model_fp16.onnx. Raises PretrainedError (a ValueError) naming what is missing or
    wrong, ImportError when onnx is asked for but not installed (before anything is written).

    `weights`: "averaged" (default) exports the weights the run evaluated (an --ema run's EMA, a
    schedule-free run's x; a run that averages nothing has only its live weights), "live" the weights it
    trained (arvc.train.weights).

    A run another process is training may be exported (its checkpoints are written atomically): this
    exports its newest checkpoint, and the trainer's own export at the end replaces it."""
    run_dir = Path(run_dir)
    if weights not in WEIGHTS:
        raise PretrainedError(f"--weights {weights!r}: use one of {', '.join(WEIGHTS)}")
    folder = RunFolder(run_dir)
    if onnx or onnx_half:
        require_onnx()
    if not run_dir.is_dir():
        raise PretrainedError(f"run folder {run_dir} does not exist; pass runs/NAME of a trained run")
    for attempt in range(2):
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise PretrainedError(
                f"no checkpoint in {folder.checkpoints}; train first (arvc train) or check the folder"
            )
        try:
            mf = read_model_file(checkpoint)
            break
        except (PretrainedError, OSError):
            # A run still training (allowed: checkpoints are written whole) may prune the newest checkpoint
            # between the look and the read, once a newer one is saved: export that one instead.
            if attempt or checkpoint.exists():
                raise
    net = Synthesizer(mf.config)
    averaged = weights == "averaged" and mf.averaged_generator is not None
    state = mf.averaged_generator if averaged else mf.generator
    load_state_strict(net, state, source=mf, cfg=mf.config)
    features = recorded_features(folder.data)
    which = mf.averaged_kind if averaged else "live"
    info = f"arvc {mf.optimizer} epoch {mf.epoch}" + (f" ({which} weights)" if averaged else "")
    written = export_generator(net, mf.config, folder.export, info=info, features=features)
    for kind, asked, name, half in (
        ("onnx", onnx, ONNX_FILE, False),
        ("onnx-fp16", onnx_half, ONNX_HALF_FILE, True),
    ):
        if asked:
            written[kind] = export_onnx(
                net,
                mf.config,
                folder.export / name,
                embedder_layer=recorded_embedder_layer(folder.data),
                features=features,
                half=half,
            )
    return RunExport(checkpoint, mf.epoch, mf.step, written, which)
