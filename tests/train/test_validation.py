"""Held-out validation through `train()`: the split it records, the best export, early stop, samples."""

import json
import logging

import soundfile
import torch
from trainkit import options, tiny

from arvc.compare import runner
from arvc.train import validation
from arvc.train.checkpoint import list_checkpoints, load_checkpoint
from arvc.train.logs import read_validation
from arvc.train.loop import SAMPLE_CLIPS, train
from arvc.train.validation import Evaluation, Validator, multi_resolution_stft_loss


def _scripted(monkeypatch, values):
    """Validator calls return `values` in turn (a synthetic held-out curve), waves from the real model."""
    real_call, calls = Validator.__call__, iter(values)

    def call(self, params=None, keep=0):
        out = real_call(self, params, keep)
        return Evaluation(next(calls), 1.0, out.waves, out.mel_real, out.mel_fake)

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
    resumed = train(options(tmp_path, data_dir, config=tiny(epochs=2), resume=run))
    assert load_checkpoint(resumed.last_checkpoint)["validation"]["held"] == split["held"]
    assert len(read_validation(run)) == 2


def test_train_and_compare_share_the_evaluator():
    assert runner.Validator is validation.Validator


def test_stft_loss_is_zero_for_equal_waves_and_positive_otherwise():
    wave = torch.randn(8000)
    assert multi_resolution_stft_loss(wave, wave) == 0.0
    assert multi_resolution_stft_loss(wave * 0.5, wave) > 0.1
