import numpy as np
import pytest
import soundfile as sf

from arvc.audio import io as audio
from arvc.audio.io import (
    AudioLoadError,
    Slicer,
    chunk,
    find_audio_files,
    highpass,
    load_audio,
    normalize_peak,
    resample,
    split_for_training,
    write_wav,
)


def _sine(freq, seconds, sr, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_freq(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sr / len(x)


MP3 = pytest.param(
    "mp3", marks=pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile < 1.1: no MP3")
)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", MP3])
def test_load_formats_mono_and_resampled(tmp_path, ext):
    sr = 32000
    stereo = np.stack([_sine(440, 1.0, sr), _sine(440, 1.0, sr)], axis=1)
    path = tmp_path / f"a.{ext}"
    sf.write(path, stereo, sr)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) < 2000  # lossy codecs add encoder delay/padding
    assert _dominant_freq(wave, 16000) == pytest.approx(440, rel=0.02)


def test_stereo_is_averaged(tmp_path):
    sr = 16000
    left, right = np.full(1000, 0.5, np.float32), np.full(1000, -0.1, np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), sr, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), 0.2, atol=1e-6)


def test_unreadable_file_raises_named_error(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioLoadError, match="broken.wav"):
        load_audio(bad)
    with pytest.raises(AudioLoadError):
        audio.audio_duration(bad)


def test_mp3_without_decoder_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "_mp3_supported", lambda: False)
    with pytest.raises(AudioLoadError, match="MP3"):
        load_audio(tmp_path / "x.mp3")


def test_resample_keeps_pitch_and_length():
    x = _sine(1000, 1.0, 40000)
    y = resample(x, 40000, 16000)
    assert len(y) == 16000
    assert _dominant_freq(y, 16000) == pytest.approx(1000, rel=0.01)
    assert resample(x, 40000, 40000) is not None


def test_find_audio_files_sorted_filtered(tmp_path):
    for name in ["b.WAV", "a.flac", "notes.txt", ".hidden.wav", "sub/c.mp3", ".git/d.wav"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    names = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert names == ["a.flac", "b.WAV", "sub/c.mp3"]


def test_highpass_removes_rumble_keeps_voice():
    sr = 16000
    low, mid = _sine(10, 2.0, sr), _sine(1000, 2.0, sr)
    tail = slice(sr, None)  # skip the filter's start-up transient
    assert np.abs(highpass(low, sr)[tail]).max() < 0.01
    assert np.abs(highpass(mid, sr)[tail]).max() == pytest.approx(0.5, rel=0.02)


def test_normalize_peak_rvc_formula():
    x = _sine(100, 0.1, 16000, amp=0.2)
    y = normalize_peak(x)
    assert np.abs(y).max() == pytest.approx(0.9 * 0.75 + 0.25 * 0.2, rel=1e-4)
    assert normalize_peak(np.zeros(100, np.float32)) is None
    assert normalize_peak(x * 20) is None  # peak 4 > 2.5: badly clipped, dropped like RVC


def test_chunk_lengths_follow_rvc():
    sr = 1000
    pieces = chunk(np.arange(10 * sr, dtype=np.float32), sr)
    # starts every 3.4 s; full pieces while more than 4.0 s remain, then the remainder.
    assert [len(p) for p in pieces] == [3700, 3700, 3200]
    assert [int(p[0]) for p in pieces] == [0, 3400, 6800]
    assert [len(p) for p in chunk(np.zeros(3000), sr)] == [3000]
    assert [len(p) for p in chunk(np.zeros(10700), sr)] == [3700, 3700, 3900]


def _bursts(sr, layout, seed=0):
    """layout: list of (seconds, loud?)"""
    rng = np.random.default_rng(seed)
    parts = [
        (rng.standard_normal(int(s * sr)) * (0.3 if loud else 1e-4)).astype(np.float32) for s, loud in layout
    ]
    return np.concatenate(parts)


def test_slicer_cuts_at_long_silences_and_trims_edges():
    sr = 16000
    wave = _bursts(
        sr, [(1.0, False), (2.0, True), (1.0, False), (2.5, True), (0.2, False), (1.0, True), (1.5, False)]
    )
    clips = Slicer(sr).slice(wave)
    # The 0.2 s gap is shorter than min_interval (0.4 s), so only the 1 s gap splits.
    assert len(clips) == 2
    lengths = [len(c) / sr for c in clips]
    assert 2.0 <= lengths[0] <= 3.1  # 2 s of voice + at most 0.5 s of kept silence per side
    assert 3.7 <= lengths[1] <= 4.8
    for c in clips:
        assert np.abs(c).max() > 0.1


def test_slicer_keeps_short_or_continuous_audio_whole():
    sr = 16000
    short = _bursts(sr, [(1.0, True)])
    assert len(Slicer(sr).slice(short)[0]) == len(short)
    loud = _bursts(sr, [(5.0, True)])
    assert len(Slicer(sr).slice(loud)) == 1


def test_split_for_training_pieces_are_normalised_and_bounded():
    sr = 16000
    wave = _bursts(sr, [(0.5, False), (9.0, True), (1.0, False), (2.0, True), (0.5, False)])
    pieces = split_for_training(wave, sr, min_seconds=0.5)
    assert len(pieces) >= 3
    for p in pieces:
        assert 0.5 * sr <= len(p) <= 4.0 * sr + 1
        # 0.75 of the way to a 0.9 peak, plus a quarter of the original level
        assert 0.675 < np.abs(p).max() <= 0.675 + 0.25 * np.abs(wave).max() + 1e-6


def test_write_wav_is_atomic_and_float(tmp_path):
    x = _sine(200, 0.25, 16000)
    out = tmp_path / "deep" / "x.wav"
    write_wav(out, x, 16000)
    y, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and np.array_equal(x, y)
    assert [p.name for p in out.parent.iterdir()] == ["x.wav"]
