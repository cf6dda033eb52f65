"""arvc.audio.score: each metric against an independent reference (a hand-computable case, a published value
or a second implementation written differently here)."""

import math
import sys

import numpy as np
import pytest

from arvc.audio.score import (
    MCD_ORDER,
    ScoreDependencyError,
    f0_scores,
    mcd_from_mcep,
    mcep_alpha,
    mel_cepstrum_from_envelope,
    score,
)
from arvc.data.demo import synthesize_speech

SR = 16000
DB_PER_NEPER = 10.0 / math.log(10.0)


@pytest.fixture(scope="module")
def speech():
    """Two seconds of the demo voice at 16 kHz (phrases, pauses, a moving pitch)."""
    return synthesize_speech(2.0, SR, np.random.default_rng(0))


def _tone(freq, seconds=1.0, seed=0):
    """Harmonic tone plus faint noise, as tests/audio/test_f0.py (WORLD calls a pure sine unvoiced)."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * freq * t
    x = 0.4 * np.sin(phase) + 0.15 * np.sin(2 * phase) + 0.05 * np.sin(3 * phase)
    x += np.random.default_rng(seed).standard_normal(len(t)) * 0.003
    return x.astype(np.float32)


# --------------------------------------------------------------------------- pitch


def test_identical_recordings_score_perfectly(speech):
    s = score(speech, speech.copy(), SR)
    assert s.f0_rmse_cents == 0.0
    assert s.f0_corr == pytest.approx(1.0, abs=1e-12)
    assert s.vuv_error == 0.0
    assert s.voiced_frames > 50
    assert s.mcd_db == pytest.approx(0.0, abs=1e-9)
    assert s.pesq_wb > 4.5  # wide-band PESQ's ceiling is 4.64
    assert s.stoi == pytest.approx(1.0, abs=1e-9)


def test_f0_scores_hand_computed():
    ref = np.array([0.0, 100.0, 100.0, 200.0, 0.0, 150.0])
    conv = np.array([0.0, 200.0, 50.0, 0.0, 120.0, 150.0])  # +1 octave, -1 octave, two V/UV flips, exact
    rmse, corr, vuv, n = f0_scores(ref, conv)
    assert n == 3
    assert rmse == pytest.approx(math.sqrt((1200.0**2 + 1200.0**2 + 0.0) / 3))
    assert vuv == pytest.approx(2 / 6)
    assert corr == pytest.approx(np.corrcoef([100, 100, 150], [200, 50, 150])[0, 1])


def test_f0_scores_a_known_voicing_flip_and_cents():
    rng = np.random.default_rng(3)
    ref = rng.uniform(90.0, 300.0, 200)
    conv = ref * 2.0 ** (35.0 / 1200.0)  # 35 cents sharp everywhere
    conv[:14] = 0.0  # 14 of 200 frames turned unvoiced
    ref[-6:] = 0.0  # 6 more frames voiced only in the conversion
    rmse, corr, vuv, n = f0_scores(ref, conv)
    assert vuv == pytest.approx(20 / 200)
    assert n == 180
    assert rmse == pytest.approx(35.0)
    assert corr == pytest.approx(1.0)


def test_f0_scores_nothing_voiced_in_both_is_nan_not_zero():
    rmse, corr, vuv, n = f0_scores(np.array([0.0, 100.0]), np.array([100.0, 0.0]))
    assert math.isnan(rmse) and math.isnan(corr) and vuv == 1.0 and n == 0


def test_an_octave_error_in_audio_is_1200_cents():
    s = score(_tone(110.0), _tone(220.0), SR, metrics=("f0",))
    assert s.voiced_frames > 70
    assert s.f0_rmse_cents == pytest.approx(1200.0, abs=15.0)
    assert s.vuv_error < 0.05


def test_silencing_half_a_recording_flips_its_voicing():
    tone = _tone(150.0)
    half = tone.copy()
    half[len(half) // 2 :] = np.random.default_rng(1).standard_normal(len(half) - len(half) // 2) * 1e-4
    s = score(tone, half, SR, metrics=("f0",))
    assert s.vuv_error == pytest.approx(0.5, abs=0.06)
    assert s.f0_rmse_cents < 10.0


# --------------------------------------------------------------------------- mel-cepstrum and MCD


@pytest.mark.parametrize(
    ("sr", "alpha"), [(8000, 0.312), (16000, 0.41), (22050, 0.455), (44100, 0.544), (48000, 0.554)]
)
def test_mcep_alpha_matches_pysptk_published_values(sr, alpha):
    """pysptk.util.mcepalpha's documented values (its docstring and the SPTK table it reproduces)."""
    assert mcep_alpha(sr) == pytest.approx(alpha, abs=1e-9)


def _all_pole_log_amp(omega, sr=SR):
    """log|H(e^{jw})| of two resonances (500 and 1500 Hz, radius 0.9): smooth, with a fast-decaying
    cepstrum, evaluated in closed form at any frequency."""
    out = np.zeros_like(omega)
    z = np.exp(-1j * omega)
    for hz in (500.0, 1500.0):
        theta = 2 * np.pi * hz / sr
        out -= np.log(np.abs(1 - 2 * 0.9 * np.cos(theta) * z + 0.81 * z * z))
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.41, 0.554])
def test_mel_cepstrum_matches_a_cosine_transform_on_the_warped_axis(alpha):
    """Second implementation: the mel-cepstrum is the cosine series of log|H| on the warped frequency
    w~ = w + 2 atan(a sin w / (1 - a cos w)); sample log|H| in closed form on a uniform w~ grid (through the
    inverse warp, which is the warp with -a) and integrate. Agreement to 1e-6 (the FFT cepstrum's aliasing
    at fft_size 1024 is far below that for these poles)."""
    fft_size = 1024
    omega = np.linspace(0.0, np.pi, fft_size // 2 + 1)
    sp = np.exp(2.0 * _all_pole_log_amp(omega))[None, :]  # power envelope, as CheapTrick gives
    ours = mel_cepstrum_from_envelope(sp, MCD_ORDER, alpha)[0]

    warped = np.linspace(0.0, np.pi, 8193)
    omega_back = warped - 2.0 * np.arctan(alpha * np.sin(warped) / (1.0 + alpha * np.cos(warped)))
    log_amp = _all_pole_log_amp(omega_back)
    weights = np.full(len(warped), 1.0)
    weights[[0, -1]] = 0.5  # trapezoid over [0, pi]: spectrally accurate for a smooth even periodic function
    weights /= len(warped) - 1
    ref = np.array([np.sum(weights * log_amp * np.cos(m * warped)) for m in range(MCD_ORDER + 1)])
    ref[1:] *= 2.0
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_mcd_hand_computed():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, MCD_ORDER + 1))
    b = a.copy()
    b[:, 0] += 3.0  # the level, c_0, is not part of MCD
    b[:, 1] += 0.1
    b[:, 2] -= 0.2
    assert mcd_from_mcep(a, b) == pytest.approx(DB_PER_NEPER * math.sqrt(2 * (0.1**2 + 0.2**2)))
    assert mcd_from_mcep(a, a) == 0.0


def test_mcd_ignores_loudness(speech):
    """Doubling the amplitude scales CheapTrick's power envelope by 4: only c_0 moves."""
    s = score(speech, 2.0 * speech, SR, metrics=("mcd",))
    assert s.mcd_db == pytest.approx(0.0, abs=1e-4)


# --------------------------------------------------------------------------- PESQ, STOI and ordering


def test_white_noise_scores_low_and_light_noise_in_between(speech):
    rng = np.random.default_rng(5)
    noise = (rng.standard_normal(len(speech)) * 0.1).astype(np.float32)
    bad = score(speech, noise, SR, metrics=("mcd", "pesq", "stoi"))
    assert bad.pesq_wb < 1.3  # PESQ-wb's floor is about 1.0
    assert bad.stoi < 0.4
    assert bad.mcd_db > 10.0
    light = score(speech, speech + noise * 0.05, SR, metrics=("mcd", "pesq", "stoi"))
    assert bad.pesq_wb < light.pesq_wb < 4.5
    assert bad.stoi < light.stoi < 1.0
    assert 0.0 < light.mcd_db < bad.mcd_db


def test_pesq_and_stoi_resample_other_rates():
    sr = 40000
    x = synthesize_speech(2.0, sr, np.random.default_rng(1))
    s = score(x, x, sr, metrics=("pesq", "stoi"))
    assert s.pesq_wb > 4.5 and s.stoi == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(("package", "metric"), [("pesq", "pesq"), ("pystoi", "stoi")])
def test_a_missing_package_names_the_extra(monkeypatch, speech, package, metric):
    monkeypatch.setitem(sys.modules, package, None)  # import now raises ImportError
    with pytest.raises(ScoreDependencyError, match=r"arvc\[score\]"):
        score(speech, speech, SR, metrics=(metric,))


def test_bad_input_is_refused_before_any_work(speech):
    with pytest.raises(ValueError, match="not time-aligned"):
        score(speech, speech[: len(speech) // 2], SR)
    with pytest.raises(ValueError, match="unknown metric"):
        score(speech, speech, SR, metrics=("sisdr",))
    # a vocoder's few samples of padding are fine: the longer one is cut
    assert score(speech, np.pad(speech, (0, 300)), SR, metrics=("f0",)).vuv_error == 0.0
