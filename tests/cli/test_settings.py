"""Settings that cannot be right are refused before any work, and flags that would do nothing are named.

Through the CLI, as a user meets it: `error:` line, exit status 1, no traceback, nothing written.
"""

import json

import pytest
from typer.testing import CliRunner

from arvc.cli import app

runner = CliRunner()

# v2-40k's shape (40 kHz, hop 400, 768-d features) with every width shrunk, so a step takes a moment
SMALL_V2 = [
    "--set", "model.inter_channels=16", "--set", "model.hidden_channels=16",
    "--set", "model.filter_channels=32", "--set", "model.n_layers=1",
    "--set", "model.upsample_initial_channel=32", "--set", "model.gin_channels=16",
    "--set", "model.disc_channel_div=16", "--set", "data.segment_size=4000",
]  # fmt: skip
QUICK = ["--batch-size", "2", "--epochs", "1", "--max-steps", "1"]


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


def cli(*args):
    return runner.invoke(app, [*map(str, args)])


def assert_refused(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "error:" in result.output, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for fragment in fragments:
        assert fragment in result.output, result.output


# --- an RVC config on mel features ------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["v2-40k", "v1-48k"])
def test_an_rvc_config_on_mel_features_is_refused(tmp_path, three_recordings, config):
    runs = tmp_path / "runs"
    result = cli("train", three_recordings, "--runs-dir", runs, "--config", config, *QUICK)
    assert_refused(
        result, f"config {config} is an RVC model", "mel features", "--features hubert --hubert PATH"
    )
    assert "--allow-mel-rvc-config" in result.output
    assert not runs.exists()


def test_an_rvc_config_on_mel_features_trains_only_when_asked_and_exports_no_rvc_pth(
    tmp_path, three_recordings
):
    runs = tmp_path / "runs"
    args = ["--runs-dir", runs, "--name", "melv2", "--config", "v2-40k", *SMALL_V2, *QUICK]
    result = cli("train", three_recordings, *args, "--allow-mel-rvc-config")
    assert result.exit_code == 0, result.output
    export = runs / "melv2" / "export"
    assert (export / "model.safetensors").is_file()
    assert not (export / "model_rvc.pth").exists(), "RVC's tools would feed a mel model HuBERT features"
    assert json.loads((export / "model.json").read_text())["features"] == "mel"
    inspected = cli("inspect", export / "model.safetensors", "--json")
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.output)["features"] == "mel"
    # arvc infer reads what it needs from the model: mel, although the model is 768-d
    converted = cli("infer", export, three_recordings / "a.wav", tmp_path / "out.wav")
    assert converted.exit_code == 0, converted.output
    wrong = cli("infer", export, three_recordings / "a.wav", tmp_path / "o2.wav", "--features", "hubert")
    assert_refused(wrong, "trained on 768-d mel features, not hubert: pass --features mel")
    # `arvc export` of the same run writes no .pth either
    (export / "model.json").unlink()
    again = cli("export", runs / "melv2")
    assert again.exit_code == 0, again.output
    assert not (export / "model_rvc.pth").exists()
    assert json.loads((export / "model.json").read_text())["features"] == "mel"
    assert "rvc:" not in again.output


# --- every config value is checked before any work --------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hidden_channels=0", "model.hidden_channels = 0 must be an integer >= 1"),
        ("model.inter_channels=-2", "model.inter_channels = -2 must be an integer >= 2"),
        ("model.filter_channels=0", "model.filter_channels = 0 must be an integer >= 1"),
        ("model.gin_channels=0", "model.gin_channels = 0 must be an integer >= 1"),
        ("model.kernel_size=0", "model.kernel_size = 0 must be an integer >= 1"),
        ("model.n_layers=-1", "model.n_layers = -1 must be an integer >= 0"),
        ("model.upsample_initial_channel=0", "model.upsample_initial_channel = 0 must be an integer >= 1"),
        ("model.resblock_kernel_sizes=[3, 0, 11]",
         "model.resblock_kernel_sizes = [3, 0, 11] must be a non-empty list of integers >= 1"),
        ("model.resblock_dilation_sizes=[[1, 3, 5], [1, -3, 5], [1, 3, 5]]",
         "model.resblock_dilation_sizes = [[1, 3, 5], [1, -3, 5], [1, 3, 5]] must be a non-empty list"),
        ("model.upsample_rates=[]", "model.upsample_rates = [] must be a non-empty list of integers >= 1"),
        ("model.p_dropout=1.5", "model.p_dropout = 1.5 must be in [0, 1)"),
        ("data.n_mel_channels=0", "data.n_mel_channels = 0 must be an integer >= 1"),
        ("data.win_length=0", "data.win_length = 0 must be an integer >= 1"),
        ("data.mel_fmin=-5", "data.mel_fmin = -5.0 must be >= 0"),
        ("data.mel_fmax=9000", "data.mel_fmax = 9000.0 must be above data.mel_fmin (0) and at most half the "
         "sampling rate (8000 Hz)"),
    ],
)  # fmt: skip
def test_every_config_value_is_checked_before_any_work(tmp_path, three_recordings, override, message):
    runs = tmp_path / "runs"
    result = cli("train", three_recordings, "--runs-dir", runs, "--name", "x", "--set", override, *QUICK)
    assert_refused(result, message)
    assert not runs.exists(), "nothing may be preprocessed for a bad config"


# --- flags that would do nothing ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def some_file(tmp_path_factory):
    """Any existing file: the flags below are refused before their file is read."""
    path = tmp_path_factory.mktemp("files") / "weights.pt"
    path.write_bytes(b"not read")
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rmvpe", "FILE"], "--rmvpe is used only with --f0 rmvpe, and the pitch method here is pm"),
        (["--f0", "harvest", "--rmvpe", "FILE"],
         "the pitch method here is harvest: add --f0 rmvpe, or drop --rmvpe"),
        (["--features", "mel", "--hubert", "FILE"], "--hubert is used only with --features hubert"),
        (["--hubert", "FILE"], "--hubert is used only with --features hubert, and the features here are mel"),
        (["--embedder-layer", "9"], "--embedder-layer is used only with --features hubert"),
        (["--min-delta", "0.01"], "--min-delta 0.01 is used only by early stopping, which is off"),
        (["--val-fraction", "0", "--val-every", "2"], "--val-every 2 has nothing to evaluate"),
    ],
)  # fmt: skip
def test_train_refuses_flags_that_would_do_nothing(tmp_path, three_recordings, some_file, args, message):
    runs = tmp_path / "runs"
    args = [some_file if a == "FILE" else a for a in args]
    result = cli("train", three_recordings, "--runs-dir", runs, "--name", "x", *args, *QUICK)
    assert_refused(result, message)
    assert not runs.exists()


def test_min_delta_counts_when_early_stopping_is_on(tmp_path, three_recordings):
    """The same flag with what it needs is accepted (the refusal is about the combination)."""
    from arvc.train.request import TrainRequest, plan_training

    request = TrainRequest(dataset=three_recordings, runs_dir=tmp_path / "runs", min_delta=0.01, early_stop=3)
    assert plan_training(request).cfg.train.min_delta == 0.01


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rmvpe", "FILE"], "--rmvpe is used only with --f0 rmvpe, and the pitch method here is pm"),
        (["--hubert", "FILE"], "--hubert is used only with --features hubert, and the features here are mel"),
        (["--embedder-layer", "9"], "--embedder-layer is used only with --features hubert"),
    ],
)  # fmt: skip
def test_preprocess_refuses_flags_that_would_do_nothing(tmp_path, three_recordings, some_file, args, message):
    runs = tmp_path / "runs"
    args = [some_file if a == "FILE" else a for a in args]
    result = cli(
        "preprocess", three_recordings, "--runs-dir", runs, "--name", "x", "--sample-rate", "16000", *args
    )
    assert_refused(result, message)
    assert not runs.exists()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    import torch

    from arvc.config import load_config
    from arvc.model import Synthesizer
    from arvc.modelfile.export import export_generator

    cfg = load_config("tiny")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "export"
    export_generator(Synthesizer(cfg), cfg, folder, features="mel")
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rmvpe", "FILE"], "--rmvpe is used only with --f0 rmvpe, and the pitch method here is pm"),
        (["--features", "mel", "--hubert", "FILE"], "--hubert is used only with --features hubert"),
        (["--embedder-layer", "9"],
         "--embedder-layer is used only with --features hubert, and the features here are mel"),
    ],
)  # fmt: skip
def test_infer_refuses_flags_that_would_do_nothing(
    tmp_path, three_recordings, tiny_export, some_file, args, message
):
    args = [some_file if a == "FILE" else a for a in args]
    result = cli("infer", tiny_export, three_recordings / "a.wav", tmp_path / "out.wav", *args)
    assert_refused(result, message)
    assert not (tmp_path / "out.wav").exists()


# --- arvc recommend's command ----------------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["--epochs", "900", "--precision", "bf16"]])
def test_the_recommended_command_has_a_dataset_placeholder_and_never_trains_the_demo(
    tmp_path, monkeypatch, args
):
    import shlex

    monkeypatch.chdir(tmp_path)
    shown = cli("recommend", *args)
    assert shown.exit_code == 0, shown.output
    (line,) = [line.strip() for line in shown.output.splitlines() if line.strip().startswith("arvc train")]
    words = shlex.split(line)
    assert words[2] == "DATASET/", line
    assert "DATASET/: your folder of recordings" in shown.output
    copied = cli(*words[1:])  # pasted as is
    assert_refused(copied, "dataset folder DATASET does not exist")
    assert not (tmp_path / "runs").exists(), "the demo voice must not be trained"


def test_on_resume_the_flags_are_checked_against_the_run_itself(tmp_path, three_recordings, some_file):
    """A resumed run's pitch and features come from its data, its early stopping from its checkpoint."""
    runs = tmp_path / "runs"
    first = cli("train", three_recordings, "--runs-dir", runs, "--name", "r", *QUICK)
    assert first.exit_code == 0, first.output
    run = runs / "r"
    resume = ["train", "--resume", run, "--epochs", "2", "--max-steps", "2"]
    assert_refused(cli(*resume, "--rmvpe", some_file), "--rmvpe is used only with --f0 rmvpe", "here is pm")
    assert_refused(cli(*resume, "--hubert", some_file), "--hubert is used only with --features hubert")
    assert_refused(cli(*resume, "--min-delta", "0.1"), "--min-delta 0.1 is used only by early stopping")


@pytest.mark.parametrize("config", ["v2-40k", "v1-32k"])
def test_compare_refuses_an_rvc_config_on_mel_features_as_train_does(tmp_path, three_recordings, config):
    """A comparison trains on mel features: the same rule as `arvc train`'s, with the same opt-in flag."""
    out = tmp_path / "compare"
    result = cli("compare", three_recordings, "--out-dir", out, "--config", config, "--optimizers", "AdamW")
    assert_refused(result, f"config {config} is an RVC model", "mel features", "--config tiny")
    assert "--allow-mel-rvc-config" in result.output
    assert "--features hubert" not in result.output, "compare has no --features flag"
    assert not out.exists()


def test_compare_takes_an_rvc_config_on_mel_features_only_when_asked():
    from arvc.compare.runner import check_request

    with pytest.raises(ValueError, match="config v2-48k is an RVC model"):
        check_request(None, "AdamW", config="v2-48k")
    variants, _ = check_request(None, "AdamW", config="v2-48k", allow_mel_rvc_config=True)
    assert [v.name for v in variants] == ["AdamW"]
