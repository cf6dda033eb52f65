import numpy as np
import soundfile as sf

from arvc.audio.f0 import extract_f0
from arvc.data.demo import DEMO_MANIFEST, generate_demo_voice


def test_same_arguments_give_identical_bytes(tmp_path):
    a = generate_demo_voice(tmp_path / "a", seconds=6, sr=16000, seed=3)
    b = generate_demo_voice(tmp_path / "b", seconds=6, sr=16000, seed=3)
    assert [p.name for p in a] == [p.name for p in b] == ["demo_00.wav"]
    assert a[0].read_bytes() == b[0].read_bytes()
    c = generate_demo_voice(tmp_path / "c", seconds=6, sr=16000, seed=4)
    assert c[0].read_bytes() != a[0].read_bytes()


def test_file_split_and_duration(tmp_path):
    paths = generate_demo_voice(tmp_path, seconds=60, sr=16000)
    infos = [sf.info(str(p)) for p in paths]
    assert len(paths) == 2
    assert all(i.samplerate == 16000 and i.channels == 1 for i in infos)
    assert all(10 <= i.duration <= 30 for i in infos)
    assert abs(sum(i.duration for i in infos) - 60) < 1e-3


def test_cache_skips_and_repairs(tmp_path):
    paths = generate_demo_voice(tmp_path, seconds=5, sr=16000)
    assert (tmp_path / DEMO_MANIFEST).is_file()
    original = paths[0].read_bytes()
    stamp = paths[0].stat().st_mtime_ns
    generate_demo_voice(tmp_path, seconds=5, sr=16000)
    assert paths[0].stat().st_mtime_ns == stamp  # untouched: hashes matched
    paths[0].write_bytes(original[:-100])  # damaged file: regenerated
    generate_demo_voice(tmp_path, seconds=5, sr=16000)
    assert paths[0].read_bytes() == original


def test_sounds_like_speech(tmp_path):
    (path,) = generate_demo_voice(tmp_path, seconds=20, sr=16000)
    wave, sr = sf.read(str(path), dtype="float32")
    assert 0.3 < np.abs(wave).max() <= 1.0
    # Phrases separated by pauses: a fair share of quiet 20 ms frames, but mostly sound.
    frames = wave[: len(wave) // 320 * 320].reshape(-1, 320)
    level_db = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-12)
    quiet = np.mean(level_db < -50)
    assert 0.05 < quiet < 0.5
    # Voiced most of the time it speaks, at a plausible speaking pitch.
    f0 = extract_f0(wave, "pm")
    voiced = f0[f0 > 0]
    assert 0.4 < len(voiced) / len(f0) < 0.95
    assert 120 < np.median(voiced) < 260
    assert np.percentile(voiced, 2) > 75 and np.percentile(voiced, 98) < 420
    # Intonation, not a monotone.
    assert np.std(12 * np.log2(voiced / np.median(voiced))) > 1.0


def test_other_sample_rates(tmp_path):
    (path,) = generate_demo_voice(tmp_path, seconds=3, sr=48000)
    info = sf.info(str(path))
    assert info.samplerate == 48000 and info.frames == 3 * 48000
