"""Speaker similarity in held-out validation (an expensive group): the number arvc.audio.score computes, where
it lands (validation.csv, TensorBoard, the end-of-run lines), `--select speaker_sim` recorded and honoured on
resume, and validation without resemblyzer (the arvc[score] extra) saying so and going on."""

import csv
import importlib.util
import logging
import math
import re
import sys

import pytest
import torch
from trainkit import tiny
from typer.testing import CliRunner

from arvc.audio.score import load_voice_encoder, speaker_similarity
from arvc.cli import app
from arvc.data.demo import generate_demo_voice
from arvc.train.checkpoint import list_checkpoints, load_checkpoint
from arvc.train.validation import SCORE_PIECES, Validator

needs_resemblyzer = pytest.mark.skipif(
    importlib.util.find_spec("resemblyzer") is None,
    reason="resemblyzer (the arvc[score] extra) is not installed",
)
pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py
runner = CliRunner()


def _held(data_dir, count=3):
    return (data_dir / "filelist.txt").read_text().splitlines()[:count]


def _converting(validator, transform):
    """Make the Validator's generator "convert" each held-out piece into `transform(its recording)` (a
    stand-in for a trained model: an untrained tiny generator's output is spikes in which resemblyzer's
    voice activity detector finds no speech, so its speaker similarity is nan)."""
    originals = iter(validator.originals())
    validator.model.infer = lambda *args: transform(next(originals))[None, None]


@needs_resemblyzer
def test_validation_speaker_similarity_is_score_py_on_the_same_pair(data_dir):
    cfg = tiny()
    sr = cfg.data.sampling_rate
    validator = Validator(cfg, data_dir, _held(data_dir))
    assert validator.encoder is not None and "speaker" in validator.due(final=True)
    noise = torch.Generator().manual_seed(0)
    _converting(validator, lambda x: 0.5 * x + 0.03 * torch.randn(x.shape, generator=noise))
    evaluation = validator(keep=len(validator), final=True)
    # independently: arvc.audio.score's speaker_similarity (its own CPU encoder) on the same pairs, the mean
    pairs = zip(validator.originals(SCORE_PIECES), evaluation.waves, strict=False)
    values = [speaker_similarity(a.double().numpy(), sr, b.double().numpy(), sr) for a, b in pairs]
    assert all(math.isfinite(v) for v in values) and 0.3 < min(values) and max(values) < 0.999, values
    assert evaluation.scores["speaker_sim"] == pytest.approx(sum(values) / len(values), abs=1e-5)


@needs_resemblyzer
def test_a_conversion_identical_to_the_recording_scores_one_and_silence_nan(data_dir):
    validator = Validator(tiny(), data_dir, _held(data_dir))
    _converting(validator, lambda x: x)  # the generator "converts" perfectly
    evaluation = validator(final=True)
    assert evaluation.mel_l1 < 1e-3, "the conversion is the recording"
    assert evaluation.scores["speaker_sim"] == pytest.approx(1.0, abs=1e-6)
    _converting(validator, torch.zeros_like)  # nothing to measure: nan, not an error
    assert math.isnan(validator(final=True).scores["speaker_sim"])


@needs_resemblyzer
def test_the_encoder_loads_once_per_validator_on_its_device_outside_the_random_stream(data_dir, monkeypatch):
    loads = []
    real = load_voice_encoder

    def counted(device="cpu"):
        loads.append(str(device))
        return real(device)

    monkeypatch.setattr("arvc.train.validation.load_voice_encoder", counted)
    torch.manual_seed(0)
    validator = Validator(tiny(), data_dir, _held(data_dir))
    after = torch.rand(4)
    validator(final=True)
    validator(final=True)
    assert loads == ["cpu"], "one encoder per Validator, on the validation device"
    assert next(validator.encoder.parameters()).device == validator.device
    # building the encoder draws its LSTM's random initial weights, but not from the training run's stream:
    # the same seed gives the same next numbers with and without it (the Validator's own model draws in both)
    monkeypatch.setattr("arvc.train.validation.load_voice_encoder", lambda device="cpu": None)
    torch.manual_seed(0)
    Validator(tiny(), data_dir, _held(data_dir))
    assert torch.equal(after, torch.rand(4))


def test_without_resemblyzer_validation_says_so_once_and_scores_the_rest(data_dir, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # `import resemblyzer` fails, as where it is absent
    caplog.set_level(logging.INFO, logger="arvc")
    validator = Validator(tiny(), data_dir, _held(data_dir))
    said = [r.getMessage() for r in caplog.records if "held-out validation without" in r.getMessage()]
    assert len(said) == 1 and re.search(r"without .*speaker similarity: .*arvc\[score\]", said[0]), said
    assert validator.encoder is None and "speaker" not in validator.due(final=True)
    evaluation = validator(final=True)
    assert "speaker_sim" not in evaluation.scores and math.isfinite(evaluation.scores["mcd_db"])


def test_select_speaker_sim_without_resemblyzer_names_the_extra_before_any_work(
    three_recordings, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    runs = tmp_path / "runs"
    result = runner.invoke(
        app, ["train", str(three_recordings), "--runs-dir", str(runs), "--select", "speaker_sim"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "error: --select speaker_sim: speaker similarity needs the 'resemblyzer' package" in result.output
    assert "pip install 'arvc[score]'" in result.output and not runs.exists()


@needs_resemblyzer
def test_arvc_train_selects_by_speaker_similarity_and_keeps_it_on_resume(
    tmp_path, monkeypatch, speaking_generator
):
    from arvc.train import validation

    monkeypatch.setattr(validation, "SCORE_BUDGET", 0.0)  # only the first, the last and the selected
    generate_demo_voice(tmp_path / "voice", seconds=24, sr=16000, seed=3)  # 7 pieces: 2 held out
    runs, run = tmp_path / "runs", tmp_path / "runs" / "sim"
    args = ["--config", "tiny", "--batch-size", "2", "--select", "speaker_sim"]
    voice = str(tmp_path / "voice")
    first = runner.invoke(
        app, ["train", voice, "--runs-dir", str(runs), "--name", "sim", *args, "--epochs", "3"]
    )
    assert first.exit_code == 0, first.output
    rows = list(csv.DictReader((run / "validation.csv").open()))
    assert [bool(r["val_pesq_wb"]) for r in rows] == [True, False, True], "the first and the last"
    sims = [float(r["val_speaker_sim"]) for r in rows]  # the selected score: at every evaluation
    assert all(0 < s < 1 for s in sims) and len(set(sims)) == 3, sims
    best = max(range(3), key=lambda i: sims[i])
    assert [r["best"] == "yes" for r in rows][best], "higher is better"
    assert [r["best"] for r in rows].count("yes") == 1 + sum(sims[i] > max(sims[:i]) for i in (1, 2))
    # the end-of-run lines: the selected metric, and the last evaluation's scores
    printed = re.search(r"held-out speaker_sim: best ([\d.]+) at epoch (\d) \(export/best\)", first.output)
    assert (
        printed and int(printed[2]) == best + 1 and float(printed[1]) == pytest.approx(sims[best], abs=1e-4)
    )
    line = first.output.split("held-out at epoch 3:")[1].splitlines()[0]
    assert f"Speaker sim {sims[-1]:.3f}" in line, line
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    logged = events.Scalars("validation/speaker_sim")
    assert [e.step for e in logged] == [int(r["step"]) for r in rows]
    assert [e.value for e in logged] == pytest.approx(sims, abs=1e-5)
    # recorded in the run; a resume keeps it, and refuses another (the best so far was chosen by it)
    assert load_checkpoint(list_checkpoints(run)[-1])["config"]["train"]["select"] == "speaker_sim"
    changed = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "4", "--select", "mcd_db"])
    assert changed.exit_code == 1 and "train.select: 'speaker_sim' -> 'mcd_db'" in changed.output
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "4"])
    assert resumed.exit_code == 0, resumed.output
    rows = list(csv.DictReader((run / "validation.csv").open()))
    assert len(rows) == 4 and rows[3]["val_speaker_sim"], "still selected after the resume"
    assert "held-out speaker_sim: best" in resumed.output
