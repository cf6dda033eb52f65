"""The training step (`GanStep`): one call is one D update then one G update through the updated,
frozen D; what it returns; gradient clipping; a non-finite loss skipping that update. And its gradient-norm
helper: measured without touching the gradients, clipped when asked."""

import copy
import math

import pytest
import torch
import trainkit
from trainkit import gan_step, tiny

import arvc.train.step as step_module
from arvc.train.step import _grad_norm


def _module_with_grads():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    module(torch.randn(4, 8)).sum().backward()
    return module


def test_grad_norm_without_a_clip_measures_and_leaves_the_gradients_alone():
    module = _module_with_grads()
    before = [p.grad.clone() for p in module.parameters()]
    expected = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in before])).item()
    assert abs(_grad_norm(module, None) - expected) <= 1e-6 * expected
    assert all(torch.equal(p.grad, g) for p, g in zip(module.parameters(), before, strict=True))


def test_grad_norm_with_a_clip_returns_the_norm_before_clipping_and_clips():
    module = _module_with_grads()
    total = _grad_norm(module, None)
    assert abs(_grad_norm(module, total / 2) - total) <= 1e-6 * total
    assert abs(_grad_norm(module, None) - total / 2) <= 1e-5 * total


# GanStep's own contract, on the tiny models and two real pieces (SGD: an update is the gradient itself).


@pytest.fixture(scope="module")
def models_and_batch(data_dir):
    return trainkit.models_and_batch(data_dir, batch_size=2, pieces=(3, 0))


def _gan_step(cfg, models, optimizer=torch.optim.SGD):
    """A GanStep on copies of `models` (fp32, one process), and its (net_g, net_d, optim_g, optim_d)."""
    net_g, net_d = (copy.deepcopy(m) for m in models)
    optim_g, optim_d = (optimizer(m.parameters(), lr=0.01) for m in (net_g, net_d))
    step = gan_step(cfg, net_g, net_d, optim_g, optim_d)
    return step, (net_g, net_d, optim_g, optim_d)


def _params(module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters()}


def _grads(module) -> dict[str, torch.Tensor | None]:
    return {k: None if p.grad is None else p.grad.clone() for k, p in module.named_parameters()}


def _norm(grads: dict) -> float:
    """The total norm, in float64 (one float32 norm over ~1e6 values is off by ~1e-4 relative)."""
    flat = torch.cat([g.double().reshape(-1) for g in grads.values() if g is not None])
    return torch.linalg.vector_norm(flat).item()


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _record(net_g, net_d, optim_g, optim_d) -> list[tuple]:
    """Events of one call, in order: each D forward (with D's parameters then and whether they took a
    gradient) and each optimizer step (with both models' parameters and gradients then)."""
    events = []
    net_d.register_forward_pre_hook(
        lambda *_: events.append(("d forward", _params(net_d), next(net_d.parameters()).requires_grad))
    )
    for name, optimizer in (("g", optim_g), ("d", optim_d)):
        optimizer.register_step_pre_hook(
            lambda *_, name=name: events.append(
                (f"{name} step", _params(net_g), _params(net_d), _grads(net_g), _grads(net_d))
            )
        )
    return events


def test_one_call_is_one_d_update_then_one_g_update_through_the_updated_d(models_and_batch):
    models, batch = models_and_batch
    step, nets = _gan_step(tiny(batch_size=2), models)
    net_g, net_d = nets[:2]
    g0, d0 = _params(net_g), _params(net_d)
    events = _record(*nets)
    result = step(batch, 1)

    assert [e[0] for e in events] == ["d forward", "d step", "d forward", "g step"]
    (_, d_in_d_phase, d_trainable), d_step, (_, d_in_g_phase, d_trainable_in_g), g_step = events
    assert _equal(d_in_d_phase, d0) and d_trainable, "D's phase scores with D as it was"
    assert _equal(d_step[1], g0), "G is untouched when D steps"
    assert all(g is None for g in d_step[3].values()), "D's loss gives G no gradient (the fake is detached)"
    d1 = _params(net_d)
    assert not _equal(d1, d0), "D's update changed D"
    assert _equal(d_in_g_phase, d1), "G's loss is taken through the updated D"
    assert not d_trainable_in_g, "D is frozen in G's phase"
    assert _equal(g_step[2], d1) and _equal(g_step[1], g0), "G steps once, after D's one update"
    assert not _equal(_params(net_g), g0), "G's update changed G"
    assert all(p.requires_grad for m in (net_g, net_d) for p in m.parameters()), "flags restored"
    assert _equal(g_step[4], d_step[4]), "G's backward added nothing to D's gradient (D frozen)"

    assert result.skipped == []
    assert set(result.losses) == {"loss_d", "loss_g", "loss_mel", "loss_kl", "loss_fm", "loss_adv"}
    assert all(math.isfinite(v) for v in result.losses.values()), result.losses
    parts = ("loss_adv", "loss_fm", "loss_mel", "loss_kl")
    assert result.losses["loss_g"] == pytest.approx(sum(result.losses[k] for k in parts), rel=1e-5)
    assert result.grad_norm_d == pytest.approx(_norm(d_step[4]), rel=1e-5)
    assert result.grad_norm_g == pytest.approx(_norm(g_step[3]), rel=1e-5)
    assert (
        result.mel_real.shape
        == result.mel_fake.shape
        == (step.cfg.data.n_mel_channels, step.cfg.segment_frames)
    )


def test_grad_clip_clips_each_update_to_the_clip_and_reports_the_norm_before(models_and_batch):
    models, batch = models_and_batch
    clip = 1e-3  # far below either model's gradient norm on a fresh model
    step, nets = _gan_step(tiny(batch_size=2, grad_clip=clip), models)
    events = _record(*nets)
    result = step(batch, 1)
    d_step, g_step = (e for e in events if e[0].endswith("step"))
    assert result.grad_norm_d > 10 * clip and result.grad_norm_g > 10 * clip
    assert _norm(d_step[4]) == pytest.approx(clip, rel=1e-4), "D stepped with its gradient clipped"
    assert _norm(g_step[3]) == pytest.approx(clip, rel=1e-4), "G stepped with its gradient clipped"


def _poisoned(real):
    """`real` loss function, its loss times NaN (the graph stays: backward runs, the gradients are NaN)."""

    def loss(*args):
        out = real(*args)
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")

    return loss


@pytest.mark.parametrize(
    ("loss_name", "skipped"),
    [("discriminator_loss", "discriminator"), ("kl_loss", "generator")],
)
def test_a_non_finite_loss_skips_that_update_and_leaves_its_optimizer_untouched(
    models_and_batch, monkeypatch, loss_name, skipped
):
    models, batch = models_and_batch
    step, (net_g, net_d, optim_g, optim_d) = _gan_step(tiny(batch_size=2), models, torch.optim.Adam)
    step(batch, 1)  # a good step first: Adam has moments that a bad update would change
    nets = {"generator": (net_g, optim_g), "discriminator": (net_d, optim_d)}
    before = {name: (_params(net), copy.deepcopy(opt.state_dict())) for name, (net, opt) in nets.items()}

    monkeypatch.setattr(step_module, loss_name, _poisoned(getattr(step_module, loss_name)))
    result = step(batch, 2)

    assert result.skipped == [skipped]
    other = "generator" if skipped == "discriminator" else "discriminator"
    net, optimizer = nets[skipped]
    assert _equal(_params(net), before[skipped][0]), f"the {skipped}'s weights are untouched"
    state = optimizer.state_dict()["state"]
    assert state.keys() == before[skipped][1]["state"].keys()
    for index, moments in before[skipped][1]["state"].items():
        assert _equal(state[index], moments), f"the {skipped}'s optimizer state is untouched"
    net, optimizer = nets[other]
    assert not _equal(_params(net), before[other][0]), f"the {other} still updates"
    assert {float(s["step"]) for s in optimizer.state_dict()["state"].values()} == {2.0}
