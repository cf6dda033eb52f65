"""`arvc score MODEL RECORDINGS/`: a voice model's scores on recordings it converts to its own voice.

Each recording is converted by the model (``arvc.infer.convert``, as `arvc infer` does, pitch unshifted)
and the conversion scored against the recording (``arvc.audio.score``): a reconstruction, as held-out
validation does, so the two are time-aligned by construction. Works for every model `arvc infer` reads:
arvc exports and checkpoints, RVC ``.pth`` and VC Client ``.onnx`` files.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np

from arvc.audio.io import SUPPORTED_EXTENSIONS, find_audio_files
from arvc.audio.score import METRICS, Scores, file_speaker_similarity, score_files
from arvc.infer.convert import convert

__all__ = ["MODEL_SUFFIXES", "is_model_path", "recordings_of", "score_model"]

#: What a model file ends with (a folder holding model.safetensors is an arvc export, a model too).
MODEL_SUFFIXES = (".safetensors", ".pth", ".onnx", ".pt")


def is_model_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a voice model rather than audio: a model file by its extension, arvc's
    model.json, or an export folder (one holding model.safetensors)."""
    path = Path(path)
    if path.is_dir():
        return (path / "model.safetensors").is_file()
    return path.suffix.lower() in MODEL_SUFFIXES or path.name == "model.json"


def recordings_of(path: str | os.PathLike) -> list[Path]:
    """The recordings to score: an audio file, or the audio files under a folder; a ValueError says what
    is missing."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"recordings {path} do not exist")
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise ValueError(f"{path} is not an audio file ({', '.join(sorted(SUPPORTED_EXTENSIONS))})")
        return [path]
    found = find_audio_files(path)
    if not found:
        raise ValueError(f"no audio files in {path} ({', '.join(sorted(SUPPORTED_EXTENSIONS))})")
    return found


def score_model(
    model,
    cfg,
    recordings: list[Path],
    root: Path | None = None,
    *,
    f0_method: str = "pm",
    metrics: tuple[str, ...] = METRICS,
    rmvpe_path=None,
    features: str | None = None,
    hubert_path=None,
    embedder_layer: int | None = None,
    target: np.ndarray | None = None,
):
    """Yield (name, Scores) per recording: converted by ``model`` (``load_voice_model``'s) into its own
    voice, in a temporary folder, and scored against itself at the recording's rate. ``name`` is the path
    under ``root`` (or the file name). With ``target`` (a speaker embedding,
    ``arvc.audio.score.voice_embedding`` of a target voice's recordings), ``target_sim`` is the
    conversion's speaker similarity to it."""
    with tempfile.TemporaryDirectory(prefix="arvc-score-") as scratch:
        for index, path in enumerate(recordings):
            converted = Path(scratch) / f"{index}.wav"
            convert(
                model,
                cfg,
                path,
                converted,
                f0_method=f0_method,
                features=features,
                hubert_path=hubert_path,
                rmvpe_path=rmvpe_path,
                embedder_layer=embedder_layer,
            )
            result: Scores = score_files(
                path, converted, f0_method=f0_method, metrics=metrics, rmvpe_path=rmvpe_path
            )
            if target is not None:
                result = dataclasses.replace(result, target_sim=file_speaker_similarity(converted, target))
            converted.unlink()
            name = path.relative_to(root).as_posix() if root is not None else path.name
            yield name, result
