"""`train(options, callbacks)`: the events a caller follows a run by, all declared in `Callbacks`."""

import pytest
import torch
from trainkit import options, tiny

from arvc.train.callbacks import Callbacks
from arvc.train.loop import train
from arvc.train.step import GanStep


def test_a_caller_overrides_only_the_events_it_needs_and_gets_the_optimizers_before_the_first_step(
    tmp_path, data_dir
):
    events = []

    class Timing(Callbacks):  # what compare's recorder does: hooks on the optimizers, then the steps
        def on_optimizers(self, optim_g, optim_d):
            events.append(("optimizers", type(optim_g).__name__, type(optim_d).__name__))

        def on_step(self, epoch, step, losses, lr):
            events.append(("step", step))

    train(options(tmp_path, data_dir, max_steps=2), Timing())
    assert events == [("optimizers", "AdamW", "AdamW"), ("step", 1), ("step", 2)]


def test_every_event_does_nothing_by_default():
    callbacks = Callbacks()
    assert callbacks.on_optimizers(None, None) is None and callbacks.on_start(2, 3, 1) is None
    assert callbacks.on_step(1, 1, {}, 1e-3) is None and callbacks.on_epoch(1, {}) is None


def test_the_gan_step_takes_its_eleven_arguments_by_keyword_only():
    cfg, net = tiny(), torch.nn.Linear(1, 1)
    optimizer, scaler = torch.optim.SGD(net.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(TypeError, match="positional"):
        GanStep(cfg, net, net, net, net, optimizer, optimizer, scaler, "fp32")
    step = GanStep(cfg=cfg, net_g=net, net_d=net, optim_g=optimizer, optim_d=optimizer, scaler=scaler,
                   precision="fp32")  # fmt: skip
    assert step.g_forward is net and step.d_forward is net and step.d_frozen is net  # the models themselves
