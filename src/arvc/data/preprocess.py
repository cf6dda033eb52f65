"""Turn a folder of recordings into an RVC training run directory.

Layout (as RVC's WebUI writes it, so users can inspect it the same way)::

    run_dir/0_gt_wavs/NAME.wav     target audio at the model's sample rate (float32)
    run_dir/1_16k_wavs/NAME.wav    the same piece at 16 kHz, input to pitch and content analysis
    run_dir/2a_f0/NAME.npy         coarse pitch tokens 1..255, 100 frames/s
    run_dir/2b-f0nsf/NAME.npy      continuous pitch in Hz (0 = unvoiced), 100 frames/s
    run_dir/3_feature/NAME.npy     content features [T, feature_dim], 50 frames/s
    run_dir/filelist.txt           gt_wav|feature|f0|f0nsf|speaker_id, paths relative to run_dir
    run_dir/preprocess.json        settings, the dataset folder and per-source progress, used to resume

Every output is written atomically, and a source whose outputs are all present (with the same
settings and an unchanged source file) is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arvc._files import atomic_file, write_text
from arvc.audio.f0 import F0_METHODS, RMVPE_NEEDED, coarse_f0, crepe_weights_path, extract_f0, rmvpe_model
from arvc.audio.features import FEATURE_EXTRACTORS, get_extractor
from arvc.audio.io import (
    SUPPORTED_EXTENSIONS,
    AudioLoadError,
    audio_duration,
    find_audio_files,
    load_audio,
    resample,
    split_for_training,
    write_wav,
)
from arvc.audio.rmvpe import RMVPEError
from arvc.data.outputs import FILELIST, MANIFEST, find_arvc_outputs
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import resolve_device

__all__ = [
    "DataError",
    "MIN_PIECE_SECONDS",
    "PreprocessResult",
    "Progress",
    "SAMPLE_RATES",
    "STAGE_DIRS",
    "preprocess",
    "unused_analysis_flags",
]

log = logging.getLogger(__name__)
NEURAL = ("rmvpe", "hubert")  # the analysers (with crepe) that run on --device

SAMPLE_RATES = (16000, 32000, 40000, 48000)  # 32k/40k/48k for RVC v2 configs, 16k for the tiny one
MIN_PIECE_SECONDS = 0.5  # shorter pieces carry too few frames to train on
STAGE_DIRS = {
    "gt": "0_gt_wavs",
    "16k": "1_16k_wavs",
    "f0": "2a_f0",
    "f0nsf": "2b-f0nsf",
    "feature": "3_feature",
}
_MANIFEST_VERSION = 1
# Which stages a changed setting invalidates.
_STALE_ON = {
    "sample_rate": ("gt", "16k", "f0", "f0nsf", "feature"),
    "f0_method": ("f0", "f0nsf"),
    "features": ("feature",),
    "feature_dim": ("feature",),
    "embedder_layer": ("feature",),
}

Progress = Callable[[int, int, str], None]


class DataError(ValueError):
    """The dataset cannot be used as given; the message says what to do about it."""


@dataclass
class PreprocessResult:
    """What a preprocess run produced and what it had to leave out."""

    run_dir: Path
    filelist: Path
    n_sources: int
    n_pieces: int
    seconds: float
    reused_sources: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    too_short: list[Path] = field(default_factory=list)
    no_speech: list[Path] = field(default_factory=list)  # silent or clipped beyond repair: no piece


def _source_key(rel: str) -> str:
    """File-system-safe, stable name for a source: readable stem plus a hash of its relative path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(rel).stem).strip("._")[:40] or "audio"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save via temp file + rename: a crash never leaves a truncated array behind."""
    with atomic_file(path) as temporary, temporary.open("wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _write_text(path: Path, text: str) -> None:
    write_text(path, text)


def unused_analysis_flags(
    f0_method: str,
    features: str,
    *,
    rmvpe: object = None,
    hubert: object = None,
    embedder_layer: int | None = None,
) -> list[str]:
    """The flags given that the pitch method and content features in use would silently ignore, one message
    each (train, preprocess and infer refuse them: `--rmvpe` alone still meant pm pitch)."""
    errors = []
    if rmvpe is not None and f0_method != "rmvpe":
        errors.append(
            f"--rmvpe is used only with --f0 rmvpe, and the pitch method here is {f0_method}: add "
            "--f0 rmvpe, or drop --rmvpe"
        )
    for flag, value in (("--hubert", hubert), ("--embedder-layer", embedder_layer)):
        if value is not None and features != "hubert":
            errors.append(
                f"{flag} is used only with --features hubert, and the features here are {features}: add "
                f"--features hubert, or drop {flag}"
            )
    return errors


def _validate(
    dataset_dir: Path, run_dir: Path, sample_rate: int, f0_method: str, features: str
) -> list[Path]:
    if sample_rate not in SAMPLE_RATES:
        raise DataError(
            f"sample rate {sample_rate} is not supported; use one of {', '.join(map(str, SAMPLE_RATES))} "
            "(32000/40000/48000 for RVC v2 configs)"
        )
    if f0_method not in F0_METHODS:
        raise DataError(f"unknown f0 method {f0_method!r}; choose one of {', '.join(F0_METHODS)}")
    if features not in FEATURE_EXTRACTORS:
        raise DataError(
            f"unknown content features {features!r}; choose one of {', '.join(FEATURE_EXTRACTORS)}"
        )
    if not dataset_dir.exists():
        raise DataError(
            f"dataset folder {dataset_dir} does not exist; point it at a folder of recordings of one voice"
        )
    if not dataset_dir.is_dir():
        raise DataError(f"{dataset_dir} is a file; the dataset must be a folder of recordings of one voice")
    entries = [p for p in dataset_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not entries:
        raise DataError(
            f"dataset folder {dataset_dir} is empty; put recordings ({', '.join(SUPPORTED_EXTENSIONS)}) in it"
        )
    # arvc's own outputs inside the dataset folder (this run's data, other runs in recordings/runs/,
    # comparisons) must never be read back in as recordings.
    outputs = find_arvc_outputs(dataset_dir)
    excluded = [run_dir.resolve(), *(path.resolve() for path, _ in outputs)]
    for path, kind in outputs:
        log.warning("skipping %s: it is arvc's own output (%s), not recordings", path, kind)
    files = [
        f for f in find_audio_files(dataset_dir) if not any(f.resolve().is_relative_to(e) for e in excluded)
    ]
    if not files:
        others = sorted({p.suffix.lower() or p.name for p in entries})
        raise DataError(
            f"no audio files in {dataset_dir} (found only: {', '.join(others[:10])}); supported formats are "
            f"{', '.join(SUPPORTED_EXTENSIONS)} - convert the recordings to WAV or FLAC"
        )
    return files


def _clear_stale(run_dir: Path, old: dict, settings: dict) -> dict:
    """Delete stage outputs made with different settings; return the sources still trustworthy."""
    if old.get("version") != _MANIFEST_VERSION:
        stale = set(STAGE_DIRS)
    else:
        stale = {
            stage
            for key, stages in _STALE_ON.items()
            if old.get(key) != settings.get(key)
            for stage in stages
        }
    for stage in sorted(stale):
        folder = run_dir / STAGE_DIRS[stage]
        if folder.is_dir():
            log.info("settings changed: removing stale %s", folder)
            shutil.rmtree(folder)
    # Outputs of the other stages stay valid: they are reused per file where present.
    return dict(old.get("sources", {})) if old.get("version") == _MANIFEST_VERSION else {}


def preprocess(
    dataset_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    sample_rate: int,
    f0_method: str,
    features: str = "mel",
    feature_dim: int = 80,
    hubert_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    device: str = AUTO_DEVICE,
    rmvpe_path: str | os.PathLike | None = None,
    embedder_layer: int | None = None,
) -> PreprocessResult:
    """Cut, resample and analyse every recording in ``dataset_dir`` into ``run_dir``.

    ``progress(done, total, name)`` is called with ``done=0`` first and after each source file it
    analyses (``total`` of them); files preprocessed before are reused without a call, and when every file
    is, it is never called. Raises :class:`DataError` before doing any work when the dataset is unusable;
    unreadable, too-short and silent files are skipped with one logged warning per kind listing them
    (and in the result). ``device`` (auto: the GPU when there is one, see :mod:`arvc.device`) runs the
    neural analysers (crepe, rmvpe, hubert); ``rmvpe_path`` is the user's ``rmvpe.pt`` for
    ``f0_method="rmvpe"``.
    """
    dataset_dir, run_dir = Path(dataset_dir).expanduser(), Path(run_dir).expanduser()
    unused = unused_analysis_flags(
        f0_method, features, rmvpe=rmvpe_path, hubert=hubert_path, embedder_layer=embedder_layer
    )
    if unused:
        raise DataError("; ".join(unused))
    files = _validate(dataset_dir, run_dir, int(sample_rate), f0_method, features)
    try:
        where = resolve_device(device)
    except ValueError as error:
        raise DataError(str(error)) from error
    device = str(where.device)
    neural = [name for name in (f0_method, features) if name.startswith("crepe") or name in NEURAL]
    if neural:
        log.info("%s on %s", " and ".join(neural), where.describe())

    unreadable: list[tuple[Path, str]] = []
    too_short: list[Path] = []
    usable = []
    for path in files:
        try:
            seconds = audio_duration(path)
        except AudioLoadError as exc:
            unreadable.append((path, str(exc)))
            continue
        (usable if seconds >= MIN_PIECE_SECONDS else too_short).append(path)
    if not usable:
        detail = "; ".join(f"{p.name}: {why}" for p, why in unreadable[:5])
        if too_short:
            raise DataError(
                f"all {len(too_short)} readable recordings in {dataset_dir} are shorter than "
                f"{MIN_PIECE_SECONDS} s; training needs longer clips (ideally several minutes of speech "
                "in total)"
            )
        raise DataError(f"none of the {len(files)} audio files in {dataset_dir} could be read ({detail})")
    if f0_method.startswith("crepe"):
        crepe_weights_path("tiny" if f0_method == "crepe-tiny" else "full")  # fail now, not mid-run
    if f0_method == "rmvpe" and rmvpe_path is not None:
        try:
            rmvpe_model(rmvpe_path, device)  # a wrong file fails now, not mid-run
        except RMVPEError as error:
            raise DataError(str(error)) from error
    try:  # a missing or wrong HuBERT file, a layer it lacks: said before any work
        extractor = get_extractor(features, feature_dim, hubert_path, device=device, layer=embedder_layer)
    except (ValueError, FileNotFoundError) as error:
        raise DataError(str(error)) from error

    try:
        old = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        old = {}
    if f0_method == "rmvpe" and rmvpe_path is None and old.get("f0_method") != "rmvpe":  # new rmvpe pitch
        raise DataError(RMVPE_NEEDED)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "version": _MANIFEST_VERSION,
        "sample_rate": int(sample_rate),
        "f0_method": f0_method,
        "features": features,
        "feature_dim": int(feature_dim),
    }
    if features == "hubert" and embedder_layer is not None:
        settings["embedder_layer"] = int(embedder_layer)
    sources = _clear_stale(run_dir, old, settings) if old else {}
    for stage_dir in STAGE_DIRS.values():
        (run_dir / stage_dir).mkdir(exist_ok=True)
        for leftover in (run_dir / stage_dir).glob(".*"):  # temp files of a killed run
            if leftover.is_file():
                leftover.unlink()

    dataset = str(dataset_dir.resolve())  # where the data came from (`arvc train` without a dataset checks)

    def save_manifest() -> None:
        _write_text(
            run_dir / MANIFEST,
            json.dumps({**settings, "dataset": dataset, "sources": sources}, indent=1, sort_keys=True),
        )

    def finished(path: Path) -> tuple[str, dict, bool, bool]:
        """(relative path, signature, outputs trusted, all outputs there: reused as they are)"""
        rel = path.relative_to(dataset_dir).as_posix()
        stat = path.stat()
        signature = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = sources.get(rel)
        trusted = bool(entry) and all(entry.get(k) == v for k, v in signature.items())
        return (
            rel,
            signature,
            trusted,
            trusted and entry.get("complete") and _outputs_exist(run_dir, entry["pieces"]),
        )

    lines: list[str] = []
    no_speech: list[Path] = []
    total_seconds, reused, n_sources, done = 0.0, 0, 0, 0
    to_do = sum(not finished(path)[3] for path in usable)
    if progress and to_do:
        progress(0, to_do, "")
    for path in usable:
        rel, signature, trusted, complete = finished(path)
        pieces = None
        if complete:
            pieces = sources[rel]["pieces"]
            reused += 1
        else:
            # Mark in progress first: after a crash, outputs already written for this same
            # source and settings are complete files (atomic writes) and can be kept.
            sources[rel] = {**signature, "pieces": [], "complete": False}
            save_manifest()
            try:
                pieces = _process_source(
                    path,
                    run_dir,
                    _source_key(rel),
                    settings,
                    extractor,
                    reuse=trusted,
                    device=device,
                    rmvpe_path=rmvpe_path,
                )
                sources[rel] = {**signature, "pieces": pieces, "complete": True}
            except AudioLoadError as exc:
                unreadable.append((path, str(exc)))
                sources.pop(rel, None)
            save_manifest()
            done += 1
            if progress:
                progress(done, to_do, path.name)
        if pieces == []:
            no_speech.append(path)
        elif pieces is not None:
            n_sources += 1
            for name, seconds in pieces:
                total_seconds += seconds
                lines.append(_filelist_line(name))

    _report_skipped(unreadable, too_short, no_speech)
    if not lines:
        raise DataError(
            f"no usable speech found in {dataset_dir}: every recording was silent, clipped beyond repair "
            f"(peak > 2.5) or cut into pieces shorter than {MIN_PIECE_SECONDS} s"
        )
    filelist = run_dir / FILELIST
    _write_text(filelist, "\n".join(lines) + "\n")
    if to_do == 0:
        log.info(
            "reusing %d pieces (%.1f s) from %d files in %s", len(lines), total_seconds, n_sources, run_dir
        )
    else:
        log.info(
            "preprocessed %d pieces (%.1f s) from %d files into %s%s",
            len(lines),
            total_seconds,
            n_sources,
            run_dir,
            f" ({reused} of the files reused as preprocessed before)" if reused else "",
        )
    return PreprocessResult(
        run_dir=run_dir,
        filelist=filelist,
        n_sources=n_sources,
        n_pieces=len(lines),
        seconds=total_seconds,
        reused_sources=reused,
        unreadable=unreadable,
        too_short=too_short,
        no_speech=no_speech,
    )


def _paths(run_dir: Path, name: str) -> dict[str, Path]:
    return {
        stage: run_dir / folder / f"{name}{'.wav' if stage in ('gt', '16k') else '.npy'}"
        for stage, folder in STAGE_DIRS.items()
    }


def _outputs_exist(run_dir: Path, pieces: list) -> bool:
    return all(p.is_file() for name, _ in pieces for p in _paths(run_dir, name).values())


def _filelist_line(name: str) -> str:
    rel = {
        stage: f"{folder}/{name}{'.wav' if stage == 'gt' else '.npy'}" for stage, folder in STAGE_DIRS.items()
    }
    return f"{rel['gt']}|{rel['feature']}|{rel['f0']}|{rel['f0nsf']}|0"


def _process_source(
    path: Path, run_dir: Path, key: str, settings: dict, extractor, reuse: bool, device: str, rmvpe_path=None
) -> list:
    """Cut one recording into pieces and write every missing stage output; return [(name, seconds)]."""
    sr = settings["sample_rate"]
    wave = load_audio(path, sr)
    pieces = []
    for k, piece in enumerate(split_for_training(wave, sr, min_seconds=MIN_PIECE_SECONDS)):
        name = f"{key}_{k}"
        out = _paths(run_dir, name)
        have = {stage: reuse and p.is_file() for stage, p in out.items()}
        if not have["gt"]:
            write_wav(out["gt"], piece, sr)
        wave16k = None
        if not have["16k"]:
            wave16k = resample(piece, sr, 16000)
            write_wav(out["16k"], wave16k, 16000)
        if not (have["f0"] and have["f0nsf"]) or not have["feature"]:
            if wave16k is None:
                wave16k = load_audio(out["16k"])
            if not (have["f0"] and have["f0nsf"]):
                if settings["f0_method"] == "rmvpe" and rmvpe_path is None:  # data made before lacks it
                    raise DataError(f"{path} needs its pitch analysed: {RMVPE_NEEDED} (pieces done are kept)")
                f0 = extract_f0(wave16k, settings["f0_method"], device=device, rmvpe_path=rmvpe_path)
                f0 = f0.astype(np.float32)
                _save_npy(out["f0nsf"], f0)
                _save_npy(out["f0"], coarse_f0(f0))  # from the stored values, so the two always agree
            if not have["feature"]:
                _save_npy(out["feature"], extractor(wave16k).astype(np.float32))
        pieces.append([name, round(len(piece) / sr, 4)])
    log.debug("%s: %d pieces", path, len(pieces))
    return pieces


def _report_skipped(unreadable: list[tuple[Path, str]], too_short: list[Path], no_speech: list[Path]) -> None:
    """One logged warning per kind of skipped file, naming each (the reason names the path where it
    already does: it is said once)."""
    if unreadable:
        listing = "\n".join(f"  {why}" if str(p) in why else f"  {p}: {why}" for p, why in unreadable)
        log.warning("skipped %d unreadable audio file(s):\n%s", len(unreadable), listing)
    if too_short:
        listing = "\n".join(f"  {p}" for p in too_short)
        log.warning("skipped %d file(s) shorter than %s s:\n%s", len(too_short), MIN_PIECE_SECONDS, listing)
    if no_speech:
        listing = "\n".join(f"  {p}" for p in no_speech)
        log.warning(
            "skipped %d file(s) with no usable speech (silent, or clipped beyond repair):\n%s",
            len(no_speech),
            listing,
        )
