"""Held-out validation through `train()`: the split it records, the best export, early stop, samples."""

import csv
import importlib.util
import json
import logging
import math

import pytest
import soundfile
import torch
from trainkit import options, tiny

from arvc.compare import runner
from arvc.train import validation
from arvc.train.checkpoint import list_checkpoints, load_checkpoint
from arvc.train.logs import SCORE_FIELDS, VALIDATION_FIELDS, read_validation
from arvc.train.loop import SAMPLE_CLIPS, train
from arvc.train.validation import Evaluation, Validator, multi_resolution_stft_loss

HAVE_RESEMBLYZER = importlib.util.find_spec("resemblyzer") is not None


def _scripted(monkeypatch, values, scores=None):
    """Validator calls return `values` in turn (a synthetic held-out curve; `scores`, a list of score
    dicts, in turn too), waves from the real model."""
    real_call, calls = Validator.__call__, iter(values)
    scored = iter(scores) if scores is not None else None

    def call(self, params=None, keep=0, **kwargs):
        out = real_call(self, params, keep, **kwargs)
        fixed = next(scored) if scored is not None else out.scores
        return Evaluation(next(calls), 1.0, out.waves, out.mel_real, out.mel_fake, fixed, out.score_s)

    monkeypatch.setattr(Validator, "__call__", call)


def test_best_export_is_the_best_and_its_checkpoint_is_kept(tmp_path, data_dir, monkeypatch):
    _scripted(monkeypatch, [3.0, 1.0, 2.0, 2.5])  # best at epoch 2
    cfg = tiny(epochs=4, save_every=4, keep_last=1)
    result = train(options(tmp_path, data_dir, config=cfg))
    assert result.best["epoch"] == 2 and result.best["mel_l1"] == 1.0
    best = json.loads((tmp_path / "run" / "export" / "best" / "best.json").read_text())
    assert best["epoch"] == 2
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert best["checkpoint"] in names, "the best model's checkpoint is never pruned"
    path = tmp_path / "run" / "checkpoints" / best["checkpoint"]
    exported = torch.load(path, weights_only=True)["generator"]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "export" / "best" / "model.safetensors")
    key = "dec.conv_pre.bias"
    assert torch.equal(weights[key], exported[key].float()), "export/best holds the epoch-2 weights"
    rows = read_validation(tmp_path / "run")
    assert [float(r["val_mel_l1"]) for r in rows] == [3.0, 1.0, 2.0, 2.5]


def test_early_stop_on_a_plateau_saves_and_exports(tmp_path, data_dir, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="arvc")
    _scripted(monkeypatch, [2.0, 1.0, 1.0, 1.0, 0.9, 0.8])
    cfg = tiny(epochs=6, save_every=10, early_stop=2, min_delta=0.05)
    result = train(options(tmp_path, data_dir, config=cfg))
    assert result.stopped_by == "early_stop" and result.epochs_done == 4
    assert "stopping early after epoch 4" in caplog.text
    # two best exports and the final one; why there is no RVC .pth is said once, not at every improvement
    assert caplog.text.count("is not RVC-sized") == 1
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    assert load_checkpoint(result.last_checkpoint)["epoch"] == 4


def test_samples_split_and_resume(tmp_path, data_dir):
    result = train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert len(split["held"]) >= 2 and not set(split["held"]) & set(split["train"])
    originals = sorted((run / "samples" / "original").glob("*.wav"))
    converted = sorted((run / "samples" / "epoch_0001").glob("*.wav"))
    assert len(originals) == len(converted) == min(SAMPLE_CLIPS, len(split["held"]))
    for path in converted:  # as `arvc infer` gives them: without the generator's DC offset
        wave, _ = soundfile.read(path)
        assert abs(wave.mean()) < 0.01 * wave.std()
    # TensorBoard: the held-out mel figure shows the clip at full resolution (issue 15: it was 32x160 px)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    (image,) = events.Images("mel/heldout")
    data = tiny().data
    frames = min(400, min(soundfile.info(p).frames for p in originals) // data.hop_length)  # Validator's cap
    bands = data.n_mel_channels
    assert image.width >= frames and image.height >= 2 * bands, (image.width, image.height, frames)
    assert load_checkpoint(result.last_checkpoint)["validation"]["held"] == split["held"]
    # the held-out scores: the run's only evaluation is its last, which scores everything
    (row,) = read_validation(run)
    for field in SCORE_FIELDS:  # speaker similarity where resemblyzer (arvc[score], not in `dev`) is there
        assert (row[field] != "") == (field != "val_speaker_sim" or HAVE_RESEMBLYZER), field
    # nan where resemblyzer's voice activity detector finds no speech (an untrained generator's spikes)
    similarity = float(row["val_speaker_sim"] or "nan")
    assert math.isnan(similarity) or -1 <= similarity <= 1
    assert 0 <= float(row["val_vuv_error"]) <= 1 and float(row["val_mcd_db"]) > 0
    assert 1 <= float(row["val_pesq_wb"]) <= 4.7 and 0 <= float(row["val_stoi"]) <= 1
    assert result.last_validation["mcd_db"] == pytest.approx(float(row["val_mcd_db"]), rel=1e-5)
    tags = events.Tags()["scalars"]
    assert {"validation/mcd_db", "validation/vuv_error", "validation/pesq_wb", "validation/stoi"} <= set(tags)
    # a run logged before the scores existed: validation.csv with the old columns is resumed and kept
    old = ["epoch", "step", "val_mel_l1", "val_stft", "best"]
    with (run / "validation.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old, extrasaction="ignore")
        writer.writeheader()
        writer.writerow(row)
    resumed = train(options(tmp_path, data_dir, config=tiny(epochs=2), resume=run))
    assert load_checkpoint(resumed.last_checkpoint)["validation"]["held"] == split["held"]
    first, second = read_validation(run)
    assert first["val_mel_l1"] == row["val_mel_l1"] and first["val_mcd_db"] == "" and second["val_mcd_db"]
    assert (run / "validation.csv").read_text().splitlines()[0] == ",".join(VALIDATION_FIELDS)


def test_cheap_scores_every_time_expensive_ones_every_k_and_the_selected_one_always(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setattr(validation, "EXPENSIVE_EVERY", 2)
    monkeypatch.setattr(validation, "SCORE_BUDGET", math.inf)  # any cost fits: scored at every evaluation
    result = train(options(tmp_path, data_dir, config=tiny(epochs=3, save_every=3, select="stoi")))
    rows = read_validation(tmp_path / "run")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(r["val_f0_rmse_cents"] and r["val_mcd_db"] and float(r["score_s"]) > 0 for r in rows)
    assert [bool(r["val_pesq_wb"]) for r in rows] == [True, False, True], "every 2nd and the last"
    assert all(r["val_stoi"] for r in rows), "the selected metric is scored at every evaluation"
    best = max(rows, key=lambda r: float(r["val_stoi"]))
    assert result.best["epoch"] == int(best["epoch"]) and best["best"] == "yes"
    saved = load_checkpoint(result.last_checkpoint)
    assert saved["config"]["train"]["select"] == "stoi", "recorded in the run (and compared on resume)"


def test_scores_stay_within_their_time_budget_but_the_first_last_and_selected_are_always_scored(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setattr(validation, "SCORE_BUDGET", 0.0)  # no training time pays for a second scoring
    train(options(tmp_path, data_dir, config=tiny(epochs=3, save_every=3, select="mcd_db")))
    rows = read_validation(tmp_path / "run")
    assert [bool(r["val_f0_rmse_cents"]) for r in rows] == [True, False, True], "the first and the last"
    assert [bool(r["val_pesq_wb"]) for r in rows] == [True, False, True]
    assert all(r["val_mcd_db"] for r in rows), "the selected score, whatever it costs"
    assert rows[1]["score_s"] and float(rows[1]["score_s"]) > 0


def test_select_chooses_the_best_model_by_its_metric_and_direction(tmp_path, data_dir, monkeypatch):
    # mel L1 would choose epoch 1; F0 correlation (higher is better) chooses epoch 2
    _scripted(monkeypatch, [1.0, 2.0, 3.0], [{"f0_corr": 0.2}, {"f0_corr": 0.9}, {"f0_corr": math.nan}])
    result = train(options(tmp_path, data_dir, config=tiny(epochs=3, save_every=3, select="f0_corr")))
    assert result.best["epoch"] == 2 and result.best["f0_corr"] == 0.9
    best = json.loads((tmp_path / "run" / "export" / "best" / "best.json").read_text())
    assert best["epoch"] == 2 and best["checkpoint"] in [p.name for p in list_checkpoints(tmp_path / "run")]
    assert [r["best"] for r in read_validation(tmp_path / "run")] == ["yes", "yes", "no"]


def test_train_and_compare_share_the_evaluator():
    assert runner.Validator is validation.Validator


def test_stft_loss_is_zero_for_equal_waves_and_positive_otherwise():
    wave = torch.randn(8000)
    assert multi_resolution_stft_loss(wave, wave) == 0.0
    assert multi_resolution_stft_loss(wave * 0.5, wave) > 0.1
