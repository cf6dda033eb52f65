"""Spectrograms the way RVC computes them, without librosa.

RVC's losses compare a mel spectrogram of the generated wave against one derived from the
linear spectrogram of the target, so both paths must use exactly the same framing
(reflect padding by ``(n_fft - hop) / 2``, no centring), the same Hann window and the same
Slaney-style mel filterbank as ``librosa.filters.mel`` (htk=False, norm="slaney").
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "dynamic_range_compression",
    "hz_to_mel",
    "linear_spectrogram",
    "mel_filterbank",
    "mel_spectrogram",
    "mel_to_hz",
    "spec_to_mel",
    "spec_to_mel_of",
    "wave_to_mel_of",
]

# Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0

_windows: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
_mel_bases: dict[tuple, torch.Tensor] = {}


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Hz to Slaney mel (the scale librosa uses by default)."""
    f = np.asarray(freq, dtype=np.float64)
    linear = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    linear = m * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log, linear)


def _htk_hz_to_mel(freq: float) -> float:
    return 2595.0 * np.log10(1.0 + freq / 700.0)


def _htk_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def _mel_filterbank_np(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool = False
) -> np.ndarray:
    fft_freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    to_mel, to_hz = (_htk_hz_to_mel, _htk_mel_to_hz) if htk else (hz_to_mel, mel_to_hz)
    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    # Distance of every FFT bin from every band edge; each filter is a triangle spanning
    # edges[i]..edges[i+2] with its peak at edges[i+1].
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: every filter has the same area, so energy per band is comparable.
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


def mel_filterbank(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None, htk: bool = False
) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, shape ``[n_mels, n_fft // 2 + 1]`` (float64).

    Matches ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk)``
    (`htk`: HTK's mel scale, 2595 log10(1 + f/700), as RMVPE's front end uses).
    """
    fmax = sr / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sr / 2.0 + 1e-6:
        raise ValueError(f"need 0 <= fmin < fmax <= sr/2, got fmin={fmin}, fmax={fmax}, sr={sr}")
    return _mel_filterbank_np(int(sr), int(n_fft), int(n_mels), float(fmin), fmax, bool(htk))


def _as_batch(wave: torch.Tensor) -> torch.Tensor:
    """Accept [T], [B, T] or [B, 1, T] so callers need not reshape model outputs."""
    if wave.dim() == 1:
        return wave.unsqueeze(0)
    if wave.dim() == 3 and wave.size(1) == 1:
        return wave.squeeze(1)
    if wave.dim() != 2:
        raise ValueError(f"expected a wave of shape [B, T], got {tuple(wave.shape)}")
    return wave


def _hann(win: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (win, dtype, device)
    window = _windows.get(key)
    if window is None:
        window = torch.hann_window(win, dtype=dtype, device=device)
        _windows[key] = window
    return window


def linear_spectrogram(
    wave: torch.Tensor, n_fft: int, hop: int, win: int, center: bool = False
) -> torch.Tensor:
    """Magnitude STFT, ``[B, T] -> [B, n_fft // 2 + 1, frames]``.

    Like RVC's ``spectrogram_torch``: reflect-pad by ``(n_fft - hop) // 2`` on both sides so
    that a wave of ``n * hop`` samples gives exactly ``n`` frames, and add 1e-6 under the
    square root so gradients stay finite at silence.
    """
    y = _as_batch(wave)
    pad = (n_fft - hop) // 2
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y,
        n_fft,
        hop_length=hop,
        win_length=win,
        window=_hann(win, y.dtype, y.device),
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-6)


def dynamic_range_compression(x: torch.Tensor, clip_val: float = 1e-5) -> torch.Tensor:
    """Natural log with a floor, as in RVC/HiFi-GAN (``log(clamp(x, 1e-5))``)."""
    return torch.log(torch.clamp(x, min=clip_val))


def spec_to_mel(
    spec: torch.Tensor, n_fft: int, n_mels: int, sr: int, fmin: float, fmax: float | None
) -> torch.Tensor:
    """Linear magnitude ``[B, n_fft//2+1, T]`` to log-mel ``[B, n_mels, T]``.

    Log-compressed like RVC's ``spec_to_mel_torch``, so it is directly comparable to
    :func:`mel_spectrogram` of a generated wave.
    """
    key = (sr, n_fft, n_mels, float(fmin), fmax, spec.dtype, spec.device)
    basis = _mel_bases.get(key)
    if basis is None:
        basis = torch.from_numpy(mel_filterbank(sr, n_fft, n_mels, fmin, fmax).copy())
        basis = basis.to(dtype=spec.dtype, device=spec.device)
        _mel_bases[key] = basis
    return dynamic_range_compression(torch.matmul(basis, spec))


def mel_spectrogram(
    wave: torch.Tensor,
    n_fft: int,
    n_mels: int,
    sr: int,
    hop: int,
    win: int,
    fmin: float,
    fmax: float | None,
    center: bool = False,
) -> torch.Tensor:
    """Log-mel spectrogram of a wave, ``[B, T] -> [B, n_mels, frames]`` (RVC's mel_spectrogram_torch)."""
    spec = linear_spectrogram(wave, n_fft, hop, win, center=center)
    return spec_to_mel(spec, n_fft, n_mels, sr, fmin, fmax)


def wave_to_mel_of(wave: torch.Tensor, data) -> torch.Tensor:
    """:func:`mel_spectrogram` with a run's framing (`data`: a config's DataConfig) — the mel of a
    generated wave that the mel loss and the held-out evaluation compare."""
    return mel_spectrogram(
        wave,
        data.filter_length,
        data.n_mel_channels,
        data.sampling_rate,
        data.hop_length,
        data.win_length,
        data.mel_fmin,
        data.mel_fmax,
    )


def spec_to_mel_of(spec: torch.Tensor, data) -> torch.Tensor:
    """:func:`spec_to_mel` with a run's settings — the target mel of a preprocessed linear spectrogram."""
    return spec_to_mel(
        spec, data.filter_length, data.n_mel_channels, data.sampling_rate, data.mel_fmin, data.mel_fmax
    )
