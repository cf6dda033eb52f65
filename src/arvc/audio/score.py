"""Objective scores for a converted or reconstructed recording against its time-aligned original.

The metrics voice-conversion papers report (docs/scoring.md has each definition and what it means for a
listener): F0 RMSE in cents and F0 correlation over the frames voiced in both, the voiced/unvoiced error
rate, mel-cepstral distortion (MCD, dB), and wide-band PESQ and STOI. No DTW: the two recordings must
cover the same time span (a reconstruction, or a conversion of the same take), as held-out pieces do.

Pitch comes from arvc's own extractors (:func:`arvc.audio.f0.extract_f0`) at 16 kHz, 100 frames/s.
The mel-cepstrum is this module's own code: WORLD's CheapTrick envelope -> minimum-phase cepstrum ->
SPTK's ``freqt`` all-pass warping with the ``alpha`` that best fits the mel scale at the sampling rate
(:func:`mcep_alpha`, SPTK's/pysptk's ``mcepalpha`` rule). PESQ and STOI need the optional extra
``arvc[score]`` (the ``pesq`` and ``pystoi`` packages); a missing one raises :class:`ScoreDependencyError`.
Speaker similarity (:func:`speaker_similarity`, the cosine of two resemblyzer speaker embeddings) needs
``resemblyzer`` from the same extra; it does not need the recordings to be time-aligned.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
import os
import sys
import types
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from arvc.audio.f0 import F0_METHODS, RMVPE_NEEDED, _pyworld, extract_f0
from arvc.audio.io import AudioLoadError, audio_duration, find_audio_files, load_audio, resample
from arvc.config import BETTER  # re-exported: the scores' directions

__all__ = [
    "ALL_METRICS",
    "F0_HOP",
    "F0_SR",
    "MCD_ORDER",
    "BETTER",
    "COLUMNS",
    "GROUP",
    "METRICS",
    "SCORE_EXTRA_HINT",
    "SCORE_NAMES",
    "ScoreDependencyError",
    "Scores",
    "better",
    "check_metrics",
    "f0_scores",
    "mcd",
    "mcd_from_mcep",
    "mcep_alpha",
    "mel_cepstrum",
    "mel_cepstrum_from_envelope",
    "missing_metrics",
    "pair_recordings",
    "pesq_wb",
    "score",
    "score_files",
    "file_speaker_similarity",
    "load_voice_encoder",
    "speaker_embedding",
    "speaker_similarity",
    "stoi",
    "voice_embedding",
]

#: Which groups :func:`score` computes by default, cheapest first.
METRICS = ("f0", "mcd", "pesq", "stoi")
#: Every group :func:`score` can compute: the defaults and ``speaker`` (speaker similarity, opt-in here:
#: loading resemblyzer and its encoder takes seconds; held-out validation computes it as an expensive group).
ALL_METRICS = (*METRICS, "speaker")
F0_SR = 16000
F0_HOP = 160  # 10 ms frames, as RVC's pitch
#: Mel-cepstral order: coefficients c_1..c_24 enter MCD (c_0, the frame's level, does not).
MCD_ORDER = 24
#: Frames quieter than this many dB under the original's loudest frame are left out of MCD (pauses).
MCD_SILENCE_DB = 40.0
#: The scores held-out validation computes (:class:`Scores`' fields but the frame count and the similarity
#: to a target voice), and the group that computes each.
SCORE_NAMES = ("f0_rmse_cents", "f0_corr", "vuv_error", "mcd_db", "pesq_wb", "stoi", "speaker_sim")
GROUP = {
    "f0_rmse_cents": "f0",
    "f0_corr": "f0",
    "vuv_error": "f0",
    "mcd_db": "mcd",
    "pesq_wb": "pesq",
    "stoi": "stoi",
    "speaker_sim": "speaker",
}
#: How the scores are shown: key, header, format (`arvc score`'s table, `arvc compare`'s report).
COLUMNS = (
    ("f0_rmse_cents", "F0 RMSE (cents)", "{:.1f}"),
    ("f0_corr", "F0 corr", "{:.3f}"),
    ("vuv_error", "V/UV error", "{:.1%}"),
    ("mcd_db", "MCD (dB)", "{:.2f}"),
    ("pesq_wb", "PESQ-wb", "{:.2f}"),
    ("stoi", "STOI", "{:.3f}"),
    ("speaker_sim", "Speaker sim", "{:.3f}"),
    ("target_sim", "Target sim", "{:.3f}"),
)
PESQ_SR = 16000  # wide-band PESQ is defined at 16 kHz
SPEAKER_SR = 16000  # resemblyzer's rate
SCORE_EXTRA_HINT = "pip install 'arvc[score]'"
#: Lengths may differ by this many samples of 16 kHz audio (a vocoder's padding), never more.
_LENGTH_SLACK_S = 0.05


class ScoreDependencyError(ImportError):
    """An optional scoring package is not installed; the message names the extra to install."""


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` beats ``old`` (None: nothing yet) on ``metric`` (a key of :data:`BETTER`); a
    non-finite ``new`` never does, and a finite one beats a non-finite ``old``."""
    if not math.isfinite(new):
        return False
    if old is None or not math.isfinite(old):
        return True
    return new < old if BETTER[metric] == "lower" else new > old


@dataclass(frozen=True)
class Scores:
    """One recording's scores; ``nan`` where a metric was not asked for or has nothing to measure."""

    f0_rmse_cents: float = math.nan
    f0_corr: float = math.nan
    vuv_error: float = math.nan
    voiced_frames: int = 0  # frames voiced in both, the F0 RMSE and correlation's support
    mcd_db: float = math.nan
    pesq_wb: float = math.nan
    stoi: float = math.nan
    speaker_sim: float = math.nan  # speaker similarity to the original (cosine of resemblyzer embeddings)
    target_sim: float = math.nan  # speaker similarity to a target voice (`arvc score --target-voice`)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# --------------------------------------------------------------------------- pitch


def f0_scores(f0_ref: np.ndarray, f0_conv: np.ndarray) -> tuple[float, float, float, int]:
    """(F0 RMSE in cents, Pearson correlation of F0 in Hz, V/UV error rate, frames voiced in both) of two
    pitch tracks of equal length (Hz, 0 = unvoiced).

    RMSE and correlation use only the frames voiced in both; the V/UV error rate is the fraction of all
    frames voiced in exactly one. RMSE is ``nan`` without a frame voiced in both, the correlation also
    with fewer than two such frames or a constant pitch in either.
    """
    a = np.asarray(f0_ref, dtype=np.float64)
    b = np.asarray(f0_conv, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pitch tracks must be 1-D and of one length, got {a.shape} and {b.shape}")
    va, vb = a > 0, b > 0
    vuv = float(np.mean(va != vb)) if len(a) else math.nan
    both = va & vb
    n = int(both.sum())
    if n == 0:
        return math.nan, math.nan, vuv, 0
    cents = 1200.0 * np.log2(b[both] / a[both])
    rmse = float(np.sqrt(np.mean(cents**2)))
    x, y = a[both] - a[both].mean(), b[both] - b[both].mean()
    denom = math.sqrt(float(np.sum(x * x)) * float(np.sum(y * y)))
    corr = float(np.sum(x * y) / denom) if n >= 2 and denom > 0 else math.nan
    return rmse, corr, vuv, n


# --------------------------------------------------------------------------- mel-cepstrum


def _mel_vector(sr: float, n: int) -> np.ndarray:
    hz = (sr / 2.0) / n * np.arange(n)
    mel = 1000.0 / np.log(2) * np.log1p(hz / 1000.0)
    return mel / mel[-1]


def _warp_vector(alpha: float, n: int) -> np.ndarray:
    omega = np.pi / n * np.arange(n)
    warped = np.arctan2((1 - alpha * alpha) * np.sin(omega), (1 + alpha * alpha) * np.cos(omega) - 2 * alpha)
    warped[warped < 0] += np.pi
    return warped / warped[-1]


@functools.lru_cache(maxsize=16)
def mcep_alpha(sr: int) -> float:
    """The all-pass constant whose frequency warping best fits the mel scale at ``sr`` (least squares over
    1000 points, alpha in steps of 0.001): SPTK's/pysptk's ``mcepalpha`` rule (0.41 at 16 kHz, 0.554 at
    48 kHz)."""
    mel = _mel_vector(sr, 1000)
    alphas = np.round(np.arange(0.0, 1.0, 0.001), 3)
    errors = [float(np.mean((mel - _warp_vector(a, 1000)) ** 2)) for a in alphas]
    return float(alphas[int(np.argmin(errors))])


@functools.lru_cache(maxsize=8)
def _freqt_matrix(n_in: int, order: int, alpha: float) -> np.ndarray:
    """SPTK's ``freqt`` (cepstrum -> warped cepstrum) as the matrix ``[n_in, order + 1]`` it is (it is
    linear): the recursion run once on every unit input."""
    c = np.eye(n_in)
    g = np.zeros((n_in, order + 1))
    b = 1.0 - alpha * alpha
    for i in range(n_in - 1, -1, -1):  # input coefficients from the highest down
        d = g.copy()
        g[:, 0] = c[:, i] + alpha * d[:, 0]
        if order >= 1:
            g[:, 1] = b * d[:, 0] + alpha * d[:, 1]
        for j in range(2, order + 1):
            g[:, j] = d[:, j - 1] + alpha * (d[:, j] - g[:, j - 1])
    return g


def mel_cepstrum_from_envelope(sp: np.ndarray, order: int, alpha: float) -> np.ndarray:
    """Mel-cepstrum ``[frames, order + 1]`` of power envelopes ``sp`` ``[frames, fft_size // 2 + 1]``.

    The causal (minimum-phase) cepstrum of the log amplitude, ``c[0] = r[0]``, ``c[n] = 2 r[n]`` for
    ``0 < n <= fft_size / 2`` where ``r = irfft(log sqrt(sp))``, warped by SPTK's ``freqt`` recursion, so
    that ``log|H(w)| = sum_m c~[m] cos(m w~)`` on the all-pass-warped frequency ``w~``.
    """
    log_amp = 0.5 * np.log(np.maximum(np.asarray(sp, dtype=np.float64), 1e-20))
    r = np.fft.irfft(log_amp, axis=-1)
    half = log_amp.shape[-1] - 1
    c = np.concatenate([r[..., :1], 2.0 * r[..., 1:half], r[..., half : half + 1]], axis=-1)
    return c @ _freqt_matrix(half + 1, order, round(float(alpha), 6))


def _envelope(wave: np.ndarray, sr: int, f0: np.ndarray, frame_s: float) -> np.ndarray:
    pyworld = _pyworld()
    x = np.ascontiguousarray(wave, dtype=np.float64)
    t = np.arange(len(f0)) * frame_s
    return pyworld.cheaptrick(x, np.ascontiguousarray(f0, dtype=np.float64), t, sr)


def mel_cepstrum(
    wave: np.ndarray, sr: int, f0: np.ndarray, *, order: int = MCD_ORDER, alpha: float | None = None
) -> np.ndarray:
    """Mel-cepstra ``[len(f0), order + 1]`` of ``wave``, one per 10 ms pitch frame of ``f0`` (Hz, 0 =
    unvoiced; CheapTrick needs it to size its window), ``alpha`` by default :func:`mcep_alpha` of ``sr``."""
    sp = _envelope(wave, sr, f0, F0_HOP / F0_SR)
    return mel_cepstrum_from_envelope(sp, order, mcep_alpha(sr) if alpha is None else alpha)


def mcd_from_mcep(mc_ref: np.ndarray, mc_conv: np.ndarray) -> float:
    """Mean over frames of ``(10 / ln 10) * sqrt(2 * sum_{d>=1} (c_d - c'_d)^2)`` in dB; c_0 left out."""
    a, b = np.asarray(mc_ref, dtype=np.float64), np.asarray(mc_conv, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"mel-cepstra must be [frames, order + 1] of one shape, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return math.nan
    diff = a[:, 1:] - b[:, 1:]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(diff * diff, axis=1))))


def _speech_frames(mc: np.ndarray, silence_db: float) -> np.ndarray:
    """Frames within ``silence_db`` of the loudest: c_0 is the mean log amplitude, 20/ln10 dB per unit."""
    level_db = 20.0 / np.log(10.0) * mc[:, 0]
    return level_db >= level_db.max() - silence_db


def mcd(
    reference: np.ndarray,
    converted: np.ndarray,
    sr: int,
    f0_ref: np.ndarray,
    f0_conv: np.ndarray,
    *,
    order: int = MCD_ORDER,
    silence_db: float = MCD_SILENCE_DB,
) -> float:
    """MCD in dB of two time-aligned recordings at ``sr``, frame by frame (no DTW), over the original's
    non-silent frames (within ``silence_db`` of its loudest); each envelope uses its own pitch track."""
    mc_ref = mel_cepstrum(reference, sr, f0_ref, order=order)
    mc_conv = mel_cepstrum(converted, sr, f0_conv, order=order)
    keep = _speech_frames(mc_ref, silence_db)
    return mcd_from_mcep(mc_ref[keep], mc_conv[keep])


# --------------------------------------------------------------------------- PESQ and STOI


def _import(name: str, metric: str):
    try:
        return __import__(name)
    except ImportError as exc:
        raise ScoreDependencyError(
            f"{metric} needs the '{name}' package, which is not installed: {SCORE_EXTRA_HINT}"
        ) from exc


def pesq_wb(reference: np.ndarray, converted: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO from about 1.0 to 4.64), both resampled to 16 kHz."""
    pesq = _import("pesq", "PESQ")
    ref = resample(reference, sr, PESQ_SR).astype(np.float64)
    deg = resample(converted, sr, PESQ_SR).astype(np.float64)
    try:
        return float(pesq.pesq(PESQ_SR, ref, deg, "wb"))
    except Exception as exc:  # pesq raises its own NoUtterancesError and friends for speech-free input
        raise ValueError(f"PESQ cannot score this recording: {exc}") from exc


def stoi(reference: np.ndarray, converted: np.ndarray, sr: int) -> float:
    """STOI (Taal et al. 2011, 0..1); pystoi resamples to its 10 kHz itself."""
    pystoi = _import("pystoi", "STOI")
    ref = np.asarray(reference, dtype=np.float64)
    deg = np.asarray(converted, dtype=np.float64)
    return float(pystoi.stoi(ref, deg, sr, extended=False))


# --------------------------------------------------------------------------- speaker similarity


def _get_distribution(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(version=importlib.metadata.version(name))


def _resemblyzer():
    """The ``resemblyzer`` module, or a :class:`ScoreDependencyError` naming the extra.

    resemblyzer's ``__init__`` imports its audio module, which imports webrtcvad (its voice activity
    detector, part of ``preprocess_wav``); webrtcvad 2.0.10 reads its own version at import with
    ``pkg_resources.get_distribution(name).version``, and ``pkg_resources`` is gone from setuptools 81 on.
    Where it is missing, a stand-in module with only that function (via importlib.metadata) is in
    ``sys.modules`` for the duration of the import, then removed (docs/scoring.md says why this way).
    """
    if "resemblyzer" in sys.modules and sys.modules["resemblyzer"] is not None:
        return sys.modules["resemblyzer"]
    shim = None
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.get_distribution = _get_distribution
        sys.modules["pkg_resources"] = shim
    try:
        with warnings.catch_warnings():  # resemblyzer 0.1.4 imports scipy.ndimage.morphology (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
    except ImportError as exc:
        raise ScoreDependencyError(
            f"speaker similarity needs the 'resemblyzer' package, which is not installed or cannot be "
            f"imported ({exc}): {SCORE_EXTRA_HINT}"
        ) from exc
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    return resemblyzer


def load_voice_encoder(device="cpu"):
    """A new resemblyzer speaker encoder (its weights ship in its wheel) on ``device``, in eval mode.

    Building it draws the random initial weights of its LSTM before loading the trained ones; that is done
    under ``torch.random.fork_rng``, so loading it never changes the caller's random stream (a training
    run's)."""
    import torch

    resemblyzer = _resemblyzer()
    with torch.random.fork_rng(devices=[]):
        return resemblyzer.VoiceEncoder(device=torch.device(device), verbose=False).eval()


@functools.lru_cache(maxsize=1)
def _voice_encoder():
    """The speaker encoder of the functions below when none is given: loaded once, on the CPU."""
    return load_voice_encoder("cpu")


def speaker_embedding(wave: np.ndarray, sr: int, encoder=None) -> np.ndarray | None:
    """resemblyzer's 256-dim, unit-norm speaker embedding of ``wave`` (mono at ``sr``): its own
    ``preprocess_wav`` (resampled to 16 kHz, volume normalised, long silences trimmed by webrtcvad), then
    ``VoiceEncoder.embed_utterance`` of ``encoder`` (:func:`load_voice_encoder`; by default one on the CPU,
    loaded once). ``None`` when the voice activity detector keeps nothing (silence)."""
    resemblyzer = _resemblyzer()
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("speaker similarity cannot embed a recording with non-finite samples")
    if not np.any(x):
        return None
    wav = resemblyzer.preprocess_wav(x, source_sr=sr)
    if len(wav) == 0 or not np.any(wav):
        return None
    encoder = _voice_encoder() if encoder is None else encoder
    return np.asarray(encoder.embed_utterance(wav), dtype=np.float64)


def _cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return math.nan
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def voice_embedding(paths: list[Path]) -> np.ndarray:
    """A speaker's embedding from recordings of them: the unit-norm mean of their :func:`speaker_embedding`
    (as resemblyzer's ``embed_speaker``), each file read at 16 kHz; a ValueError when none holds speech."""
    embeddings = [speaker_embedding(load_audio(path, SPEAKER_SR), SPEAKER_SR) for path in paths]
    embeddings = [e for e in embeddings if e is not None]
    if not embeddings:
        raise ValueError(f"no speech found in the {len(paths)} target voice recording(s)")
    mean = np.mean(embeddings, axis=0)
    return mean / np.linalg.norm(mean)


def file_speaker_similarity(path: str | os.PathLike, embedding: np.ndarray) -> float:
    """The cosine of a recording's :func:`speaker_embedding` (read at 16 kHz) with ``embedding`` (e.g. a
    :func:`voice_embedding`); ``nan`` where the recording holds no speech."""
    return _cosine(speaker_embedding(load_audio(path, SPEAKER_SR), SPEAKER_SR), embedding)


def speaker_similarity(a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int, encoder=None) -> float:
    """Speaker similarity of two recordings (any lengths, rates): the cosine of their resemblyzer
    embeddings (:func:`speaker_embedding`, with ``encoder``), 1 for the same voice; ``nan`` where one holds
    no speech."""
    return _cosine(speaker_embedding(a, sr_a, encoder), speaker_embedding(b, sr_b, encoder))


# --------------------------------------------------------------------------- all together


def _check_lengths(seconds_ref: float, seconds_conv: float) -> None:
    if abs(seconds_ref - seconds_conv) > _LENGTH_SLACK_S:
        raise ValueError(
            f"the recordings are not time-aligned: {seconds_ref:.3f} s and {seconds_conv:.3f} s "
            f"(they may differ by {_LENGTH_SLACK_S} s at most); score a conversion of the same take"
        )


def _aligned(reference: np.ndarray, converted: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float32).reshape(-1)
    conv = np.asarray(converted, dtype=np.float32).reshape(-1)
    _check_lengths(len(ref) / sr, len(conv) / sr)
    n = min(len(ref), len(conv))
    return ref[:n], conv[:n]


def missing_metrics(metrics: tuple[str, ...]) -> dict[str, str]:
    """The groups of ``metrics`` whose optional package is not installed: group -> the message saying so."""
    missing = {}
    for group, package, name in (("pesq", "pesq", "PESQ"), ("stoi", "pystoi", "STOI")):
        if group in metrics:
            try:
                _import(package, name)
            except ScoreDependencyError as error:
                missing[group] = str(error)
    if "speaker" in metrics:
        try:
            _resemblyzer()
        except ScoreDependencyError as error:
            missing["speaker"] = str(error)
    return missing


def check_metrics(metrics: tuple[str, ...], f0_method: str = "pm", rmvpe_path=None) -> None:
    """Refuse, before any work, an unknown metric or pitch extractor, rmvpe without its model, and a metric
    whose package is missing (:class:`ScoreDependencyError`, naming the extra)."""
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(ALL_METRICS)}"
        )
    if f0_method not in F0_METHODS:
        raise ValueError(f"unknown f0 method {f0_method!r}; valid methods: {', '.join(F0_METHODS)}")
    if f0_method == "rmvpe" and rmvpe_path is None and ("f0" in metrics or "mcd" in metrics):
        raise ValueError(RMVPE_NEEDED)
    if "pesq" in metrics:
        _import("pesq", "PESQ")
    if "stoi" in metrics:
        _import("pystoi", "STOI")
    if "speaker" in metrics:
        _resemblyzer()


def score(
    reference: np.ndarray,
    converted: np.ndarray,
    sr: int,
    *,
    f0_method: str = "pm",
    metrics: tuple[str, ...] = METRICS,
    rmvpe_path=None,
    encoder=None,
) -> Scores:
    """Score ``converted`` against its time-aligned original ``reference`` (mono, both at ``sr``).

    ``metrics`` picks groups of :data:`METRICS`: ``f0`` (F0 RMSE, correlation, V/UV error), ``mcd``,
    ``pesq``, ``stoi``, and (not by default) ``speaker``: :func:`speaker_similarity` with ``encoder``
    (:func:`load_voice_encoder`; by default one on the CPU). Pitch is found with ``f0_method`` (one of
    arvc's extractors) on 16 kHz copies.
    """
    check_metrics(metrics, f0_method, rmvpe_path)
    ref, conv = _aligned(reference, converted, sr)
    out: dict[str, float] = {}
    if "f0" in metrics or "mcd" in metrics:
        f0_ref, f0_conv = (
            extract_f0(resample(w, sr, F0_SR), f0_method, F0_SR, F0_HOP, rmvpe_path=rmvpe_path)
            for w in (ref, conv)
        )
        if "f0" in metrics:
            rmse, corr, vuv, n = f0_scores(f0_ref, f0_conv)
            out.update(f0_rmse_cents=rmse, f0_corr=corr, vuv_error=vuv, voiced_frames=n)
        if "mcd" in metrics:
            out["mcd_db"] = mcd(ref, conv, sr, f0_ref, f0_conv)
    if "pesq" in metrics:
        out["pesq_wb"] = pesq_wb(ref, conv, sr)
    if "stoi" in metrics:
        out["stoi"] = stoi(ref, conv, sr)
    if "speaker" in metrics:
        out["speaker_sim"] = speaker_similarity(ref, sr, conv, sr, encoder)
    return Scores(**out)


def pair_recordings(
    original: str | os.PathLike, converted: str | os.PathLike
) -> list[tuple[str, Path, Path]]:
    """(name, original, converted) to score: two files, or two folders whose audio files are matched by
    their path inside the folder without the extension (``a/take1.wav`` with ``a/take1.flac``). A ValueError
    says what is missing, unmatched or of another length (read from the headers), before anything is
    decoded; an unreadable header is an :class:`AudioLoadError` naming the file."""
    original, converted = Path(original), Path(converted)
    for what, path in (("original", original), ("converted", converted)):
        if not path.exists():
            raise ValueError(f"{what} {path} does not exist")
    if original.is_file() and converted.is_file():
        pairs = [(converted.name, original, converted)]
    else:
        pairs = _pair_folders(original, converted)
    for _, ref_path, conv_path in pairs:
        try:
            _check_lengths(audio_duration(ref_path), audio_duration(conv_path))
        except ValueError as exc:
            raise ValueError(f"{conv_path}: {exc}") from exc
    return pairs


def _pair_folders(original: Path, converted: Path) -> list[tuple[str, Path, Path]]:
    if not (original.is_dir() and converted.is_dir()):
        raise ValueError(
            f"give two audio files or two folders, not a file and a folder: {original}, {converted}"
        )

    def by_stem(folder: Path) -> dict[str, Path]:
        return {p.relative_to(folder).with_suffix("").as_posix(): p for p in find_audio_files(folder)}

    ours, theirs = by_stem(original), by_stem(converted)
    names = sorted(ours.keys() & theirs.keys())
    if not names:
        raise ValueError(
            f"no recording in {converted} has a namesake in {original} ({len(theirs)} and {len(ours)} audio "
            "files); name each conversion as its original, the extension aside"
        )
    unmatched = sorted(theirs.keys() - ours.keys())
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} recording(s) in {converted} have no original in {original}: "
            f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}"
        )
    return [(name, ours[name], theirs[name]) for name in names]


def score_files(
    original: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    f0_method: str = "pm",
    metrics: tuple[str, ...] = METRICS,
    rmvpe_path=None,
) -> Scores:
    """:func:`score` of two audio files, at the original's sampling rate (the conversion resampled to it)."""
    audio_duration(original)  # an unreadable header is an AudioLoadError naming the file
    try:
        sr = sf.info(str(original)).samplerate
    except Exception as exc:
        raise AudioLoadError(f"{original}: {exc}") from exc
    return score(
        load_audio(original),
        load_audio(converted, sr),
        sr,
        f0_method=f0_method,
        metrics=metrics,
        rmvpe_path=rmvpe_path,
    )
