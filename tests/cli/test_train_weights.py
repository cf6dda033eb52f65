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


@pytest.fixture(scope="module")
def schedule_free_run(ema_run, tmp_path_factory):
    """Two steps of AdamWScheduleFree on the EMA run's recordings (an epoch left to train)."""
    runs = tmp_path_factory.mktemp("sf") / "runs"
    args = ["train", str(ema_run.parent.parent / "wav"), "--runs-dir", str(runs), "--name", "bob"]
    result = runner.invoke(
        app,
        [*args, "--optimizer", "AdamWScheduleFree", "--batch-size", "1", "--epochs", "2", "--max-steps", "2"],
    )
    assert result.exit_code == 0, result.output
    return runs / "bob"


def _close(state: dict, reference: dict, atol: float = 1e-7) -> bool:
    return all(torch.allclose(state[k].float(), reference[k].float(), rtol=0, atol=atol) for k in reference)


def test_inspect_shows_what_the_averaged_record_holds(ema_run, schedule_free_run):
    import json

    for run, averaged in (
        (ema_run, {"kind": "ema", "decay": 0.9, "updates": 2}),
        (schedule_free_run, {"kind": "schedule-free"}),
    ):
        result = runner.invoke(app, ["inspect", str(latest_checkpoint(run)), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["averaged"] == averaged
        result = runner.invoke(app, ["inspect", str(run), "--json"])  # a run: its export says which weights
        assert json.loads(result.stdout)["info"].endswith(f"({averaged['kind']} weights)"), result.stdout
    table = " ".join(runner.invoke(app, ["inspect", str(latest_checkpoint(ema_run))]).output.split())
    assert "│ averaged │ kind=ema, decay=0.9, updates=2 │" in table, table


def test_pretrained_g_from_an_averaging_checkpoint_starts_from_its_averaged_weights(ema_run, tmp_path):
    """A new run started from an --ema run's checkpoint starts from the weights that run evaluated and
    exported (its EMA), as `arvc export` and `arvc infer` take them, and says so."""
    path = latest_checkpoint(ema_run)
    checkpoint = load_checkpoint(path)
    wav, runs = ema_run.parent.parent / "wav", tmp_path / "runs"
    args = ["train", str(wav), "--runs-dir", str(runs), "--name", "carol", "--pretrained-g", str(path)]
    result = runner.invoke(app, [*args, "--lr", "1e-12", "--batch-size", "1", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    started = load_checkpoint(latest_checkpoint(runs / "carol"))["generator"]  # one step of lr 1e-12 on
    assert _close(started, checkpoint["averaged"]["generator"])
    assert not _close(started, checkpoint["generator"])
    assert "starting from the run's ema weights" in " ".join(result.output.split())


def test_resuming_a_schedule_free_run_with_another_optimizer_continues_from_its_x(
    schedule_free_run, tmp_path
):
    """A switch away from a schedule-free optimizer (its state is not loaded into another) continues from
    the run's model, x (what it evaluated and exported), for G and D, not from y where it took gradients."""
    from arvc.config import RunConfig
    from arvc.model.discriminator import MultiPeriodDiscriminator
    from arvc.optim import build_optimizer

    run = tmp_path / "bob"
    shutil.copytree(schedule_free_run, run)
    saved = load_checkpoint(latest_checkpoint(run))
    net_d = MultiPeriodDiscriminator(RunConfig.from_dict(saved["config"]))  # D's x, by the optimizer's eval()
    net_d.load_state_dict(saved["discriminator"])
    optimizer = build_optimizer("AdamWScheduleFree", net_d.parameters(), lr=1e-3)
    optimizer.load_state_dict(saved["optim_d"]["state"])
    optimizer.eval()
    x_d = net_d.state_dict()

    args = ["train", "--resume", str(run), "--optimizer", "AdamW", "--lr", "1e-12", "--max-steps", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(latest_checkpoint(run))
    assert resumed["step"] == 3 and resumed["optim_g"]["name"] == "AdamW"
    assert _close(resumed["generator"], saved["averaged"]["generator"])
    assert not _close(resumed["generator"], saved["generator"])
    assert _close(resumed["discriminator"], x_d)
    assert not _close(resumed["discriminator"], saved["discriminator"])


def test_export_of_a_schedule_free_run_takes_x_by_default_and_y_when_asked(schedule_free_run, tmp_path):
    run = tmp_path / "bob"
    shutil.copytree(schedule_free_run, run, ignore=shutil.ignore_patterns("data"))
    checkpoint = load_checkpoint(latest_checkpoint(run))
    x, y = checkpoint["averaged"]["generator"], checkpoint["generator"]
    assert checkpoint["averaged"]["kind"] == "schedule-free"
    trained = load_file(run / "export" / "model.safetensors")  # what `arvc train` exported
    assert all(torch.equal(trained[k], x[k]) for k in trained)

    shutil.rmtree(run / "export")
    asked = (([], x, "schedule-free weights"), (["--weights", "live"], y, "live weights"))
    for args, weights, which in asked:
        result = runner.invoke(app, ["export", str(run), *args])
        assert result.exit_code == 0, result.output
        assert which in " ".join(result.output.split())
        exported = load_file(run / "export" / "model.safetensors")
        assert all(torch.equal(exported[k], weights[k]) for k in exported)
    assert not all(torch.equal(x[k], y[k]) for k in exported)


def test_a_schedule_free_run_resumed_by_the_cli_is_the_run_trained_straight(
    ema_run, schedule_free_run, tmp_path
):
    """`arvc train --resume` of a run stopped mid-epoch with its schedule-free optimizer: the same weights
    (y and x), optimizer state and export as one uninterrupted `arvc train`, bit for bit."""
    run = tmp_path / "bob"
    shutil.copytree(schedule_free_run, run)
    result = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    wav = ema_run.parent.parent / "wav"  # (the recordings the fixture trained on)
    args = ["train", str(wav), "--runs-dir", str(tmp_path / "runs"), "--name", "bob"]
    result = runner.invoke(
        app,
        [*args, "--optimizer", "AdamWScheduleFree", "--batch-size", "1", "--epochs", "2", "--max-steps", "4"],
    )
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(latest_checkpoint(run))
    straight = load_checkpoint(latest_checkpoint(tmp_path / "runs" / "bob"))
    assert resumed["step"] == straight["step"] == 4
    for key in ("generator", "discriminator"):
        assert all(torch.equal(resumed[key][k], t) for k, t in straight[key].items()), key
    x = straight["averaged"]["generator"]
    assert all(torch.equal(resumed["averaged"]["generator"][k], t) for k, t in x.items())
    for key in ("optim_g", "optim_d"):
        a, b = resumed[key]["state"], straight[key]["state"]
        assert a["param_groups"] == b["param_groups"], key
        assert all(
            torch.equal(a["state"][i][name], t) for i, s in b["state"].items() for name, t in s.items()
        ), key
    exports = [load_file(r / "export" / "model.safetensors") for r in (run, tmp_path / "runs" / "bob")]
    assert all(torch.equal(exports[0][k], t) for k, t in exports[1].items())
