"""Bad input is refused before any work, and nothing a user already has is replaced or read back as data.

Through the CLI, as a user meets it: `error:` line, exit status 1, no traceback, and the disk as it was.
"""

import json
import re
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from arvc.cli import app
from arvc.config import BUILTIN_CONFIGS, RunConfig, load_config
from arvc.modelfile.export import is_rvc_sized

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


@pytest.fixture
def recordings(three_recordings, tmp_path):
    """A private copy, so a test may put runs inside it."""
    return Path(shutil.copytree(three_recordings, tmp_path / "recordings"))


def cli(*args):
    return runner.invoke(app, [*map(str, args)])


def assert_refused(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "error:" in result.output, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clean exit, no exception
    for fragment in fragments:
        assert fragment in result.output, result.output


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. every value checked before preprocessing -------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-1"], "--lr -1.0 must be a finite number > 0"),
        (["--lr", "0"], "--lr 0.0 must be a finite number > 0"),
        (["--lr", "nan"], "--lr nan must be a finite number > 0"),
        (["--betas", "1.5,0.9"], "--betas: beta1 = 1.5 must be in [0, 1)"),
        (["--betas", "0.9,1"], "--betas: beta2 = 1.0 must be in [0, 1)"),
        (["--betas", "-0.1,0.9"], "beta1 = -0.1 must be in [0, 1)"),
        (["--weight-decay", "-1"], "--weight-decay -1.0 must be a finite number >= 0"),
        (["--eps", "0"], "--eps 0.0 must be a finite number > 0"),
        (["--eps", "-1e-8"], "--eps -1e-08 must be a finite number > 0"),
        (["--set", "train.log_interval=0"], "train.log_interval = 0 must be an integer >= 1"),
        (["--set", "train.save_every=0"], "train.save_every = 0 must be an integer >= 1"),
        (["--set", "train.keep_last=-1"], "train.keep_last = -1 must be >= 0"),
        (["--set", "train.eps=0"], "train.eps = 0.0 must be a finite number > 0"),
        (["--set", "train.learning_rate=-0.1"], "train.learning_rate = -0.1 must be a finite number > 0"),
        (["--set", "train.betas=[0.8, 1.2]"], "train.betas: beta2 = 1.2 must be in [0, 1)"),
        (["--set", "train.lr_decay=0"], "train.lr_decay = 0.0 must be in (0, 1]"),
        (["--set", "train.lr_decay=1.5"], "train.lr_decay = 1.5 must be in (0, 1]"),
        (["--set", "train.c_mel=-45"], "train.c_mel = -45.0 must be a finite number >= 0"),
        (["--set", "train.c_kl=NaN"], "train.c_kl = nan must be a finite number >= 0"),
        (["--set", "train.c_fm=-1"], "train.c_fm = -1.0 must be a finite number >= 0"),
        (["--set", "train.grad_clip=0"], "train.grad_clip = 0.0 must be a finite number > 0, or null"),
        (["--set", "train.seed=-1"], "train.seed = -1 must be in [0, 2**64)"),
        (["--select", "mos"], "--select 'mos' is not a held-out metric; choose one of mel_l1, stft,"),
        (["--set", "train.select=pesq"], "--select 'pesq' is not a held-out metric"),
        (["--select", "stoi", "--val-fraction", "0"], "--select stoi has nothing to choose from"),
    ],
)
def test_bad_values_are_refused_before_preprocessing(tmp_path, recordings, args, message):
    runs = tmp_path / "runs"
    quick = ["--batch-size", "2", "--epochs", "1", "--max-steps", "2"]  # what old code did with it: quickly
    result = cli("train", recordings, "--runs-dir", runs, "--name", "x", *quick, *args)
    assert_refused(result, message)
    assert not (runs / "x" / "data").exists(), "nothing may be preprocessed for bad input"
    assert not runs.exists()


def test_select_of_a_score_without_its_package_names_the_extra(tmp_path, recordings, block_import):
    block_import("pesq")
    result = cli("train", recordings, "--runs-dir", tmp_path / "runs", "--select", "pesq_wb")
    assert_refused(result, "--select pesq_wb: PESQ needs the 'pesq' package", "pip install 'arvc[score]'")
    assert not (tmp_path / "runs").exists()


def test_several_bad_values_are_all_named():
    """The same ranges hold for the Python API (and compare), which go through RunConfig.validate."""
    raw = load_config("tiny").to_dict()
    raw["train"].update(log_interval=0, keep_last=-2, eps=0.0)
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict(raw)
    for key in ("train.log_interval = 0", "train.keep_last = -2", "train.eps = 0.0"):
        assert key in str(caught.value)


def test_the_builtin_configs_are_every_packaged_preset():
    packaged = {p.name.removesuffix(".json") for p in (resources.files("arvc") / "configs").iterdir()}
    assert set(BUILTIN_CONFIGS) == packaged
    assert {"v1-32k", "v1-40k", "v1-48k", "v2-32k", "v2-40k", "v2-48k"} <= packaged


@pytest.mark.parametrize("name", BUILTIN_CONFIGS)
def test_every_builtin_config_is_valid_and_a_bad_value_on_it_is_refused(tmp_path, recordings, name):
    """Each preset passes `train`'s checks (the one error is the bad value's) and takes the same checks."""
    cfg = load_config(name)
    cfg.validate()
    runs = tmp_path / "runs"
    mel = ["--allow-mel-rvc-config"] if is_rvc_sized(cfg) else []  # RVC presets on mel: test_settings.py
    args = ["--config", name, *mel, "--set", "train.log_interval=0", "--max-steps", "1"]
    result = cli("train", recordings, "--runs-dir", runs, "--name", "x", *args)
    assert_refused(result)
    assert result.output.strip() == "error: invalid config: train.log_interval = 0 must be an integer >= 1"
    assert not runs.exists()


# --- 4. a run name is one path component -------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".", ".."])
@pytest.mark.parametrize("command", ["train", "preprocess"])
def test_a_run_name_is_one_folder_name(tmp_path, recordings, command, name):
    runs = tmp_path / "sub" / "runs"
    extra = ["--sample-rate", "16000"] if command == "preprocess" else ["--epochs", "1", "--max-steps", "1"]
    result = cli(command, recordings, "--runs-dir", runs, "--name", name, *extra)
    assert_refused(result, "is not one folder name", "--name alice")
    assert not (tmp_path / "sub").exists()
    assert not (tmp_path / "escape").exists()


# --- 3. a run folder holding any product is never written over ---------------------------------------
def _product(run: Path, kind: str) -> None:
    if kind == "export":
        (run / "export").mkdir(parents=True)
        (run / "export" / "model.safetensors").write_bytes(b"a good model")
    elif kind == "metrics.csv":
        (run / "metrics.csv").write_text("epoch,step\n1,10\n")
    elif kind == "checkpoints":
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "ckpt_E00001_S00000010.pt").write_bytes(b"a checkpoint")
    elif kind == "tensorboard":
        (run / "tensorboard").mkdir(parents=True)
        (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"events")
    elif kind == "loss.png":
        (run / "loss.png").write_bytes(b"png")


@pytest.mark.parametrize("kind", ["export", "checkpoints"])
def test_a_run_folder_with_a_checkpoint_or_a_model_is_refused_and_left_as_it_was(tmp_path, recordings, kind):
    """A checkpoint: continue it with --resume. An export without a checkpoint: nothing to continue,
    and a model the user may want; either way nothing is written."""
    run = tmp_path / "runs" / "alice"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(load_config("tiny").to_dict()))
    for product in (kind, "metrics.csv", "tensorboard", "loss.png"):
        _product(run, product)
    before = snapshot(run)
    result = cli("train", recordings, "--runs-dir", tmp_path / "runs", "--name", "alice")
    if kind == "checkpoints":
        assert_refused(result, f"{run} already holds a run (", f"--resume {run}", "another --name")
    else:
        assert_refused(result, f"{run} holds an exported model", "no checkpoint", "another --name")
    assert snapshot(run) == before


def test_a_run_killed_before_its_first_checkpoint_can_be_restarted(tmp_path, recordings):
    """kill -9 before the first checkpoint left metrics.csv, tensorboard/, loss.png, config.json, an
    unfinished checkpoint temporary and the preprocessed data. --resume said "no checkpoint" and a new run
    "already holds a run… continue it with --resume": a dead end. Now --resume gives the command that
    starts it again, and that command reuses the data and moves the rest into a dated folder."""
    runs = tmp_path / "runs"
    run = runs / "alice"
    done = cli("preprocess", recordings, "--name", "alice", "--runs-dir", runs, "--sample-rate", "16000")
    assert done.exit_code == 0, done.output
    (run / "config.json").write_text(json.dumps(load_config("tiny").to_dict()))
    for product in ("metrics.csv", "tensorboard", "loss.png"):
        _product(run, product)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".ckpt_E00001_S00000010.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")
    before = snapshot(run)

    resumed = cli("train", "--resume", run)
    command = f"arvc train {recordings.resolve()} --name alice --runs-dir {runs}"
    assert_refused(
        resumed, "no checkpoint", "stopped before its first save", f"Start it again with: {command}"
    )
    assert f"its preprocessed data in {run / 'data'} is reused" in resumed.output
    assert snapshot(run) == before, "refused: nothing changed"

    restarted = cli(*command.split()[1:], "--batch-size", "2", "--epochs", "1", "--max-steps", "1")
    assert restarted.exit_code == 0, restarted.output
    (aside,) = run.glob("restarted-*")
    moved = snapshot(aside)
    assert moved["metrics.csv"] == before["metrics.csv"] and moved["loss.png"] == before["loss.png"]
    assert moved["config.json"] == before["config.json"]
    assert "tensorboard/events.out.tfevents.1" in moved
    after = snapshot(run)
    pieces = [name for name in before if name.startswith("data/") and name.endswith((".npy", ".wav"))]
    assert pieces and all(after[name] == before[name] for name in pieces), "the data is reused as it was"
    assert len(list((run / "checkpoints").glob("ckpt_*.pt"))) == 1
    assert (run / "export" / "model.safetensors").is_file()


# --- 6 and 5: the README flow reuses the preprocessed data; arvc never reads its own outputs ----------
def test_readme_flow_reuses_the_preprocessed_pitch_and_never_reads_its_outputs(
    tmp_path, recordings, monkeypatch
):
    monkeypatch.chdir(recordings)  # `cd recordings && arvc preprocess .`: runs/ lands inside the dataset
    first = cli("preprocess", ".", "--name", "alice", "--sample-rate", "16000", "--f0", "harvest")
    assert first.exit_code == 0, first.output
    assert "from 3 files" in first.output
    data = recordings / "runs" / "alice" / "data"
    assert json.loads((data / "preprocess.json").read_text())["f0_method"] == "harvest"
    pitch = snapshot(data / "2b-f0nsf")
    assert pitch

    explicit = cli("train", ".", "--name", "alice", "--f0", "pm")
    assert_refused(explicit, "f0 method 'harvest'", "drop --f0", "preprocess again with --f0 pm")
    assert snapshot(data / "2b-f0nsf") == pitch

    trained = cli("train", ".", "--name", "alice", "--batch-size", "2", "--epochs", "1", "--max-steps", "1")
    assert trained.exit_code == 0, trained.output
    assert "arvc's own output" in trained.output
    assert snapshot(data / "2b-f0nsf") == pitch, "train recomputed the harvest pitch"
    assert json.loads((data / "preprocess.json").read_text())["f0_method"] == "harvest"
    assert (recordings / "runs" / "alice" / "export" / "model.safetensors").is_file()

    # The next preprocess of the same folder finds 3 recordings, not 3 + the run's own slices.
    again = cli("preprocess", ".", "--name", "bob", "--sample-rate", "16000")
    assert again.exit_code == 0, again.output
    assert re.search(r"skipping .*runs[/\\]alice: it is arvc's own output", again.output), again.output
    assert "from 3 files" in again.output

    # `arvc train .` is named after the folder (it used to train into runs/ itself).
    named = cli("train", ".", "--batch-size", "2", "--epochs", "1", "--max-steps", "1")
    assert named.exit_code == 0, named.output
    assert (recordings / "runs" / "recordings" / "export" / "model.safetensors").is_file()
    assert not (recordings / "runs" / "data").exists()


def test_data_at_another_sample_rate_is_a_clear_error_not_a_silent_redo(tmp_path, recordings):
    runs = tmp_path / "runs"
    done = cli(
        "preprocess", recordings, "--name", "carol", "--runs-dir", runs
    )  # preprocess's default: 40 kHz
    assert done.exit_code == 0, done.output
    data = runs / "carol" / "data"
    before = snapshot(data)
    result = cli("train", recordings, "--name", "carol", "--runs-dir", runs)  # train's default: tiny, 16 kHz
    assert_refused(
        result,
        "preprocessed at 40000 Hz but config tiny trains at 16000 Hz",
        "--config v2-40k after preprocessing again with --features hubert --hubert PATH",
        "--sample-rate 16000",
        "nothing was changed",
    )
    assert snapshot(data) == before


def test_features_of_another_size_are_a_clear_error(tmp_path, recordings):
    runs = tmp_path / "runs"
    done = cli("preprocess", recordings, "--name", "dan", "--runs-dir", runs, "--sample-rate", "16000")
    assert done.exit_code == 0, done.output
    result = cli("train", recordings, "--name", "dan", "--runs-dir", runs, "--set", "data.feature_dim=64")
    assert_refused(result, "features are 80-d but config tiny expects 64-d", "--set data.feature_dim=80")


def test_train_without_a_dataset_refuses_a_run_preprocessed_from_recordings(tmp_path, recordings):
    """`arvc preprocess RECORDINGS --name X`, then `arvc train --name X` (the dataset forgotten): no
    dataset means the demo voice, which was preprocessed into the same data/ (and trained on beside the
    recordings). Refused, naming the recordings and the command; the demo voice's own data is reused."""
    runs = tmp_path / "runs"
    done = cli("preprocess", recordings, "--name", "erin", "--runs-dir", runs, "--sample-rate", "16000")
    assert done.exit_code == 0, done.output
    data = runs / "erin" / "data"
    assert json.loads((data / "preprocess.json").read_text())["dataset"] == str(recordings.resolve())
    before = snapshot(data)
    result = cli("train", "--name", "erin", "--runs-dir", runs, "--max-steps", "1")
    assert_refused(
        result,
        f"{data} holds data preprocessed from {recordings.resolve()}",
        "demo voice",
        f"Pass the dataset: arvc train {recordings.resolve()} --name erin --runs-dir {runs}",
        "nothing was changed",
    )
    assert snapshot(data) == before
    assert sorted(p.name for p in (runs / "erin").iterdir()) == ["data"]

    # data preprocessed before preprocess.json recorded its folder: the source names tell
    manifest = json.loads((data / "preprocess.json").read_text())
    del manifest["dataset"]
    (data / "preprocess.json").write_text(json.dumps(manifest))
    result = cli("train", "--name", "erin", "--runs-dir", runs, "--max-steps", "1")
    assert_refused(
        result, "from recordings (their folder is not recorded)", "arvc train RECORDINGS --name erin"
    )


def test_train_without_a_dataset_reuses_the_demo_voice_data(tmp_path, monkeypatch):
    """The demo voice's data (recorded as the generated demo folder) is the demo voice: used again."""
    from arvc.data.prepare import preprocessed_from

    monkeypatch.setenv("ARVC_CACHE_DIR", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    first = cli("train", "--runs-dir", runs, "--name", "d", "--batch-size", "2", "--max-steps", "1")
    assert first.exit_code == 0, first.output
    assert preprocessed_from(runs / "d" / "data").demo
    shutil.rmtree(runs / "d" / "checkpoints")
    for name in ("export", "metrics.csv", "tensorboard", "loss.png"):
        path = runs / "d" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    again = cli("train", "--runs-dir", runs, "--name", "d", "--batch-size", "2", "--max-steps", "1")
    assert again.exit_code == 0, again.output


# --- 2. non-finite weights never end as a success ---------------------------------------------------
def test_a_run_with_non_finite_weights_fails_and_exports_nothing(tmp_path, recordings):
    """A generator that starts from NaN weights (here a damaged pretrained file) must not be saved as a
    checkpoint (it was, and a resume continued it), exported as a model, nor reported as a success."""
    from safetensors.torch import save_file

    from arvc.model import Synthesizer
    from arvc.modelfile.formats import EXPORT_FORMAT

    cfg = load_config("tiny")
    weights = {k: v.clone() for k, v in Synthesizer(cfg).state_dict().items() if not k.startswith("enc_q.")}
    weights["dec.conv_pre.weight"].fill_(float("nan"))
    damaged = tmp_path / "damaged.safetensors"
    save_file(weights, str(damaged), metadata={"format": EXPORT_FORMAT, "config": json.dumps(cfg.to_dict())})

    runs = tmp_path / "runs"
    result = cli(
        "train", recordings, "--runs-dir", runs, "--name", "nan", "--pretrained-g", damaged,
        "--batch-size", "2", "--epochs", "1", "--max-steps", "1",
    )  # fmt: skip
    assert_refused(
        result,
        "training diverged",
        "non-finite",
        "generator.dec.conv_pre.weight",
        "not saved as checkpoint ckpt_E00000_S00000001.pt",
        "No checkpoint was saved before it",
        "lower --lr",
    )
    assert not list((runs / "nan").glob("checkpoints/*.pt")), "no checkpoint of NaN weights"
    assert not (runs / "nan" / "export" / "model.safetensors").exists()
    assert "trained 1 epochs" not in result.output


def test_export_refuses_non_finite_weights_and_keeps_the_good_model(tmp_path):
    from arvc.model import Synthesizer
    from arvc.modelfile.export import ExportError, export_generator

    cfg = load_config("tiny")
    torch.manual_seed(0)
    generator = Synthesizer(cfg)
    out = tmp_path / "export"
    export_generator(generator, cfg, out)
    before = snapshot(out)
    with torch.no_grad():
        generator.dec.conv_pre.weight[0, 0, 0] = float("inf")
        generator.flow.flows[0].pre.weight.fill_(float("nan"))
    with pytest.raises(ExportError, match=r"2 of \d+ generator tensors hold non-finite values") as caught:
        export_generator(generator, cfg, out)
    assert "dec.conv_pre.weight" in str(caught.value) and "lower --lr" in str(caught.value)
    assert snapshot(out) == before  # byte for byte, no temporary left


@pytest.mark.parametrize("part", ["g", "d"])
def test_a_pretrained_model_that_does_not_fit_the_config_is_refused_before_preprocessing(
    tmp_path, recordings, part
):
    """A pretrained file of another size (the tiny config's weights; the run's config has wider layers, or
    RVC v1's 6 discriminator periods) was refused only after the data had been preprocessed (minutes on a
    real dataset)."""
    from safetensors.torch import save_file

    from arvc.model import MultiPeriodDiscriminator, Synthesizer
    from arvc.modelfile.formats import EXPORT_FORMAT

    cfg = load_config("tiny")
    net = Synthesizer(cfg) if part == "g" else MultiPeriodDiscriminator(cfg)
    weights = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("enc_q.")}
    if part == "g":
        other = tmp_path / "other_g.safetensors"
        metadata = {"format": EXPORT_FORMAT, "config": json.dumps(cfg.to_dict())}
        save_file(weights, str(other), metadata=metadata)
    else:
        other = tmp_path / "other_d.pth"
        torch.save({"model": weights}, other)  # RVC's pretrained D layout (f0D40k.pth)
    runs = tmp_path / "runs"
    result = cli(
        "train", recordings, "--runs-dir", runs, "--name", "big", f"--pretrained-{part}", other,
        "--set", "model.hidden_channels=96" if part == "g" else "model.disc_periods=[2, 3, 5, 7, 11, 17]",
        "--batch-size", "2", "--max-steps", "1",
    )  # fmt: skip
    assert_refused(result, "does not fit the " + ("generator" if part == "g" else "discriminator"))
    assert not (runs / "big").exists(), "refused before any work: nothing preprocessed"
