"""`arvc train --ema` / a schedule-free optimizer through the CLI (issue #33): the refusals' `error:` lines
(before any work), what `arvc export` takes by default and with `--weights live`, resume keeping --ema."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from arvc.cli import app
from arvc.train.checkpoint import latest_checkpoint, load_checkpoint

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    from arvc.data.demo import generate_demo_voice

    root = tmp_path_factory.mktemp("ema")
    generate_demo_voice(root / "wav", seconds=12, sr=16000, seed=2)
    args = ["train", str(root / "wav"), "--runs-dir", str(root / "runs"), "--name", "alice", "--ema", "0.9"]
    result = runner.invoke(app, [*args, "--batch-size", "1", "--epochs", "1", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "alice"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ema", "1.5"], "error: --ema 1.5: the EMA decay must be between 0 and 1"),
        (["--ema", "0"], "error: --ema 0.0: the EMA decay must be between 0 and 1"),
        (["--ema", "0.999", "--optimizer", "AdamWScheduleFree"], "error: --ema 0.999 with AdamWScheduleFree"),
        (["--zero", "--optimizer", "AdamWScheduleFree"], "error: --zero with AdamWScheduleFree"),
    ],
)
def test_bad_averaging_settings_are_refused_before_any_work(tmp_path, args, message):
    result = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert output.startswith(message), output
    assert not (tmp_path / "runs").exists(), "refused before preprocessing"


def test_export_takes_the_ema_by_default_and_the_live_weights_when_asked(ema_run, tmp_path):
    run = tmp_path / "alice"
    shutil.copytree(ema_run, run, ignore=shutil.ignore_patterns("data"))
    checkpoint = load_checkpoint(latest_checkpoint(run))
    ema, live = checkpoint["averaged"]["generator"], checkpoint["generator"]
    assert checkpoint["config"]["train"]["ema"] == 0.9 and checkpoint["averaged"]["kind"] == "ema"
    assert checkpoint["averaged"]["updates"] == checkpoint["step"] == 2  # (the first update copies)
    trained = load_file(run / "export" / "model.safetensors")  # what `arvc train` exported
    assert all(torch.equal(trained[k], ema[k]) for k in trained)

    shutil.rmtree(run / "export")
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert "ema weights" in result.output
    exported = load_file(run / "export" / "model.safetensors")
    assert all(torch.equal(exported[k], ema[k]) for k in exported)

    result = runner.invoke(app, ["export", str(run), "--weights", "live"])
    assert result.exit_code == 0, result.output
    assert "live weights" in result.output
    exported = load_file(run / "export" / "model.safetensors")
    assert all(torch.equal(exported[k], live[k]) for k in exported)
    assert not all(torch.equal(live[k], ema[k]) for k in exported)

    result = runner.invoke(app, ["export", str(run), "--weights", "best"])
    assert result.exit_code == 1 and "error: --weights 'best': use one of averaged, live" in result.output


def test_a_resume_keeps_the_ema_and_refuses_another_decay(ema_run, tmp_path):
    run = tmp_path / "alice"
    shutil.copytree(ema_run, run, ignore=shutil.ignore_patterns("data"))
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--ema", "0.5"])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert output.startswith("error: cannot resume") and "train.ema: 0.9 -> 0.5" in output
    assert not (run / "data").exists()


def test_converting_with_a_checkpoint_uses_the_weights_the_run_evaluates(ema_run):
    """`arvc infer CKPT` / the Convert tab given a checkpoint: its EMA, as the run's export would."""
    from arvc.infer.convert import load_voice_model

    path = latest_checkpoint(ema_run)
    net, _ = load_voice_model(path, device="cpu")
    checkpoint = load_checkpoint(path)
    key = "enc_p.emb_phone.weight"  # (not weight-normed: unchanged by remove_weight_norm)
    assert torch.equal(net.state_dict()[key], checkpoint["averaged"]["generator"][key])
    assert not torch.equal(net.state_dict()[key], checkpoint["generator"][key])
