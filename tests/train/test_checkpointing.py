"""Activation checkpointing: the same gradients bit for bit, less memory kept, and how a step is fitted
(`memory.plan_memory`: checkpointing `auto`, and `--batch-size auto` preferring accumulation and
checkpointing over a batch that spills), with the free memory monkeypatched."""

import contextlib
import logging

import pytest
import torch
import trainkit
from trainkit import options, step_on, tiny

from arvc.data.dataset import VoiceDataset
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.model.checkpointing import checkpointed_blocks, set_checkpointing
from arvc.model.noise import per_item_noise
from arvc.train import loop
from arvc.train.checkpoint import load_checkpoint
from arvc.train.loop import train
from arvc.train.memory import GIB, Activations, _saved_bytes, plan_memory, probe_activations

MIB = 1 << 20


@pytest.fixture(scope="module")
def models_and_batch(data_dir):
    return trainkit.models_and_batch(data_dir, batch_size=4, pieces=(3, 0, 5, 1))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_checkpointed_gradients_are_bit_identical_through_the_step(models_and_batch, accumulate):
    models, batch = models_and_batch
    cfg = tiny(batch_size=4 // accumulate, accumulate=accumulate)
    runs = {}
    for on in (False, True):
        torch.manual_seed(1)
        runs[on] = step_on(cfg, models, batch, checkpointing=on)
    grads_off, result_off, weights_off = runs[False]
    grads_on, result_on, weights_on = runs[True]
    for net in ("g", "d"):
        assert grads_on[net].keys() == grads_off[net].keys()
        for key, grad in grads_off[net].items():
            assert torch.equal(grads_on[net][key], grad), f"{net} {key}"
    assert all(torch.equal(weights_on[k], weights_off[k]) for k in weights_off)
    assert result_on.losses == result_off.losses


def test_checkpointing_runs_the_blocks_again_in_backward(models_and_batch):
    """The switch really checkpoints: each block runs twice per backward it is part of."""
    models, batch = models_and_batch
    cfg = tiny(batch_size=4)
    calls = {False: 0, True: 0}
    for on in (False, True):

        def count(*_, on=on) -> None:
            calls[on] += 1

        # (a pre-hook: a recompute stops as soon as it has what backward needs, before forward hooks run)
        hooks = [b.register_forward_pre_hook(count) for b in checkpointed_blocks(*models)]  # copied with them
        try:
            step_on(cfg, models, batch, checkpointing=on)
        finally:
            for hook in hooks:
                hook.remove()
    # Off: G's 12 resblocks once, D's 9 sub-discriminators in D's phase and twice in G's (real, fake).
    # On: the blocks run again as backward reaches them: the 12 resblocks, D's 9 in D's phase and the 9 on
    # the fake in G's phase (the real half ran without a graph).
    assert calls == {False: 39, True: 39 + 12 + 9 + 9}, calls


def test_the_estimate_with_checkpointing_is_smaller_and_covers_what_is_kept():
    cfg = tiny()
    torch.manual_seed(0)
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    probe = probe_activations(cfg, net_g, net_d, 300, contextlib.nullcontext)
    assert probe.checkpointed < 0.7 * probe.plain, probe

    # What autograd keeps outside the checkpointed blocks while they are switched on (their own saved
    # tensors go to the checkpoint instead): within the estimate, which adds their inputs and one block.
    set_checkpointing(net_g, net_d, True)
    params = {p.untyped_storage().data_ptr() for m in (net_g, net_d) for p in m.parameters()}
    frames, d = 300, cfg.data

    def step():
        args = (torch.randn(1, frames, d.feature_dim), torch.tensor([frames]),
                torch.randint(1, 255, (1, frames)), torch.full((1, frames), 200.0),
                torch.randn(1, d.filter_length // 2 + 1, frames).abs(), torch.tensor([frames]),
                torch.zeros(1, dtype=torch.long))  # fmt: skip
        with per_item_noise(1, 1, [0]):
            y_hat, *_ = net_g(*args)
        net_d(torch.randn_like(y_hat), y_hat)

    kept = _saved_bytes(step, params)
    assert kept <= probe.checkpointed < probe.plain
    assert net_d.checkpointing and net_g.dec.checkpointing, "the probe leaves the switch as it was"


ACT = Activations(plain=100 * MIB, checkpointed=40 * MIB)
FIXED = 100 * MIB


def _plan(free_mib, batch=None, accumulate=1, mode="auto", target=8, limit=64):
    return plan_memory(FIXED, ACT, free_mib * MIB, "free GPU memory", batch=batch, accumulate=accumulate,
                       mode=mode, target=target, limit=limit)  # fmt: skip


@pytest.mark.parametrize(
    "free, kwargs, expected",
    [
        # room = 0.8 * free - 100 MiB. 2000 MiB: 1500 MiB of room, 15 items plain: as before, no change.
        (2000, {}, (15, 1, False)),
        # 1000 MiB: 700 of room: 7 plain < 8, 17 checkpointed: checkpointing on, batch 17.
        (1000, {}, (17, 1, True)),
        # 500 MiB: 300 of room: 3 plain, 7 checkpointed < 8: checkpointing + 2 x 4 accumulated.
        (500, {}, (4, 2, True)),
        # 250 MiB: 100 of room: 1 plain, 2 checkpointed: 4 x 2.
        (250, {}, (2, 4, True)),
        (250, {"mode": "off"}, (1, 8, False)),  # checkpointing refused: accumulation alone
        # Fewer training pieces than the target (limit 5, 7): 3 x 2 and 4 x 2 items per step were more than
        # the dataset has, and the run was refused. The most items up to the limit, in equal micro-batches.
        (250, {"limit": 5}, (1, 5, True)),
        (250, {"limit": 7}, (1, 7, True)),
        (250, {"limit": 6}, (2, 3, True)),
        (500, {"limit": 5}, (5, 1, True)),  # 7 fit checkpointed: the whole dataset in one batch
        (2000, {"mode": "on"}, (37, 1, True)),
        # The accumulation asked for is kept (target: batch 8 x 4): the micro-batch is fitted.
        (500, {"accumulate": 4, "target": 32}, (7, 4, True)),
        (150, {}, (0, 1, False)),  # 20 MiB of room: not even one item, checkpointed or not
        # A batch asked for is kept; auto checkpointing only where it does not fit otherwise.
        (2000, {"batch": 8}, (8, 1, False)),
        (1000, {"batch": 8}, (8, 1, True)),
        (1000, {"batch": 8, "mode": "off"}, (8, 1, False)),
    ],
)
def test_plan_prefers_checkpointing_and_accumulation_over_a_batch_that_spills(free, kwargs, expected):
    plan = _plan(free, **kwargs)
    assert (plan.batch_size, plan.accumulate, plan.checkpointing) == expected, plan.reason


@pytest.mark.parametrize("free", [250, 300, 500])
def test_an_auto_plan_never_asks_for_more_items_per_step_than_the_dataset_has(free):
    for limit in range(1, 20):
        for target in range(1, 20):
            plan = _plan(free, target=target, limit=limit)
            assert 1 <= plan.batch_size * plan.accumulate <= limit, (limit, target, plan)


def test_plan_says_why():
    assert "without it at most 3 fit" in _plan(500).reason
    assert "2 micro-batches of 4 are accumulated per step: the update of a batch of 8" in _plan(500).reason
    assert (
        "batch 8 needs about 0.88 GiB, more than 80% of the 0.98 GiB free GPU memory"
        in _plan(1000, batch=8).reason
    )
    assert GIB == 1 << 30


def _budget(monkeypatch, data_dir, per_item_plain_items: float):
    """Monkeypatch the free RAM so that a step fits `per_item_plain_items` items without checkpointing."""
    cfg = tiny()
    torch.manual_seed(0)
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    frames = max(VoiceDataset(data_dir, cfg.data).lengths)
    probe = probe_activations(cfg, net_g, net_d, frames, contextlib.nullcontext)
    fixed = 3 * sum(p.numel() * 4 for m in (net_g, net_d) for p in m.parameters())  # + AdamW's 8 B/param
    free = int((fixed + probe.plain * per_item_plain_items) / 0.8)
    monkeypatch.setattr(loop, "free_memory", lambda device: (free, "available RAM"))
    return probe


def test_auto_batch_on_a_small_budget_accumulates_and_checkpoints_and_records_it(
    tmp_path, data_dir, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="arvc")
    probe = _budget(monkeypatch, data_dir, 1.5)  # 1 item fits as it is; checkpointed about 2-3
    assert probe.checkpointed * 2 < probe.plain * 1.5
    cfg = tiny(batch_size=4, val_fraction=0.0)
    result = train(options(tmp_path, data_dir, config=cfg, max_steps=1, auto_batch_size=True))
    saved = load_checkpoint(result.last_checkpoint)["config"]["train"]
    assert saved["checkpointing"] == "on"
    assert saved["batch_size"] * saved["accumulate"] == 4 and saved["accumulate"] > 1, saved
    assert f"batch size {saved['batch_size']}, accumulate {saved['accumulate']} (auto:" in caplog.text
    assert "activation checkpointing on, since without it at most 1 fit" in caplog.text
    assert "checkpointed" in caplog.text and "likely does not fit" not in caplog.text


def test_checkpointing_auto_turns_on_for_a_batch_that_does_not_fit_and_resume_may_change_it(
    tmp_path, data_dir, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="arvc")
    _budget(monkeypatch, data_dir, 1.5)
    cfg = tiny(batch_size=2, val_fraction=0.0)
    first = train(options(tmp_path, data_dir, config=cfg, max_steps=1))
    assert load_checkpoint(first.last_checkpoint)["config"]["train"]["checkpointing"] == "on"
    assert "activation checkpointing on (auto): batch 2 needs about" in caplog.text

    # Checkpointing does not change the numbers: a resume may switch it (here off, as asked).
    off = tiny(batch_size=2, val_fraction=0.0, checkpointing="off")
    resumed = train(options(tmp_path, data_dir, config=off, max_steps=2, resume=tmp_path / "run"))
    assert load_checkpoint(resumed.last_checkpoint)["config"]["train"]["checkpointing"] == "off"
