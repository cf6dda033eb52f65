"""`arvc score`: the table and --json a user gets, and bad input refused with `error:` before any work."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from arvc.audio.io import resample
from arvc.cli import app
from arvc.data.demo import synthesize_speech

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """originals/ at 40 kHz (WAV) and converted/ holding one copy at 16 kHz (FLAC) and one with noise."""
    root = tmp_path_factory.mktemp("score")
    (root / "originals").mkdir()
    (root / "converted").mkdir()
    rng = np.random.default_rng(0)
    for name in ("take1", "take2"):
        x = synthesize_speech(1.5, 40000, rng)
        sf.write(root / "originals" / f"{name}.wav", x, 40000)
    x1, _ = sf.read(root / "originals" / "take1.wav", dtype="float32")
    sf.write(root / "converted" / "take1.flac", resample(x1, 40000, 16000), 16000)
    x2, _ = sf.read(root / "originals" / "take2.wav", dtype="float32")
    sf.write(
        root / "converted" / "take2.wav", x2 + 0.02 * rng.standard_normal(len(x2)).astype(np.float32), 40000
    )
    return root


def test_folders_are_paired_by_name_and_scored_as_json(folders):
    result = runner.invoke(
        app,
        ["score", str(folders / "originals"), str(folders / "converted"), "--metrics", "f0,mcd", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["f0_method"] == "pm"
    assert [r["name"] for r in report["recordings"]] == ["take1", "take2"]
    for row in report["recordings"]:
        assert row["f0_rmse_cents"] < 50 and row["vuv_error"] < 0.2 and row["mcd_db"] > 0
        assert row["pesq_wb"] is None and row["stoi"] is None  # not asked for: null, not NaN
    assert set(report["mean"]) == {"f0_rmse_cents", "f0_corr", "vuv_error", "mcd_db"}


def test_two_files_print_a_table(folders):
    result = runner.invoke(
        app, ["score", str(folders / "originals" / "take2.wav"), str(folders / "converted" / "take2.wav")]
    )
    assert result.exit_code == 0, result.output
    for header in ("F0 RMSE (cents)", "V/UV error", "MCD (dB)", "PESQ-wb", "STOI", "take2.wav"):
        assert header in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "f0,sisdr"], "unknown metric(s) sisdr"),
        (["--f0", "yin"], "unknown f0 method 'yin'"),
        (["--f0", "rmvpe"], "--f0 rmvpe needs --rmvpe PATH"),
    ],
)
def test_bad_options_fail_before_any_work(folders, args, message):
    result = runner.invoke(app, ["score", str(folders / "originals"), str(folders / "converted"), *args])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and message in result.output


def test_unmatched_or_missing_recordings_are_named(folders, tmp_path):
    missing = runner.invoke(app, ["score", str(tmp_path / "nope"), str(folders / "converted")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    extra = tmp_path / "converted"
    extra.mkdir()
    sf.write(extra / "take3.wav", np.zeros(16000, dtype=np.float32), 16000)
    result = runner.invoke(app, ["score", str(folders / "originals"), str(extra)])
    assert result.exit_code == 1 and "no recording" in result.output
    sf.write(extra / "take1.wav", np.zeros(16000, dtype=np.float32), 16000)
    result = runner.invoke(app, ["score", str(folders / "originals"), str(extra)])
    assert result.exit_code == 1 and "have no original" in result.output and "take3" in result.output


def test_a_conversion_of_another_length_is_refused(folders, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(20000, dtype=np.float32), 40000)
    result = runner.invoke(app, ["score", str(folders / "originals" / "take1.wav"), str(short)])
    assert result.exit_code == 1
    assert "short.wav" in result.output and "1.500 s and 0.500 s" in result.output


def test_a_bad_pair_in_a_folder_is_refused_before_any_scoring(folders, tmp_path, monkeypatch):
    import arvc.audio.score

    converted = tmp_path / "converted"
    converted.mkdir()
    sf.write(converted / "take1.wav", sf.read(folders / "converted" / "take1.flac")[0], 16000)
    sf.write(converted / "take2.wav", np.zeros(20000, dtype=np.float32), 40000)  # sorted last
    monkeypatch.setattr(arvc.audio.score, "score", lambda *a, **k: pytest.fail("scored before the check"))
    result = runner.invoke(app, ["score", str(folders / "originals"), str(converted)])
    assert result.exit_code == 1 and result.output.startswith("error:")
    assert "take2.wav" in result.output and "not time-aligned" in result.output
    (converted / "take2.wav").write_bytes(b"not audio")
    result = runner.invoke(app, ["score", str(folders / "originals"), str(converted)])
    assert result.exit_code == 1 and result.output.startswith("error:") and "take2.wav" in result.output


def test_a_missing_extra_is_named(folders, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pystoi", None)
    result = runner.invoke(app, ["score", str(folders / "originals"), str(folders / "converted")])
    assert result.exit_code == 1 and "arvc[score]" in result.output


# --- arvc score MODEL RECORDINGS: each recording converted into the model's own voice, then scored ----------
@pytest.fixture(scope="module")
def voice_model(tmp_path_factory):
    """An untrained tiny generator exported by arvc (folder and .safetensors) and as an RVC .pth, and a
    folder of two recordings (one in a subfolder) at 16 kHz."""
    import torch

    from arvc.config import load_config, rvc_config_list
    from arvc.model import Synthesizer
    from arvc.modelfile.export import export_generator

    root = tmp_path_factory.mktemp("model")
    cfg = load_config("tiny")
    torch.manual_seed(0)
    net = Synthesizer(cfg)
    export_generator(net, cfg, root / "export", features="mel")
    weights = {k: v.half() for k, v in net.state_dict().items() if not k.startswith("enc_q.")}
    rvc = {"weight": weights, "config": rvc_config_list(cfg), "sr": 16000, "f0": 1, "version": "v2"}
    torch.save(rvc, root / "voice.pth")
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):  # arvc[onnx]
        from arvc.modelfile.onnx import export_onnx

        export_onnx(net, cfg, root / "voice.onnx", noise_scale=0.0)  # its noise is not convert's seed's
    rng = np.random.default_rng(1)
    (root / "recordings" / "sub").mkdir(parents=True)
    sf.write(root / "recordings" / "a.wav", synthesize_speech(1.5, 16000, rng), 16000)
    sf.write(root / "recordings" / "sub" / "b.flac", synthesize_speech(1.2, 16000, rng), 16000)
    return root


@pytest.mark.parametrize("model", ["export", "export/model.safetensors", "voice.pth", "voice.onnx"])
def test_a_model_is_scored_on_its_reconstruction_of_each_recording(voice_model, tmp_path, model):
    if not (voice_model / model).exists():
        pytest.skip("onnx/onnxruntime (arvc[onnx]) not installed")
    from arvc.audio.score import score_files
    from arvc.infer.convert import convert, load_voice_model

    recordings = voice_model / "recordings"
    args = ["score", str(voice_model / model), str(recordings), "--metrics", "f0,mcd", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the log (stderr) says which device converts
    assert report["model"] == str(voice_model / model)
    assert [r["name"] for r in report["recordings"]] == ["a.wav", "sub/b.flac"]
    # the same numbers as `arvc infer` followed by `arvc score ORIGINAL CONVERTED` (conversion is seeded)
    net, cfg = load_voice_model(voice_model / model)
    convert(net, cfg, recordings / "a.wav", tmp_path / "a.wav")
    by_hand = score_files(recordings / "a.wav", tmp_path / "a.wav", metrics=("f0", "mcd"))
    first = report["recordings"][0]
    assert first["mcd_db"] == pytest.approx(by_hand.mcd_db, rel=1e-3) and first["mcd_db"] > 0
    assert first["vuv_error"] == pytest.approx(by_hand.vuv_error, abs=1e-9)
    table = runner.invoke(
        app, ["score", str(voice_model / model), str(recordings / "a.wav"), "--metrics", "mcd"]
    )
    assert table.exit_code == 0, table.output
    shown = " ".join(table.output.split())  # the title wraps
    assert "converted to its own voice" in shown and "MCD (dB)" in shown


@pytest.mark.parametrize(
    "args, message",
    [
        (["recordings/a.wav", "voice.pth"], "voice.pth is a voice model: put it first"),
        (["voice.pth", "missing"], "missing do not exist"),
        (["voice.pth", "empty"], "no audio files in"),
        (["voice.pth", "export/model.json"], "is not an audio file"),
        (["recordings", "recordings", "--features", "mel"], "--features convert with a model"),
        (["voice.pth", "recordings", "--metrics", "loudness"], "unknown metric(s) loudness"),
        (["recordings/a.wav", "recordings/a.wav", "--device", "cpu"], "--device convert with a model"),
    ],
)
def test_a_bad_model_and_recordings_combination_is_refused_before_any_work(voice_model, args, message):
    (voice_model / "empty").mkdir(exist_ok=True)
    paths = [str(voice_model / a) if i < 2 else a for i, a in enumerate(args)]
    result = runner.invoke(app, ["score", *paths])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert output.startswith("error:") and message in output, output


# --- speaker similarity (resemblyzer, arvc[score]): --metrics speaker and --target-voice -------------------
needs_resemblyzer = pytest.mark.skipif(
    importlib.util.find_spec("resemblyzer") is None,
    reason="resemblyzer (the arvc[score] extra) is not installed",
)


@needs_resemblyzer
def test_speaker_similarity_of_pairs_in_json_and_the_table(folders):
    args = ["score", str(folders / "originals"), str(folders / "converted"), "--metrics", "f0,speaker"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    clean, noisy = report["recordings"]  # take1: a 16 kHz copy; take2: with white noise added
    assert clean["speaker_sim"] > 0.99 and noisy["speaker_sim"] < clean["speaker_sim"]
    assert clean["target_sim"] is None  # no --target-voice
    assert report["mean"]["speaker_sim"] == pytest.approx((clean["speaker_sim"] + noisy["speaker_sim"]) / 2)
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "Speaker sim" in table.output, table.output


@pytest.fixture(scope="module")
def target_voice(tmp_path_factory):
    """Two recordings of the demo voice (other words than the recordings'), the target speaker."""
    target = tmp_path_factory.mktemp("target")
    rng = np.random.default_rng(7)
    for name in ("t1.wav", "t2.wav"):
        sf.write(target / name, synthesize_speech(1.5, 16000, rng), 16000)
    return target


@needs_resemblyzer
def test_target_voice_scores_each_conversion_against_the_target_speaker(
    voice_model, target_voice, tmp_path, monkeypatch
):
    import shutil

    import arvc.infer.scoring
    from arvc.audio.score import file_speaker_similarity, voice_embedding

    recordings = voice_model / "recordings"
    args = ["score", str(voice_model / "voice.pth"), str(recordings), "--metrics", "f0", "--json"]
    args += ["--target-voice", str(target_voice)]
    # the untrained model's conversions are noise in which resemblyzer's voice activity detector finds no
    # speech: nothing to measure (null), not an error
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target_voice"] == str(target_voice)
    assert [r["target_sim"] for r in report["recordings"]] == [None, None]
    # a model that renders each recording as it is (conversion = the recording): its similarity to the
    # target is the recording's, computed by hand, and high (the same demo voice)
    monkeypatch.setattr(arvc.infer.scoring, "convert", lambda _m, _c, src, dst, **_: shutil.copy(src, dst))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["recordings"][0]["speaker_sim"] is None  # --metrics speaker not asked for
    target = voice_embedding(sorted(target_voice.iterdir()))
    paths = (recordings / "a.wav", recordings / "sub" / "b.flac")
    by_hand = [file_speaker_similarity(path, target) for path in paths]
    got = [math.nan if r["target_sim"] is None else r["target_sim"] for r in report["recordings"]]
    assert got == pytest.approx(by_hand, abs=1e-5, nan_ok=True)
    assert got[0] > 0.8  # (b.flac's 1.2 s of the demo voice may be a pause: nan, shown as null)
    table = runner.invoke(app, args[:-3] + args[-2:])
    assert table.exit_code == 0 and "Target sim" in table.output, table.output


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["recordings/a.wav", "recordings/a.wav", "--target-voice", "recordings"],
            "--target-voice scores a ",
        ),
        (["voice.pth", "recordings", "--target-voice", "missing"], "--target-voice: recordings"),
        (["voice.pth", "recordings", "--target-voice", "empty"], "--target-voice: no audio files in"),
    ],
)
def test_bad_target_voice_is_refused_before_any_work(voice_model, args, message):
    (voice_model / "empty").mkdir(exist_ok=True)
    paths = [str(voice_model / a) if i != 2 else a for i, a in enumerate(args)]
    result = runner.invoke(app, ["score", *paths])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert output.startswith("error:") and message in output, output


def test_target_voice_without_resemblyzer_names_the_extra_before_any_work(voice_model, monkeypatch):
    import sys

    import arvc.infer.convert

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing extra was reported")

    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import now raises ImportError
    monkeypatch.setattr(arvc.infer.convert, "load_voice_model", no_work)
    recordings = str(voice_model / "recordings")
    result = runner.invoke(
        app, ["score", str(voice_model / "voice.pth"), recordings, "--target-voice", recordings]
    )
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and "arvc[score]" in result.output, result.output
