"""The weights a run evaluates and exports (issue #33): a schedule-free optimizer's x, an --ema run's EMA.

Checked through `train` and the files it writes: what a checkpoint holds (the live weights and the
optimizer state, so a resume is bit-exact; the averaged weights beside them), what validation scores and
what the exports hold, which weights the listening samples and the best model are. (That arvc's
AdamWScheduleFree is the `schedulefree` reference's update: tests/optim/test_schedulefree.py.)
"""

import copy
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from trainkit import options, tiny

from arvc.config import load_config
from arvc.data.outputs import RunFolder
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.optim import build_optimizer
from arvc.optim.registry import has_weight_modes
from arvc.train.checkpoint import latest_checkpoint, load_checkpoint
from arvc.train.loop import SAMPLE_CLIPS, TrainError, listening_waves, train
from arvc.train.memory import estimate_memory
from arvc.train.optimizers import (
    Hyperparameters,
    build_from_hyperparameters,
    plan_schedule,
    run_state_bytes_per_param,
)
from arvc.train.validation import Validator
from arvc.train.weights import WeightAverage, evaluation_weights

SF = "AdamWScheduleFree"


def _final(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))


def _same(a: dict, b: dict) -> bool:
    """Nested state dicts (tensors, numbers, lists) equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _straight_and_resumed(tmp_path, data_dir, **kwargs):
    """(a run of 2 epochs, the same run as 1 epoch + a resume to 2), their final checkpoints."""
    config = kwargs.pop("config", tiny())
    straight = train(options(tmp_path, data_dir, "straight", config=config, **kwargs))
    one = apply_epochs(config, 1)
    train(options(tmp_path, data_dir, "split", config=one, **kwargs))
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = train(options(tmp_path, data_dir, "split", config=config, resume=tmp_path / "split"))
    assert resumed.steps_done == straight.steps_done
    return _final(tmp_path / "straight"), _final(tmp_path / "split")


def apply_epochs(cfg, epochs):
    from arvc.config import apply_overrides

    return apply_overrides(cfg, {"train.epochs": epochs})


def _check_resume_is_bit_exact(a, b):
    for key in ("generator", "discriminator", "optim_g", "optim_d", "averaged", "schedule", "validation"):
        assert _same(a[key], b[key]), f"{key} differs after a resume"


def _evaluation_of(checkpoint, data_dir, weights):
    """The run's validator's evaluation of `weights` (a generator state dict; the keys it lacks, as an
    export lacks the training-only posterior encoder, from the checkpoint's generator)."""
    cfg = tiny()
    net = Synthesizer(cfg)
    net.load_state_dict({**checkpoint["generator"], **weights})
    validator = Validator(cfg, data_dir, checkpoint["validation"]["held"], cfg.train.seed, "cpu")
    return validator, validator(net.parameters(), keep=SAMPLE_CLIPS)


def _validation_of(checkpoint, data_dir, weights):
    """Held-out mel L1 of `weights` as the run's validator scores it."""
    return _evaluation_of(checkpoint, data_dir, weights)[1].mel_l1


def _check_samples_and_best_model(run, checkpoint, data_dir, averaged):
    """The last epoch's listening samples are `averaged`'s conversions (not the live weights'); the best
    model export holds the weights that scored the best held-out value best.json records."""
    epoch = checkpoint["epoch"]
    folder = RunFolder(run).epoch_samples(epoch)
    rate = tiny().data.sampling_rate
    for weights, same in ((averaged, True), (checkpoint["generator"], False)):
        validator, evaluation = _evaluation_of(checkpoint, data_dir, weights)
        waves = listening_waves(evaluation.waves, rate)
        for name, expected in zip(validator.names[:SAMPLE_CLIPS], waves, strict=True):
            written, _ = sf.read(folder / f"{name}.wav", dtype="float32")
            # the same conversion of the same weights: equal up to float32 rounding (FMA-sized)
            assert np.allclose(written, expected.numpy(), rtol=0, atol=1e-6) is same, (name, same)
    best = json.loads((run / "export" / "best" / "best.json").read_text())
    exported = load_file(run / "export" / "best" / "model.safetensors")
    assert _validation_of(checkpoint, data_dir, exported) == pytest.approx(best["mel_l1"], rel=1e-6)
    if best["epoch"] == epoch:
        assert all(torch.equal(t, averaged[k]) for k, t in exported.items())


def test_a_schedule_free_run_evaluates_and_exports_x_and_resumes_bit_exact(tmp_path, data_dir):
    a, b = _straight_and_resumed(tmp_path, data_dir, optimizer=SF)
    _check_resume_is_bit_exact(a, b)
    assert a["schedule"]["name"] == "constant", "auto pairs a schedule-free optimizer with constant"
    assert all(group["train_mode"] for group in a["optim_g"]["state"]["param_groups"]), "saved at y"

    # The checkpoint's averaged weights are the optimizer's own x: built from the registry, its state
    # loaded, eval() turns the live y into them.
    net = Synthesizer(tiny())
    net.load_state_dict(a["generator"])
    optimizer = build_from_hyperparameters(net.parameters(), Hyperparameters.saved(a["optim_g"]))
    assert has_weight_modes(optimizer)
    optimizer.load_state_dict(a["optim_g"]["state"])
    optimizer.eval()
    x = a["averaged"]["generator"]
    assert a["averaged"]["kind"] == "schedule-free"
    assert all(torch.equal(net.state_dict()[k], x[k]) for k in x)
    assert not all(torch.equal(a["generator"][k], x[k]) for k in x), "x is not y"

    # The export, the best model and validation are x.
    run = tmp_path / "straight"
    exported = load_file(run / "export" / "model.safetensors")
    assert all(torch.equal(exported[k], x[k]) for k in exported)
    assert a["validation"]["last"]["mel_l1"] == pytest.approx(_validation_of(a, data_dir, x), rel=1e-6)
    _check_samples_and_best_model(run, a, data_dir, x)


def test_an_ema_run_evaluates_and_exports_the_ema_and_resumes_bit_exact(tmp_path, data_dir):
    a, b = _straight_and_resumed(tmp_path, data_dir, config=tiny(ema=0.9))
    _check_resume_is_bit_exact(a, b)
    averaged = a["averaged"]
    assert averaged["kind"] == "ema" and averaged["decay"] == 0.9 and averaged["updates"] == a["step"]
    ema = averaged["generator"]
    assert all(t.dtype == torch.float32 for t in ema.values())
    assert not all(torch.equal(a["generator"][k], ema[k]) for k in ema), "the EMA is not the live weights"
    run = tmp_path / "straight"
    assert json.loads((run / "config.json").read_text())["train"]["ema"] == 0.9, "recorded in the config"
    exported = load_file(run / "export" / "model.safetensors")
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    assert a["validation"]["last"]["mel_l1"] == pytest.approx(_validation_of(a, data_dir, ema), rel=1e-6)
    _check_samples_and_best_model(run, a, data_dir, ema)


def test_the_ema_is_torchs_averaged_model():
    """WeightAverage gives AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(decay))'s weights, bit for
    bit, on G's weight-normed parameters (weight_g, weight_v) too."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    net = Synthesizer(load_config("tiny"))
    reference = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    average = WeightAverage(net, 0.9)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        reference.update_parameters(net)
        average.update(net)
    assert average.updates == 3
    assert all(torch.equal(r, w) for r, w in zip(reference.module.parameters(), average.weights, strict=True))
    assert any("weight_g" in name for name in average.names)


@pytest.mark.parametrize("averaging", ["schedule-free", "ema"])
def test_evaluating_puts_the_live_weights_back_bit_for_bit(averaging):
    """Inside `evaluation_weights` G holds x (or the EMA); after it, exactly the weights it trains on
    (recomputing y from x would round differently)."""
    net = MultiPeriodDiscriminator(load_config("tiny"))  # (any module: a small one)
    optimizer = build_optimizer(SF, net.parameters(), lr=0.1, betas=(0.8, 0.99))
    optimizer.train()
    average = WeightAverage(net, 0.5) if averaging == "ema" else None
    for _ in range(3):
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        if average is not None:
            average.update(net)
    live = copy.deepcopy(net.state_dict())
    if average is None:
        expected = copy.deepcopy(net)
        twin = build_optimizer(SF, expected.parameters(), lr=0.1, betas=(0.8, 0.99))
        twin.load_state_dict(optimizer.state_dict())
        twin.eval()
        wanted = list(expected.parameters())
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)  # (no weight modes: the EMA is evaluated)
        wanted = average.weights
    with evaluation_weights(net, optimizer, average):
        assert all(torch.equal(p, w) for p, w in zip(net.parameters(), wanted, strict=True))
    assert _same(net.state_dict(), live)
    if average is None:
        assert all(group["train_mode"] for group in optimizer.param_groups)


def test_the_memory_estimate_counts_the_ema_and_schedule_free_state():
    cfg = load_config("tiny")
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    g_params = sum(p.numel() for p in net_g.parameters())
    plain = estimate_memory(net_g, net_d, 8.0, 0, 1)
    with_ema = estimate_memory(net_g, net_d, 8.0, 0, 1, ema=True)
    assert with_ema.ema == 4 * g_params and with_ema.total == plain.total + 4 * g_params
    assert "EMA weights" in with_ema.describe() and "EMA" not in plain.describe()
    hp = Hyperparameters(optimizer=SF, lr=1e-3, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.01)
    state = run_state_bytes_per_param(hp, torch.float32)
    assert state == pytest.approx(8.0, abs=0.01), "z and the second moment, fp32 each"


def test_another_scheduler_with_a_schedule_free_optimizer_warns_once(caplog):
    hp = Hyperparameters(optimizer=SF, lr=1e-3, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.01)
    with caplog.at_level(logging.WARNING):
        assert plan_schedule(tiny(), hp, None).name == "constant"
        assert not caplog.records
        assert plan_schedule(tiny(scheduler="cosine"), hp, None).name == "cosine"
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "train.scheduler cosine with the schedule-free AdamWScheduleFree" in line and "constant" in line


def test_averaging_twice_is_refused_before_any_work(tmp_path, data_dir):
    """(--zero with a schedule-free optimizer trains: tests/train/test_distributed.py.)"""
    with pytest.raises(TrainError, match="--ema 0.999 with AdamWScheduleFree"):
        train(options(tmp_path, data_dir, optimizer=SF, config=tiny(ema=0.999)))
    assert not (tmp_path / "run").exists()
