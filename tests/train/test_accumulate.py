"""Gradient accumulation: N micro-batches per optimizer step give the update of one batch of N x B items.

The comparison is fair without touching any RNG: every random draw of a training step (segment window,
posterior sample, NSF phases and noise) is keyed per item by (seed, step, dataset index) (arvc.model.noise),
so item k gets the same numbers in a batch of 4 as in the second micro-batch of 2. What differs is only
float32 summation order (a mean over 4 rows vs two means over 2) and each micro-batch's own padding.
"""

import contextlib
import csv

import pytest
import torch
from trainkit import gan_step, options, step_on, tiny
from typer.testing import CliRunner

from arvc.cli import app
from arvc.data.dataset import VoiceDataset, collate
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from arvc.train.loop import TrainError, train

# Per tensor: |accumulated - whole| <= RTOL * |whole| + ATOL * max|whole over the model|. float32 sums in
# another order differ by ~1e-7 relative; padding, the mean of means and G's phase through a D that took
# a (slightly different) step add a little. Measured: at most 1.7e-6 (G), 7.6e-7 (D) of the largest
# gradient, so ATOL has a 6x margin.
RTOL, ATOL = 1e-4, 1e-5


def _assert_close(accumulated: dict, whole: dict, what: str) -> None:
    scale = max(v.abs().max().item() for v in whole.values())
    assert accumulated.keys() == whole.keys()
    for key, value in whole.items():
        torch.testing.assert_close(accumulated[key], value, rtol=RTOL, atol=ATOL * scale, msg=f"{what} {key}")


def test_accumulate_2_of_batch_2_is_the_update_of_batch_4(data_dir):
    whole_cfg, accumulated_cfg = tiny(batch_size=4), tiny(batch_size=2, accumulate=2)
    torch.manual_seed(0)
    models = Synthesizer(whole_cfg).train(), MultiPeriodDiscriminator(whole_cfg).train()
    dataset = VoiceDataset(data_dir, whole_cfg.data)
    batch = collate([dataset[i] for i in (3, 0, 5, 1)])  # pieces of different lengths: padding differs

    torch.manual_seed(1)
    grads_whole, whole, weights_whole = step_on(whole_cfg, models, batch)
    torch.manual_seed(1)
    grads_accumulated, accumulated, weights_accumulated = step_on(accumulated_cfg, models, batch)

    _assert_close(grads_accumulated["d"], grads_whole["d"], "D gradient")
    _assert_close(grads_accumulated["g"], grads_whole["g"], "G gradient")
    _assert_close(weights_accumulated, weights_whole, "weight")
    for name, value in whole.losses.items():  # the logged losses: the mean over the micro-batches
        assert accumulated.losses[name] == pytest.approx(value, rel=RTOL, abs=1e-6), name
    assert accumulated.grad_norm_g == pytest.approx(whole.grad_norm_g, rel=RTOL)
    assert accumulated.grad_norm_d == pytest.approx(whole.grad_norm_d, rel=RTOL)
    assert torch.equal(accumulated.mel_real, whole.mel_real), "the image shows the batch's first item"


def test_micro_batches_are_padded_to_their_own_longest_item(data_dir):
    cfg = tiny()
    dataset = VoiceDataset(data_dir, cfg.data)
    batch = collate([dataset[i] for i in range(4)])
    first, second = batch.split(2)
    assert first.index.tolist() + second.index.tolist() == batch.index.tolist()
    assert second.spec.shape[-1] == int(second.spec_lengths.max()) <= batch.spec.shape[-1]
    assert second.wave.shape[-1] == int(second.wave_lengths.max())
    with pytest.raises(ValueError, match="cannot be split into 3 equal micro-batches"):
        batch.split(3)


def test_resume_with_accumulation_is_bit_identical_and_counts_optimizer_steps(tmp_path, data_dir):
    """Stopped mid-epoch after one optimizer step (checkpoints only exist between steps) and resumed:
    exactly the uninterrupted run, over an epoch boundary."""
    cfg = tiny(batch_size=2, accumulate=2, val_fraction=0.0)
    straight = train(options(tmp_path, data_dir, "straight", config=cfg, max_steps=3))
    pieces = sum(1 for _ in (data_dir / "filelist.txt").open())
    checkpoint = load_checkpoint(straight.last_checkpoint)
    assert checkpoint["config"]["train"]["accumulate"] == 2, "recorded in the run's config"
    assert (checkpoint["epoch"], checkpoint["batch_in_epoch"]) == (1, 1), "a step is 2 x 2 pieces"
    assert pieces // 4 == 2

    stopped = train(options(tmp_path, data_dir, "split", config=cfg, max_steps=1))
    assert stopped.steps_done == 1, "--max-steps counts optimizer steps"
    assert load_checkpoint(stopped.last_checkpoint)["batch_in_epoch"] == 1, "saved mid-epoch"
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = train(options(tmp_path, data_dir, "split", config=cfg, resume=tmp_path / "split", max_steps=3))
    assert resumed.steps_done == straight.steps_done == 3
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "split"))
    for net in ("generator", "discriminator"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    with (tmp_path / "split" / "metrics.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [1, 2, 3], "one metrics row per optimizer step"


def test_resume_refuses_another_accumulate_and_says_why(tmp_path, data_dir):
    cfg = tiny(batch_size=2, accumulate=2, val_fraction=0.0)
    train(options(tmp_path, data_dir, config=cfg, max_steps=1))
    again = tiny(batch_size=2, val_fraction=0.0)
    with pytest.raises(CheckpointError, match="train.accumulate: 2 -> 1") as error:
        train(options(tmp_path, data_dir, config=again, resume=tmp_path / "run"))
    assert "part of the effective batch" in str(error.value)


def test_a_step_batch_larger_than_the_dataset_is_refused_before_any_work(tmp_path, data_dir):
    pieces = sum(1 for _ in (data_dir / "filelist.txt").open())
    with pytest.raises(TrainError, match=r"batch size 4 x accumulate 64 = 256 items per step is more than"):
        train(options(tmp_path, data_dir, config=tiny(batch_size=4, accumulate=64, val_fraction=0.0)))
    assert pieces < 256
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_bad_accumulate_or_checkpointing(tmp_path):
    runner = CliRunner()
    zero = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "--accumulate", "0"])
    assert zero.exit_code == 2 and "--accumulate" in zero.output
    bad = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "--checkpointing", "maybe"])
    assert bad.exit_code == 1 and "--checkpointing 'maybe': use one of auto, on, off" in bad.output
    assert not list(tmp_path.iterdir())


class _Counting(torch.nn.Module):
    """Stands in for DistributedDataParallel: forwards to the model, counts `no_sync` uses."""

    def __init__(self, module):
        super().__init__()
        self.module, self.unsynced = module, 0

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced += 1
        yield


def test_under_ddp_only_the_last_micro_batch_all_reduces(data_dir):
    cfg = tiny(batch_size=2, accumulate=3)
    torch.manual_seed(0)
    net_g, net_d = Synthesizer(cfg).train(), MultiPeriodDiscriminator(cfg).train()
    dataset = VoiceDataset(data_dir, cfg.data)
    batch = collate([dataset[i] for i in range(6)])
    g, d = _Counting(net_g), _Counting(net_d)
    optim_g, optim_d = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (net_g, net_d))
    gan_step(cfg, net_g, net_d, optim_g, optim_d, g_forward=g, d_forward=d, d_frozen=net_d)(batch, 1)
    assert (g.unsynced, d.unsynced) == (2, 2), "3 micro-batches: the first 2 without an all-reduce"
