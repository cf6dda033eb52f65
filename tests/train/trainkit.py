"""What the end-to-end training tests share: the tiny config set up to train in seconds, and its options."""

import copy

import torch

from arvc.config import apply_overrides, load_config
from arvc.data.dataset import VoiceDataset, collate
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.model.checkpointing import set_checkpointing
from arvc.train.loop import TrainOptions
from arvc.train.step import GanStep


def tiny(batch_size: int = 4, **train):
    """The tiny config: 2 epochs, a checkpoint and a log row every step/epoch; `train` overrides train.*."""
    overrides = {
        "train.batch_size": batch_size,
        "train.epochs": 2,
        "train.save_every": 1,
        "train.log_interval": 1,
    }
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return apply_overrides(load_config("tiny"), overrides)


def models_and_batch(data_dir, batch_size: int, pieces: tuple[int, ...]):
    """Tiny (G, D) in train mode, seeded, and one collated batch of those training pieces."""
    cfg = tiny(batch_size=batch_size)
    torch.manual_seed(0)
    models = Synthesizer(cfg).train(), MultiPeriodDiscriminator(cfg).train()
    dataset = VoiceDataset(data_dir, cfg.data)
    return models, collate([dataset[i] for i in pieces])


def options(tmp_path, data_dir, name: str = "run", batch_size: int = 4, **kwargs) -> TrainOptions:
    """TrainOptions for a run under tmp_path/name (config: `tiny(batch_size)` unless given)."""
    kwargs.setdefault("config", tiny(batch_size))
    return TrainOptions(run_dir=tmp_path / name, data_dir=data_dir, **kwargs)


def gan_step(cfg, net_g, net_d, optim_g, optim_d, **kwargs) -> GanStep:
    """A GanStep of one process in fp32 (no loss scaling) on these models; `kwargs`: its other arguments
    (g_forward, d_forward, d_frozen, ranks)."""
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return GanStep(
        cfg=cfg, net_g=net_g, net_d=net_d, optim_g=optim_g, optim_d=optim_d, scaler=scaler, precision="fp32",
        **kwargs,
    )  # fmt: skip


def step_on(cfg, models, batch, checkpointing: bool = False):
    """One real GanStep (SGD, so the update is the gradient itself) as step 7 on copies of `models`
    (generator, discriminator); returns the gradients each optimizer stepped with ({"g": {name: grad},
    "d": ...}), the StepResult and the weights after the step."""
    net_g, net_d = (copy.deepcopy(m) for m in models)
    set_checkpointing(net_g, net_d, checkpointing)
    optim_g = torch.optim.SGD(net_g.parameters(), lr=0.01)
    optim_d = torch.optim.SGD(net_d.parameters(), lr=0.01)
    seen = {}
    for name, optimizer, net in (("g", optim_g, net_g), ("d", optim_d, net_d)):
        optimizer.register_step_pre_hook(
            lambda *_, name=name, net=net: seen.__setitem__(
                name, {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
            )
        )
    step = gan_step(cfg, net_g, net_d, optim_g, optim_d)
    result = step(batch, 7)
    return seen, result, {**net_g.state_dict(), **{f"d.{k}": v for k, v in net_d.state_dict().items()}}
