import math

import numpy as np
import pytest
import torch

from arvc.audio.mel import (
    hz_to_mel,
    linear_spectrogram,
    mel_filterbank,
    mel_spectrogram,
    mel_to_hz,
    spec_to_mel,
)


def _slaney_mel(f: float) -> float:
    return f * 3.0 / 200.0 if f < 1000.0 else 15.0 + math.log(f / 1000.0) * 27.0 / math.log(6.4)


def _slaney_hz(m: float) -> float:
    return m * 200.0 / 3.0 if m < 15.0 else 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27.0)


def _reference_filterbank(sr, n_fft, n_mels, fmin, fmax):
    """Scalar float64 re-derivation of librosa.filters.mel (slaney scale and norm)."""
    fmax = sr / 2 if fmax is None else fmax
    lo, hi = _slaney_mel(fmin), _slaney_mel(fmax)
    edges = [_slaney_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if left < f <= centre:
                w = (f - left) / (centre - left)
            elif centre < f < right:
                w = (right - f) / (right - centre)
            else:
                w = 0.0
            out[m, k] = w * 2.0 / (right - left)
    return out


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax",
    [(40000, 2048, 128, 0.0, None), (16000, 512, 80, 0.0, 8000.0), (48000, 2048, 128, 30.0, 11025.0)],
)
def test_filterbank_matches_reference(sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = _reference_filterbank(sr, n_fft, n_mels, fmin, fmax)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_mel_scale_roundtrip_and_knee():
    f = np.array([0.0, 100.0, 999.0, 1000.0, 4000.0, 20000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)


def test_filterbank_rejects_bad_range():
    with pytest.raises(ValueError):
        mel_filterbank(16000, 512, 40, fmin=9000.0, fmax=None)


def test_linear_spectrogram_matches_direct_dft():
    torch.manual_seed(0)
    n_fft, hop, win = 64, 16, 64
    wave = torch.randn(2, 16 * 20, dtype=torch.float64)
    spec = linear_spectrogram(wave, n_fft, hop, win)
    assert spec.shape == (2, n_fft // 2 + 1, 20)  # n * hop samples -> n frames

    pad = (n_fft - hop) // 2
    x = np.pad(wave.numpy(), ((0, 0), (pad, pad)), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    frames = np.stack([x[:, i * hop : i * hop + n_fft] * window for i in range(20)], axis=-1)
    ref = np.sqrt(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-6)
    np.testing.assert_allclose(spec.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_mel_spectrogram_composes_and_accepts_channel_dim():
    torch.manual_seed(0)
    wave = torch.randn(3, 1, 4096) * 0.1
    mel = mel_spectrogram(wave, 1024, 80, 16000, 256, 1024, 0.0, None)
    spec = linear_spectrogram(wave.squeeze(1), 1024, 256, 1024)
    assert mel.shape == (3, 80, 16)
    torch.testing.assert_close(mel, spec_to_mel(spec, 1024, 80, 16000, 0.0, None))


def test_log_floor_on_silence():
    mel = mel_spectrogram(torch.zeros(1, 2048), 512, 40, 16000, 128, 512, 0.0, None)
    assert torch.isfinite(mel).all()
    assert mel.min() >= math.log(1e-5) - 1e-6


def test_sine_peaks_in_the_right_band():
    sr, f = 16000, 1000.0
    t = torch.arange(sr, dtype=torch.float32) / sr
    mel = mel_spectrogram(torch.sin(2 * math.pi * f * t)[None], 1024, 80, sr, 256, 1024, 0.0, None)
    peak_band = int(mel[0].mean(dim=-1).argmax())
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), 82))
    assert edges[peak_band] < f < edges[peak_band + 2]
