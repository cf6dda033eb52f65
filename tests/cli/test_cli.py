"""The CLI is thin: these tests check what a user sees and that errors exit non-zero."""

import csv
import json
import re
import shlex
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import arvc.cli._app
from arvc.cli import app
from arvc.optim import OPTIMIZERS

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


def test_optimizers_table_lists_every_optimizer_in_rating_order():
    result = runner.invoke(app, ["optimizers"])
    assert result.exit_code == 0, result.output
    positions = [result.output.index(name + " ") for name in OPTIMIZERS]
    assert positions == sorted(positions)
    assert "★★★★★" in result.output and "Mixed-precision" in result.output


def test_optimizers_json():
    result = runner.invoke(app, ["optimizers", "--json"])
    rows = json.loads(result.stdout)
    assert [(r["name"], r["rating"]) for r in rows] == [(s.name, s.rating) for s in OPTIMIZERS.values()]


def test_optimizer_details_json():
    result = runner.invoke(app, ["optimizers", "anyprecisionadamw", "--json"])
    assert result.exit_code == 0, result.output
    details = json.loads(result.stdout)
    assert "use_kahan_summation" in details["supported_kwargs"]
    assert details["state_bytes_per_param"]["bfloat16 params, bf16-weights mode"] <= 6.0
    assert details["fused_available"]["cpu"] is True  # arvc's own fused CPU kernel
    adamw = json.loads(runner.invoke(app, ["optimizers", "AdamW", "--json"]).stdout)
    assert adamw["fused_available"]["cpu"] is True
    assert adamw["state_bytes_per_param"]["float32 params"] == 8.0


def test_optimizer_details_table():
    result = runner.invoke(app, ["optimizers", "AdaBeliefV2"])
    assert result.exit_code == 0, result.output
    assert "inverse_sqrt" in result.output and "arXiv:2010.07468" in result.output


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "RAdamScheduleFree"])
def test_schedule_free_optimizers_are_listed_with_the_constant_pairing(name):
    listed = runner.invoke(app, ["optimizers"])
    assert result_ok(listed) and name in listed.output and "Schedule-free" in listed.output
    details = json.loads(runner.invoke(app, ["optimizers", name.lower(), "--json"]).stdout)
    assert details["paired_scheduler"] == "constant" and "arXiv:2405.15682" in details["paper"]
    assert details["state_bytes_per_param"]["float32 params"] == 8.0  # z and exp_avg_sq
    assert {"r", "weight_lr_power"} <= set(details["supported_kwargs"])
    assert "optimizer.eval()" in details["weights"]
    table = runner.invoke(app, ["optimizers", name])
    assert result_ok(table) and "constant" in table.output


def result_ok(result) -> bool:
    assert result.exit_code == 0, result.output
    return True


def test_unknown_optimizer_is_a_clear_error():
    result = runner.invoke(app, ["optimizers", "Lion"])
    assert result.exit_code == 2
    assert "AdaBeliefV2" in result.output


def test_recommend():
    result = runner.invoke(app, ["recommend", "--epochs", "100"])
    assert result.exit_code == 0 and "RAdam" in result.output
    result = runner.invoke(app, ["recommend", "--epochs", "900", "--precision", "bf16", "--json"])
    advice = json.loads(result.stdout)
    assert advice["optimizer"] == "AnyPrecisionAdamW"
    bad = runner.invoke(app, ["recommend", "--precision", "int4"])
    assert bad.exit_code == 2
    # stopping on validation: a schedule-free optimizer, and the command to run says --early-stop
    result = runner.invoke(app, ["recommend", "--early-stop"])
    assert result.exit_code == 0, result.output
    assert "--optimizer AdamWScheduleFree" in result.output and "--early-stop 10" in result.output


# --- arvc train / preprocess ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    from arvc.data.demo import generate_demo_voice

    folder = tmp_path_factory.mktemp("recordings")
    generate_demo_voice(folder, seconds=12, sr=16000, seed=2)
    return folder


def train_cli(*args):
    return runner.invoke(app, ["train", *map(str, args)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "Lion"], "valid names"),
        (["--precision", "fp8"], "unknown precision"),
        (["--f0", "yin"], "unknown f0 method"),
        (["--features", "hubert"], "--hubert PATH"),
        (["--betas", "0.9"], "two numbers"),
        (["--set", "model.nope=1"], "model.nope"),
    ],
)
def test_train_rejects_bad_input_before_any_work(tmp_path, args, message):
    result = train_cli("--runs-dir", tmp_path, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert not list(tmp_path.iterdir()), "nothing may be written for bad input"


def test_train_missing_or_empty_dataset(tmp_path):
    result = train_cli(tmp_path / "nowhere", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = train_cli(tmp_path / "empty", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "is empty; put recordings" in result.output


def test_train_then_refuse_to_overwrite_then_resume(tmp_path, recordings):
    args = [
        recordings,
        "--runs-dir",
        tmp_path,
        "--name",
        "alice",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--max-steps",
        "1",
    ]
    first = train_cli(*args)
    assert first.exit_code == 0, first.output
    run = tmp_path / "alice"
    assert (run / "export" / "model.safetensors").is_file() and (run / "loss.png").is_file()
    checkpoints = sorted((run / "checkpoints").iterdir())

    again = train_cli(*args)
    assert again.exit_code == 1 and "--resume" in again.output
    assert sorted((run / "checkpoints").iterdir()) == checkpoints

    resumed = train_cli("--resume", run, "--epochs", "2", "--max-steps", "2")
    assert resumed.exit_code == 0, resumed.output
    assert "(2 steps)" in resumed.output


def test_train_ends_with_the_best_epoch_and_a_command_that_converts_with_it(tmp_path):
    """The end of a run says which epoch was best on held-out data, beside the last, and prints an
    `arvc infer` command that works as printed (a held-out recording through export/best)."""
    from arvc.data.demo import generate_demo_voice

    generate_demo_voice(tmp_path / "voice", seconds=24, sr=16000, seed=3)  # 7 pieces: 2 held out
    args = ["--runs-dir", tmp_path / "runs", "--name", "bob", "--batch-size", "2", "--epochs", "2"]
    result = train_cli(tmp_path / "voice", *args, "--f0", "harvest")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "bob"
    best = json.loads((run / "export" / "best" / "best.json").read_text())
    last = list(csv.DictReader((run / "validation.csv").open()))[-1]
    printed = re.search(
        r"held-out mel L1: best ([\d.]+) at epoch (\d+) \(export/best\), last ([\d.]+) at epoch (\d+)",
        result.output,
    )
    assert printed, result.output
    assert printed[1] == f"{best['mel_l1']:.4f}" and int(printed[2]) == best["epoch"]
    # validation.csv keeps 6 significant digits: rounding that again to 4 decimals can differ in the last
    # printed digit from the full value (1.5235507 -> "1.52355" -> "1.5235", but "1.5236" printed)
    assert abs(float(printed[3]) - float(last["val_mel_l1"])) <= 5e-5 + 1e-6
    assert int(printed[4]) == int(last["epoch"])
    # the last evaluation's held-out scores (the last evaluation scores all of them; docs/scoring.md)
    scores = re.search(
        r"held-out at epoch 2: mel L1 [\d.]+, STFT [\d.]+, F0 RMSE \(cents\) .*MCD \(dB\) ([\d.]+)",
        result.output,
    )
    assert scores and abs(float(scores[1]) - float(last["val_mcd_db"])) <= 0.005 + 1e-6, result.output
    assert "PESQ-wb" in result.output.split("held-out at epoch 2:")[1].splitlines()[0]

    (line,) = [line for line in result.output.splitlines() if line.strip().startswith("listen: ")]
    words = shlex.split(line.split("listen: ", 1)[1])
    assert words[:3] == ["arvc", "infer", str(run / "export" / "best")]
    assert Path(words[3]).parent == run / "samples" / "original" and words[-2:] == ["--f0", "harvest"]
    converted = runner.invoke(app, words[1:])  # what follows "arvc"
    assert converted.exit_code == 0, converted.output
    assert Path(words[4]).is_file()


def test_preprocess_command(tmp_path, recordings):
    result = runner.invoke(
        app,
        [
            "preprocess",
            str(recordings),
            "--name",
            "bob",
            "--runs-dir",
            str(tmp_path),
            "--sample-rate",
            "16000",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bob" / "data" / "filelist.txt").is_file()
    bad = runner.invoke(
        app,
        [
            "preprocess",
            str(recordings),
            "--name",
            "bob",
            "--runs-dir",
            str(tmp_path),
            "--sample-rate",
            "22050",
        ],
    )
    assert bad.exit_code == 1 and "22050" in bad.output


def test_eight_bit_without_bitsandbytes_fails_before_any_work(tmp_path, no_bitsandbytes):
    result = train_cli("--runs-dir", tmp_path, "--use-8bit")
    assert result.exit_code == 1
    assert "pip install 'arvc[bnb]'" in result.output  # printed literally, not eaten as markup
    assert not list(tmp_path.iterdir())


def test_optimizer_details_show_the_values_a_run_uses():
    # What `arvc train --optimizer NAME` builds the optimizer with from RVC's Adam values (config).
    belief = json.loads(runner.invoke(app, ["optimizers", "AdaBelief", "--json"]).stdout)
    assert belief["run_hyperparameters"] == {"betas": [0.8, 0.99], "eps": 1e-18, "weight_decay": 0.01}
    assert "squared" in belief["run_eps"]
    adamw = json.loads(runner.invoke(app, ["optimizers", "AdamW", "--json"]).stdout)
    assert adamw["run_hyperparameters"] == {"betas": [0.8, 0.99], "eps": 1e-9, "weight_decay": 0.01}
    table = runner.invoke(app, ["optimizers", "AdaBeliefV2"])
    assert "eps: 1e-18" in table.output


def test_preprocess_and_train_with_rmvpe_pitch(tmp_path, recordings, rmvpe_weights):
    """The data's pitch comes from the user's rmvpe.pt, recorded as rmvpe; a later train reuses it without
    --rmvpe, and its listen command asks for the file the conversion needs."""
    args = ["--name", "carol", "--runs-dir", tmp_path, "--sample-rate", "16000", "--f0", "rmvpe"]
    missing = runner.invoke(app, ["preprocess", str(recordings), *map(str, args)])
    assert missing.exit_code == 1 and "--f0 rmvpe needs --rmvpe PATH" in missing.output
    assert not (tmp_path / "carol").exists()
    done = runner.invoke(
        app, ["preprocess", str(recordings), *map(str, args), "--rmvpe", str(rmvpe_weights[0])]
    )
    assert done.exit_code == 0, done.output
    data = tmp_path / "carol" / "data"
    assert json.loads((data / "preprocess.json").read_text())["f0_method"] == "rmvpe"
    trained = train_cli(recordings, "--runs-dir", tmp_path, "--name", "carol", "--batch-size", "2",
                        "--epochs", "1", "--max-steps", "1", "--val-fraction", "0")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "--f0 rmvpe --rmvpe RMVPE.pt" in trained.output


def test_listen_command_carries_what_the_conversion_needs(tmp_path):
    """The printed `arvc infer` line names the best model when there is one, a held-out recording when
    there are samples, and the pitch/content files the voice needs; paths with spaces stay one word."""
    from types import SimpleNamespace

    from arvc.cli.train import listen_command

    run = tmp_path / "my run"
    (run / "samples" / "original").mkdir(parents=True)
    (run / "samples" / "original" / "a_1.wav").write_bytes(b"")
    result = SimpleNamespace(exports={"best": run / "export" / "best"}, samples_dir=run / "samples")
    words = shlex.split(
        listen_command(run, result, "rmvpe", "hubert", Path("/m/hubert_base.pt"), Path("/m/rmvpe.pt"), 9)
    )
    assert words[:5] == ["arvc", "infer", str(run / "export" / "best"), str(run / "samples" / "original" /
                         "a_1.wav"), str(run / "samples" / "a_1_converted.wav")]  # fmt: skip
    assert words[5:] == ["--f0", "rmvpe", "--rmvpe", "/m/rmvpe.pt", "--features", "hubert", "--hubert",
                         "/m/hubert_base.pt", "--embedder-layer", "9"]  # fmt: skip
    plain = SimpleNamespace(exports={}, samples_dir=None)  # no validation: the last export, your recording
    assert shlex.split(listen_command(run, plain, "pm", "mel", None))[2:4] == [
        str(run / "export"),
        "YOUR_RECORDING.wav",
    ]


def test_an_error_line_is_one_line_at_80_columns(tmp_path, monkeypatch):
    """Rich wrapped `error:` lines at the console width, splitting a path mid-way: hard to copy."""
    monkeypatch.setattr(arvc.cli._app, "console", Console(width=80))
    missing = tmp_path / ("a-rather-long-folder-name-" * 3) / "recordings"
    result = CliRunner().invoke(app, ["train", str(missing)])
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert str(missing) in line and len(line) > 80


@pytest.mark.parametrize(
    "args, install",
    [
        (["--help"], "pip install 'arvc[ui]'"),
        (["ui", "--help"], "pip install 'arvc[ui]'"),
        (["train", "--help"], "(arvc[bnb])"),
    ],
)
def test_help_names_the_extra_to_install(args, install):
    # rich read "[ui]" and "[bnb]" as markup and printed "pip install 'arvc'", the wrong command
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert install in result.output


def test_select_help_names_every_metric_that_can_choose_the_best_model(wide_console):
    """--select's help is built from the one table of selectable metrics (arvc.config.BETTER): it listed
    them by hand, and a new score had to be added there too."""
    from arvc.config import BETTER

    text = " ".join(CliRunner().invoke(app, ["train", "--help"]).output.replace("│", " ").split())
    listed = re.search(r"What chooses the best model \(export/best\): ([^(]*) \(default mel_l1", text)
    assert listed is not None, text
    assert listed.group(1).split(", ") == list(BETTER)


def test_train_says_so_when_the_select_metric_never_had_a_value(tmp_path, three_recordings, monkeypatch):
    """--select METRIC that is nan at every evaluation (speaker similarity before the generator makes
    speech, F0 scores of an unvoiced output): no best model is chosen, and the end of the run said nothing
    at all about held-out data (not even the scores it had). Here F0 correlation is made nan."""
    import math

    import arvc.train.validation as validation

    scores = validation._piece_scores
    monkeypatch.setattr(validation, "_piece_scores", lambda *a, **k: {**scores(*a, **k), "f0_corr": math.nan})
    args = ["--runs-dir", tmp_path / "runs", "--name", "nan", "--batch-size", "2", "--epochs", "1"]
    result = train_cli(three_recordings, *args, "--select", "f0_corr")
    assert result.exit_code == 0, result.output
    assert "held-out f0_corr: no evaluation had a value of it" in result.output
    assert "no best model was chosen: the export is the last epoch's" in result.output
    assert re.search(r"held-out at epoch 1: mel L1 [\d.]+, STFT [\d.]+, F0 RMSE \(cents\)", result.output)
    assert not (tmp_path / "runs" / "nan" / "export" / "best").exists()
