import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from arvc.audio.f0 import coarse_f0
from arvc.data.demo import generate_demo_voice
from arvc.data.preprocess import DataError, preprocess


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate_demo_voice(out, seconds=12, sr=16000)
    return out


def _lines(result):
    return [line.split("|") for line in result.filelist.read_text().splitlines()]


def _mtimes(run_dir, folder):
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / folder).iterdir()}


def test_outputs_exist_with_consistent_lengths(demo_dir, tmp_path):
    calls = []
    result = preprocess(demo_dir, tmp_path, 16000, "pm", progress=lambda *a: calls.append(a))
    assert result.n_sources == 1 and result.n_pieces == len(_lines(result)) >= 3
    assert 8 < result.seconds <= 12 + 0.3 * result.n_pieces  # chunks overlap by 0.3 s
    assert calls[0] == (0, 1, "") and calls[-1] == (1, 1, "demo_00.wav")
    for gt, feature, f0, f0nsf, sid in _lines(result):
        assert sid == "0" and not gt.startswith("/")
        wave, sr = sf.read(tmp_path / gt, dtype="float32")
        wave16k, sr16 = sf.read(tmp_path / gt.replace("0_gt_wavs", "1_16k_wavs"), dtype="float32")
        assert sr == sr16 == 16000 and len(wave) == len(wave16k) >= 8000
        coarse, hz = np.load(tmp_path / f0), np.load(tmp_path / f0nsf)
        feats = np.load(tmp_path / feature)
        assert len(coarse) == len(hz) == len(wave16k) // 160 + 1
        assert feats.shape == (len(wave16k) // 320, 80) and feats.dtype == np.float32
        assert coarse.dtype == np.int64 and hz.dtype == np.float32
        assert np.array_equal(coarse, coarse_f0(hz)) and (hz > 0).mean() > 0.3
    assert not list(tmp_path.rglob(".*tmp*"))  # no temp files left behind


def test_model_rate_differs_from_16k(demo_dir, tmp_path):
    result = preprocess(demo_dir, tmp_path, 32000, "dio")
    gt = _lines(result)[0][0]
    wave, sr = sf.read(tmp_path / gt)
    wave16k, _ = sf.read(tmp_path / gt.replace("0_gt_wavs", "1_16k_wavs"))
    assert sr == 32000 and len(wave) == 2 * len(wave16k)


def test_rerun_skips_and_resumes(demo_dir, tmp_path):
    first = preprocess(demo_dir, tmp_path, 16000, "pm")
    before = {f: _mtimes(tmp_path, f) for f in ("0_gt_wavs", "2a_f0", "3_feature")}
    again = preprocess(demo_dir, tmp_path, 16000, "pm")
    assert again.reused_sources == 1
    assert again.filelist.read_text() == first.filelist.read_text()
    assert {f: _mtimes(tmp_path, f) for f in before} == before

    # An interrupted run: one output missing. Only that output is recomputed.
    lost = tmp_path / _lines(first)[1][1]
    lost.unlink()
    resumed = preprocess(demo_dir, tmp_path, 16000, "pm")
    assert lost.is_file() and resumed.reused_sources == 0
    assert _mtimes(tmp_path, "0_gt_wavs") == before["0_gt_wavs"]
    assert _mtimes(tmp_path, "2a_f0") == before["2a_f0"]


def test_changed_f0_method_redoes_only_pitch(demo_dir, tmp_path):
    preprocess(demo_dir, tmp_path, 16000, "pm")
    gt_before = _mtimes(tmp_path, "0_gt_wavs")
    f0_before = {n: np.load(tmp_path / "2b-f0nsf" / n) for n in _mtimes(tmp_path, "2b-f0nsf")}
    preprocess(demo_dir, tmp_path, 16000, "dio")
    assert _mtimes(tmp_path, "0_gt_wavs") == gt_before
    assert json.loads((tmp_path / "preprocess.json").read_text())["f0_method"] == "dio"
    changed = [not np.array_equal(np.load(tmp_path / "2b-f0nsf" / n), v) for n, v in f0_before.items()]
    assert any(changed)


def test_changed_source_is_reprocessed(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    first = preprocess(data, tmp_path / "run", 16000, "pm")
    wave, sr = sf.read(data / "demo_00.wav")
    sf.write(data / "demo_00.wav", wave[: len(wave) // 2], sr)
    second = preprocess(data, tmp_path / "run", 16000, "pm")
    assert second.reused_sources == 0 and second.seconds < first.seconds


def test_missing_and_empty_dirs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        preprocess(tmp_path / "nope", tmp_path / "run", 16000, "pm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        preprocess(tmp_path / "empty", tmp_path / "run", 16000, "pm")
    (tmp_path / "file.wav").write_bytes(b"")
    with pytest.raises(DataError, match="is a file"):
        preprocess(tmp_path / "file.wav", tmp_path / "run", 16000, "pm")
    assert not (tmp_path / "run").exists()  # nothing written before validation passes


def test_no_audio_lists_supported_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "song.m4a").write_bytes(b"\0" * 10)
    with pytest.raises(DataError) as info:
        preprocess(tmp_path, tmp_path / "run", 16000, "pm")
    message = str(info.value)
    assert ".m4a" in message and ".wav" in message and ".flac" in message and ".mp3" in message


def test_all_too_short(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        sf.write(data / f"blip{i}.wav", np.full(3000, 0.1, np.float32), 16000)
    with pytest.raises(DataError, match="shorter than"):
        preprocess(data, tmp_path / "run", 16000, "pm")


def test_silence_only_is_an_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "quiet.wav", np.zeros(32000, np.float32), 16000)
    with pytest.raises(DataError, match="no usable speech"):
        preprocess(data, tmp_path / "run", 16000, "pm")


def test_unreadable_file_is_reported_not_fatal(demo_dir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    (data / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    result = preprocess(data, tmp_path / "run", 16000, "pm")
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "unreadable" in warning.getMessage() and "corrupt.wav" in warning.getMessage()
    assert [p.name for p, _ in result.unreadable] == ["corrupt.wav"]
    assert result.n_sources == 1 and result.n_pieces > 0


def test_only_unreadable_files(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be read"):
        preprocess(tmp_path, tmp_path / "run", 16000, "pm")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sample_rate": 44100}, "44100"),
        ({"f0_method": "yin"}, "harvest"),
        ({"features": "wav2vec"}, "hubert"),
    ],
)
def test_bad_settings(demo_dir, tmp_path, kwargs, match):
    args = {"sample_rate": 16000, "f0_method": "pm", **kwargs}
    with pytest.raises(DataError, match=match):
        preprocess(demo_dir, tmp_path / "run", **args)


def test_missing_hubert_fails_before_work(demo_dir, tmp_path):
    with pytest.raises(DataError, match="HuBERT model not found"):  # a DataError: the CLI's clear error
        preprocess(
            demo_dir,
            tmp_path / "run",
            16000,
            "pm",
            features="hubert",
            feature_dim=768,
            hubert_path=tmp_path / "missing",
        )
    assert not (tmp_path / "run").exists()


def test_run_dir_inside_dataset_is_ignored(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    first = preprocess(data, data / "run", 16000, "pm")
    again = preprocess(data, data / "run", 16000, "pm")
    assert again.n_sources == first.n_sources == 1 and again.reused_sources == 1


def test_crepe_without_weights_fails_before_work(demo_dir, tmp_path, monkeypatch):
    from arvc.audio import f0 as f0_mod

    monkeypatch.setattr(f0_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="torchcrepe"):
        preprocess(demo_dir, tmp_path / "run", 16000, "crepe")
    assert not (tmp_path / "run").exists()


def test_rmvpe_without_its_file_fails_before_work_and_a_new_layer_redoes_the_features(demo_dir, tmp_path):
    with pytest.raises(DataError, match="--f0 rmvpe needs --rmvpe PATH"):
        preprocess(demo_dir, tmp_path / "run", 16000, "rmvpe")
    assert not (tmp_path / "run").exists()
    from arvc.data.preprocess import _STALE_ON

    assert "feature" in _STALE_ON["embedder_layer"], "features of another HuBERT layer are not reused"
