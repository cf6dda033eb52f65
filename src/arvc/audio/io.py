"""Audio input and RVC's dataset cutting: load, resample, high-pass, slice at silences, chunk, normalise.

The constants mirror RVC's ``preprocess.py`` so a dataset cut here yields the same kind of
training pieces users know from the WebUI: silence-aware slices, 3.7 s chunks with 0.3 s
overlap, peak-normalised to 0.9 blended with the original level (alpha 0.75).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from arvc._files import atomic_file

__all__ = [
    "AudioLoadError",
    "OUTPUT_FORMATS",
    "SUPPORTED_EXTENSIONS",
    "Slicer",
    "audio_duration",
    "chunk",
    "find_audio_files",
    "highpass",
    "load_audio",
    "normalize_peak",
    "resample",
    "output_format",
    "split_for_training",
    "write_audio",
    "write_wav",
]

#: What `arvc infer` writes for each output extension: soundfile (format, subtype), where this machine's
#: libsndfile can (MP3 needs libsndfile >= 1.1). WAV and FLAC are 16-bit PCM, as RVC WebUI writes them:
#: every tool reads them without a warning. (soundfile's float WAV has a fmt chunk without its cbSize
#: extension: sox warns "header missing extended part of fmt chunk" and Python's wave module refuses it.)
OUTPUT_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}

#: Extensions read through libsndfile. MP3 needs libsndfile >= 1.1 (bundled with soundfile >= 0.12).
SUPPORTED_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

# RVC preprocess constants.
SLICE_THRESHOLD_DB = -42.0
SLICE_MIN_LENGTH_MS = 1500
SLICE_MIN_INTERVAL_MS = 400
SLICE_HOP_MS = 15
SLICE_MAX_SILENCE_KEPT_MS = 500
CHUNK_SECONDS = 3.7
CHUNK_OVERLAP_SECONDS = 0.3
NORM_MAX = 0.9
NORM_ALPHA = 0.75
#: Pieces whose peak exceeds this are clipped/corrupt beyond repair; RVC drops them too.
CLIPPED_PEAK = 2.5
HIGHPASS_HZ = 48.0


class AudioLoadError(RuntimeError):
    """A file could not be decoded; the message says which file and why."""


def find_audio_files(directory: str | os.PathLike) -> list[Path]:
    """Audio files under ``directory`` (recursively, hidden entries skipped), sorted for stable ids."""
    root = Path(directory)
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS:
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _mp3_supported() -> bool:
    return "MP3" in sf.available_formats()


def _check_format(path: Path) -> None:
    if path.suffix.lower() == ".mp3" and not _mp3_supported():
        raise AudioLoadError(
            f"{path}: this soundfile/libsndfile build ({sf.__libsndfile_version__}) cannot decode MP3; "
            "install soundfile>=0.12 (bundles libsndfile>=1.1) or convert the file to WAV/FLAC"
        )


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header only (cheap validation before any decoding)."""
    path = Path(path)
    _check_format(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types; all mean "unreadable"
        raise AudioLoadError(f"{path}: {exc}") from exc
    if info.samplerate <= 0:
        raise AudioLoadError(f"{path}: invalid sample rate {info.samplerate}")
    return info.frames / info.samplerate


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (exact rational ratio, no librosa needed); float32 out."""
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    g = math.gcd(int(orig_sr), int(target_sr))
    out = signal.resample_poly(wave, int(target_sr) // g, int(orig_sr) // g, axis=-1)
    return out.astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, sr: int | None = None) -> np.ndarray:
    """Decode any supported file to mono float32, resampled to ``sr`` when given.

    Raises :class:`AudioLoadError` for anything that cannot be decoded, so callers can
    collect bad files and carry on.
    """
    path = Path(path)
    _check_format(path)
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioLoadError(f"{path}: {exc}") from exc
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise AudioLoadError(f"{path}: contains NaN or infinite samples")
    if sr is not None:
        wave = resample(wave, file_sr, sr)
    return np.ascontiguousarray(wave, dtype=np.float32)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sr: int) -> None:
    """Write a float32 WAV (arvc's own data: slices, training samples) atomically (temp file + rename) so
    an interrupted run leaves no half file."""
    with atomic_file(path, suffix=".wav") as temporary:
        sf.write(temporary, np.asarray(wave, dtype=np.float32), sr, subtype="FLOAT")


@functools.lru_cache(maxsize=8)
def output_format(path: str | os.PathLike) -> tuple[str, str]:
    """The soundfile (format, subtype) a converted recording is written in, from its extension; a
    ValueError naming the ones this machine can write for any other."""
    path = Path(path)
    writable = [ext for ext, (fmt, subtype) in OUTPUT_FORMATS.items() if sf.check_format(fmt, subtype)]
    if path.suffix.lower() not in writable:
        what = f"{path.suffix!r}" if path.suffix else "a name without an extension"
        raise ValueError(
            f"output {path}: the format follows the extension, and arvc writes {', '.join(writable)}; "
            f"{what} is not one of them: name it e.g. {path.with_suffix('.wav')}"
        )
    return OUTPUT_FORMATS[path.suffix.lower()]


def write_audio(path: str | os.PathLike, wave: np.ndarray, sr: int) -> None:
    """Write a finished recording (a conversion) atomically, in the format its extension names
    (`OUTPUT_FORMATS`); a failed write is an `arvc._files.WriteError` and leaves `path` as it was."""
    fmt, subtype = output_format(path)
    with atomic_file(path, suffix=Path(path).suffix) as temporary:
        sf.write(temporary, np.asarray(wave, dtype=np.float32), sr, format=fmt, subtype=subtype)


@functools.lru_cache(maxsize=8)
def _highpass_coeffs(sr: int) -> tuple[np.ndarray, np.ndarray]:
    return signal.butter(N=5, Wn=HIGHPASS_HZ, btype="high", fs=sr)


def highpass(wave: np.ndarray, sr: int, settle: bool = False) -> np.ndarray:
    """5th-order 48 Hz Butterworth high-pass, causal like RVC (zero-phase filtering pre-rings).

    `settle` starts the filter as if the wave had held its opening level (the mean of its first 20 ms)
    forever, so a constant offset is gone from the first sample on instead of decaying over ~50 ms: the
    form for generator output, which can carry DC (see arvc.infer.convert)."""
    b, a = _highpass_coeffs(int(sr))
    wave = np.asarray(wave)
    if not settle or wave.size == 0:
        return signal.lfilter(b, a, wave).astype(np.float32)
    level = float(np.mean(wave[: max(1, int(sr) // 50)]))
    filtered, _ = signal.lfilter(b, a, wave, zi=signal.lfilter_zi(b, a) * level)
    return filtered.astype(np.float32)


def normalize_peak(piece: np.ndarray, peak: float = NORM_MAX, alpha: float = NORM_ALPHA) -> np.ndarray | None:
    """RVC's loudness normalisation: ``alpha`` of the peak-normalised piece plus the rest unchanged.

    Returns None for pieces that are silent or whose peak exceeds 2.5 (badly clipped input),
    which RVC drops rather than trains on.
    """
    top = float(np.abs(piece).max()) if piece.size else 0.0
    if top <= 0.0 or top > CLIPPED_PEAK:
        return None
    return (piece / top * (peak * alpha) + (1.0 - alpha) * piece).astype(np.float32)


def chunk(
    wave: np.ndarray, sr: int, seconds: float = CHUNK_SECONDS, overlap: float = CHUNK_OVERLAP_SECONDS
) -> list[np.ndarray]:
    """Cut a slice into ``seconds``-long pieces that overlap by ``overlap``.

    As in RVC, the last piece takes whatever is left once less than ``seconds + overlap``
    remains, so it is between ``overlap`` and ``seconds + overlap`` long (or the whole slice).
    """
    step = int(sr * (seconds - overlap))
    size = int(sr * seconds)
    tail = (seconds + overlap) * sr
    pieces = []
    start = 0
    while len(wave) - start > tail:
        pieces.append(wave[start : start + size])
        start += step
    pieces.append(wave[start:])
    return pieces


class Slicer:
    """RMS-based silence slicer with RVC's semantics (audio-slicer by openvpi).

    A cut is made in a silent stretch (RMS below ``threshold_db``) that lasts at least
    ``min_interval_ms`` once the current clip is at least ``min_length_ms`` long; up to
    ``max_sil_kept_ms`` of silence is kept on each side of a cut, and the cut point is the
    quietest frame. Leading and trailing silence is trimmed.
    """

    def __init__(
        self,
        sr: int,
        threshold_db: float = SLICE_THRESHOLD_DB,
        min_length_ms: int = SLICE_MIN_LENGTH_MS,
        min_interval_ms: int = SLICE_MIN_INTERVAL_MS,
        hop_ms: int = SLICE_HOP_MS,
        max_sil_kept_ms: int = SLICE_MAX_SILENCE_KEPT_MS,
    ):
        if not min_length_ms >= min_interval_ms >= hop_ms:
            raise ValueError("need min_length_ms >= min_interval_ms >= hop_ms")
        if max_sil_kept_ms < hop_ms:
            raise ValueError("need max_sil_kept_ms >= hop_ms")
        interval_samples = sr * min_interval_ms / 1000
        self.threshold = 10 ** (threshold_db / 20.0)
        self.hop = round(sr * hop_ms / 1000)
        self.win = min(round(interval_samples), 4 * self.hop)
        self.min_length = round(sr * min_length_ms / 1000 / self.hop)
        self.min_interval = round(interval_samples / self.hop)
        self.max_kept = round(sr * max_sil_kept_ms / 1000 / self.hop)

    def rms(self, wave: np.ndarray) -> np.ndarray:
        """Frame RMS, frames centred on ``i * hop`` with zero padding (librosa.feature.rms framing)."""
        half = self.win // 2
        padded = np.pad(np.asarray(wave, dtype=np.float64), (half, half))
        csum = np.concatenate([[0.0], np.cumsum(padded**2)])
        n_frames = 1 + (len(padded) - self.win) // self.hop
        starts = np.arange(n_frames) * self.hop
        energy = (csum[starts + self.win] - csum[starts]) / self.win
        return np.sqrt(np.maximum(energy, 0.0))

    def _silences(self, rms: np.ndarray) -> list[tuple[int, int]]:
        """Frame ranges to cut out, in order; each cut is placed at the quietest frames."""
        keep = self.max_kept

        def quietest(lo: int, hi: int) -> int:
            return int(rms[lo:hi].argmin()) + lo

        cuts: list[tuple[int, int]] = []
        sil_start: int | None = None
        clip_start = 0
        for i, level in enumerate(rms):
            if level < self.threshold:
                if sil_start is None:
                    sil_start = i
                continue
            if sil_start is None:
                continue
            leading = sil_start == 0 and i > keep
            long_enough = i - sil_start >= self.min_interval and i - clip_start >= self.min_length
            if not (leading or long_enough):
                sil_start = None
                continue
            length = i - sil_start
            if length <= keep:
                # Short silence: one cut point at its quietest frame.
                pos = quietest(sil_start, i + 1)
                cuts.append((0, pos) if sil_start == 0 else (pos, pos))
                clip_start = pos
            else:
                left = quietest(sil_start, sil_start + keep + 1)
                right = quietest(i - keep, i + 1)
                if sil_start == 0:
                    cuts.append((0, right))
                elif length <= 2 * keep:
                    # Medium silence: the edges may overlap, so also consider the overall quietest frame.
                    mid = quietest(i - keep, sil_start + keep + 1)
                    cuts.append((min(left, mid), max(right, mid)))
                    right = max(right, mid)
                else:
                    cuts.append((left, right))
                clip_start = right
            sil_start = None
        total = len(rms)
        if sil_start is not None and total - sil_start >= self.min_interval:
            end = min(total, sil_start + keep)
            cuts.append((quietest(sil_start, end + 1), total + 1))
        return cuts

    def slice(self, wave: np.ndarray) -> list[np.ndarray]:
        """Split a mono wave into voiced clips (views into ``wave``)."""
        if len(wave) <= self.min_length:
            return [wave]
        cuts = self._silences(self.rms(wave))
        if not cuts:
            return [wave]
        total = (len(wave) + 2 * (self.win // 2) - self.win) // self.hop + 1
        bounds = []
        if cuts[0][0] > 0:
            bounds.append((0, cuts[0][0]))
        bounds.extend((cuts[k][1], cuts[k + 1][0]) for k in range(len(cuts) - 1))
        if cuts[-1][1] < total:
            bounds.append((cuts[-1][1], total))
        return [wave[a * self.hop : min(len(wave), b * self.hop)] for a, b in bounds]


def split_for_training(wave: np.ndarray, sr: int, min_seconds: float = 0.0) -> list[np.ndarray]:
    """RVC's per-file pipeline: high-pass, slice at silences, chunk, normalise.

    Pieces shorter than ``min_seconds`` and pieces dropped by :func:`normalize_peak` are left out.
    """
    pieces = []
    for clip in Slicer(sr).slice(highpass(wave, sr)):
        for piece in chunk(clip, sr):
            if len(piece) < min_seconds * sr:
                continue
            normed = normalize_peak(piece)
            if normed is not None:
                pieces.append(normed)
    return pieces
