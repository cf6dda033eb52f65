"""AdamWScheduleFree and RAdamScheduleFree beside their reference, the `schedulefree` package (1.4.1).

Built through `build_optimizer`, run on the same parameters and gradients as the reference, in float32,
two param groups (different lr and weight decay), 12 steps (past RAdam's rectified start at step 5),
warm-up for AdamW; y (the parameters in train mode) compared after every step, x (after `eval()`) at the
end and after a mid-run eval()/train() switch, as validation does it.

Tolerances:
* arvc's single-tensor path against the reference's single-tensor path, and foreach against foreach:
  0 (bit-exact): the same operations in the same order.
* across paths (arvc's foreach against the reference's single-tensor path, and the reverse): FMA-sized,
  rtol 1e-6 / atol 1e-7 (a vectorized lerp_/addcmul_ may fuse a multiply-add the other rounds twice;
  on this CPU they agree exactly).
* arvc's fused kernel (the registry's default for float32 on CPU) against either of the reference's paths:
  the same FMA-sized tolerance. The kernel runs the loop's float32 operations in the same order without
  contracting any a*b + c, while torch's vectorized add_(alpha=)/lerp_ fuse them: about one ulp per step
  (4.8e-7 on these values after 12 steps). The kernel against arvc's own paths, and the Triton kernel
  against the C++ one (bit for bit), are the rows of _optim_helpers.CONFIGS (test_fused.py,
  test_fused_triton.py).
The generic torch.optim contract (hooks, state dicts, add_param_group, complex, sparse, zero-size,
maximize, bad hyperparameters) runs over both in tests/optim/test_conformance.py (rows in _table.py).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from arvc.optim import OPTIMIZERS, build_optimizer, state_bytes_per_param
from arvc.optim.registry import has_weight_modes

schedulefree = pytest.importorskip("schedulefree")

STEPS = 12
GROUPS = ({"lr": 2e-2, "weight_decay": 0.1}, {"lr": 5e-3, "weight_decay": 0.0})
SHAPES = ((5, 7), (13,), (3, 2, 2), (4,))  # two tensors per group
FMA_SIZED = {"rtol": 1e-6, "atol": 1e-7}
EXACT = {"rtol": 0.0, "atol": 0.0}

CASES = [
    pytest.param("AdamWScheduleFree", {"warmup_steps": 4}, id="AdamW-warmup"),
    pytest.param("AdamWScheduleFree", {"r": 1.0, "weight_lr_power": 0.0}, id="AdamW-r1-power0"),
    pytest.param("RAdamScheduleFree", {}, id="RAdam-silent-start"),
    pytest.param("RAdamScheduleFree", {"silent_sgd_phase": False, "r": 0.5}, id="RAdam-sgd-start-r0.5"),
]
SINGLE, FOREACH, FUSED = {"foreach": False}, {"foreach": True}, {"fused": True}  # build_optimizer's choice
PATHS = [
    pytest.param(SINGLE, id="single"),
    pytest.param(FOREACH, id="foreach"),
    pytest.param(FUSED, id="fused"),
]
PATH_PAIRS = [
    pytest.param(SINGLE, False, EXACT, id="single-vs-single"),
    pytest.param(FOREACH, True, EXACT, id="foreach-vs-foreach"),
    pytest.param(FOREACH, False, FMA_SIZED, id="foreach-vs-reference-single"),
    pytest.param(SINGLE, True, FMA_SIZED, id="single-vs-reference-foreach"),
    pytest.param(FUSED, False, FMA_SIZED, id="fused-vs-reference-single"),
    pytest.param(FUSED, True, FMA_SIZED, id="fused-vs-reference-foreach"),
]


def _params(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def _groups(params):
    return [{"params": params[2 * i : 2 * i + 2], **group} for i, group in enumerate(GROUPS)]


def _grads(step):
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def _feed(optimizer, params, step):
    for p, g in zip(params, _grads(step)[: len(params)], strict=True):
        p.grad = g
    optimizer.step()


def _close(ours, reference, tolerance, what):
    for p, q in zip(ours, reference, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), msg=what, **tolerance)


@pytest.mark.parametrize("path, reference_foreach, tolerance", PATH_PAIRS)
@pytest.mark.parametrize("name, kwargs", CASES)
def test_matches_schedulefree_in_train_and_eval_mode(name, kwargs, path, reference_foreach, tolerance):
    ours, theirs = _params(), _params()
    optimizer = build_optimizer(name, _groups(ours), lr=1e-3, **path, **kwargs)
    assert all(g["fused"] == ("fused" in path) for g in optimizer.param_groups)
    reference = getattr(schedulefree, name)(_groups(theirs), lr=1e-3, foreach=reference_foreach, **kwargs)
    assert has_weight_modes(optimizer) and OPTIMIZERS[name].schedule_free
    reference.train()  # the reference starts in eval mode; arvc's starts in train mode (y = x = z then)
    for step in range(STEPS):
        if step == 6:  # a validation in the middle of the run: x, then back to y
            optimizer.eval()
            reference.eval()
            _close(ours, theirs, tolerance, f"x after step {step}")
            optimizer.train()
            reference.train()
        _feed(optimizer, ours, step)
        _feed(reference, theirs, step)
        _close(ours, theirs, tolerance, f"y after step {step + 1}")
        for key in ("k", "weight_sum", "lr_max", "scheduled_lr"):
            assert [g[key] for g in optimizer.param_groups] == pytest.approx(
                [g[key] for g in reference.param_groups], rel=1e-12
            ), key
    optimizer.eval()
    reference.eval()
    _close(ours, theirs, tolerance, "x at the end")
    for p, q in zip(ours, theirs, strict=True):
        for key in ("z", "exp_avg_sq"):
            torch.testing.assert_close(optimizer.state[p][key], reference.state[q][key], **tolerance)


def test_the_gradients_are_left_as_they_were():
    # The reference divides p.grad in place; arvc's step reads the gradients only (torch.optim's contract).
    for path in (SINGLE, FOREACH, FUSED):
        params = _params()
        optimizer = build_optimizer("AdamWScheduleFree", _groups(params), lr=1e-2, **path)
        grads = _grads(0)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))


def test_warmup_is_linear_inside_the_optimizer_and_the_start_of_radam_is_silent():
    params = _params()
    adamw = build_optimizer("AdamWScheduleFree", params[:2], lr=1e-2, warmup_steps=4)
    lrs = []
    for step in range(6):
        _feed(adamw, params[:2], step)
        lrs.append(adamw.param_groups[0]["scheduled_lr"])
    assert lrs == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])

    others = _params(seed=3)
    before = [p.detach().clone() for p in others]
    radam = build_optimizer("RAdamScheduleFree", others, lr=1e-2, betas=(0.9, 0.999))
    for step in range(4):  # rho_t <= 4: only the second moment is gathered
        _feed(radam, others, step)
        assert all(torch.equal(p, b) for p, b in zip(others, before, strict=True))
    assert radam.param_groups[0]["weight_sum"] == 0.0
    _feed(radam, others, 4)
    assert all(not torch.equal(p, b) for p, b in zip(others, before, strict=True))
    assert 0 < radam.param_groups[0]["scheduled_lr"] < 1e-2  # rectified


def test_train_eval_contract():
    params = _params()
    optimizer = build_optimizer("AdamWScheduleFree", _groups(params), lr=1e-2)
    assert all(g["fused"] for g in optimizer.param_groups)  # the registry's default here: the fused kernel
    assert all(g["train_mode"] for g in optimizer.param_groups)  # a new optimizer: train mode
    optimizer.eval()  # no state yet: y = x = z, nothing moves
    assert all(not g["train_mode"] for g in optimizer.param_groups)
    with pytest.raises(RuntimeError, match=r"eval mode: call optimizer\.train\(\)"):
        _feed(optimizer, params, 0)
    optimizer.train()
    for step in range(3):
        _feed(optimizer, params, step)
    y = [p.detach().clone() for p in params]
    optimizer.eval()
    x = [p.detach().clone() for p in params]
    optimizer.eval()  # idempotent
    assert all(torch.equal(p, q) for p, q in zip(params, x, strict=True))
    # x = (y - (1 - beta1) z) / beta1
    for p, yy in zip(params, y, strict=True):
        z = optimizer.state[p]["z"]
        torch.testing.assert_close(p.detach(), (yy - 0.1 * z) / 0.9, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(x, y, strict=True))
    optimizer.train()
    for p, yy in zip(params, y, strict=True):  # back to y, up to rounding (y -> x -> y is two lerps)
        torch.testing.assert_close(p.detach(), yy, rtol=1e-6, atol=1e-6)
    # A param group added later joins the optimizer's mode (the reference's would start in eval mode).
    optimizer.eval()
    extra = torch.nn.Parameter(torch.ones(3))
    optimizer.add_param_group({"params": [extra]})
    assert optimizer.param_groups[-1]["train_mode"] is False
    optimizer.train()
    extra.grad = torch.ones(3)
    optimizer.step()


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("AdamWScheduleFree", {"betas": (0.0, 0.999)}, "beta parameter at index 0"),
        ("RAdamScheduleFree", {"weight_lr_power": -1.0}, "weight_lr_power"),
        ("AdamWScheduleFree", {"warmup_steps": True}, "warmup_steps"),
        ("AdamWScheduleFree", {"r": "1"}, "r value"),
    ],
)
def test_bad_values_in_a_param_group_are_refused_and_the_group_is_not_kept(name, kwargs, message):
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=message):
        build_optimizer(name, [{"params": [first], **kwargs}], lr=1e-2)
    optimizer = build_optimizer(name, [first], lr=1e-2)
    with pytest.raises(ValueError, match=message):
        optimizer.add_param_group({"params": [second], **kwargs})
    assert len(optimizer.param_groups) == 1
    first.grad = torch.ones(2)
    optimizer.step()


def _save(model_params, optimizer):
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in model_params], "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _resume(name, kwargs, path, saved):
    params = _params(seed=7)  # a fresh process: other values, overwritten by the checkpoint
    with torch.no_grad():
        for p, value in zip(params, saved["params"], strict=True):
            p.copy_(value)
    optimizer = build_optimizer(name, _groups(params), lr=1e-3, **path, **kwargs)
    optimizer.load_state_dict(copy.deepcopy(saved["optimizer"]))
    return params, optimizer


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name, kwargs", CASES)
def test_resume_is_bit_exact_from_a_checkpoint_saved_in_either_mode(name, kwargs, path):
    build = lambda params: build_optimizer(name, _groups(params), lr=1e-3, **path, **kwargs)  # noqa: E731

    # Saved in train mode: the parameters hold y; the run goes on stepping.
    straight = _params()
    straight_opt = build(straight)
    for step in range(STEPS):
        _feed(straight_opt, straight, step)
    first = _params()
    first_opt = build(first)
    for step in range(6):
        _feed(first_opt, first, step)
    resumed, resumed_opt = _resume(name, kwargs, path, _save(first, first_opt))
    assert all(g["train_mode"] for g in resumed_opt.param_groups)
    for step in range(6, STEPS):
        _feed(resumed_opt, resumed, step)
    assert all(torch.equal(p, q) for p, q in zip(resumed, straight, strict=True)), "train-mode save"
    straight_opt.eval()
    resumed_opt.eval()
    assert all(torch.equal(p, q) for p, q in zip(resumed, straight, strict=True)), "x after it"

    # Saved in eval mode (x, as after a validation): the resumed run switches back with train(), as the
    # uninterrupted run does after its validation.
    straight = _params()
    straight_opt = build(straight)
    first = _params()
    first_opt = build(first)
    for step in range(6):
        _feed(straight_opt, straight, step)
        _feed(first_opt, first, step)
    straight_opt.eval()
    first_opt.eval()
    saved = _save(first, first_opt)
    straight_opt.train()
    resumed, resumed_opt = _resume(name, kwargs, path, saved)
    assert not any(g["train_mode"] for g in resumed_opt.param_groups), "the mode comes with the state"
    assert all(torch.equal(p, q) for p, q in zip(resumed, first, strict=True))
    resumed_opt.train()
    for step in range(6, STEPS):
        _feed(straight_opt, straight, step)
        _feed(resumed_opt, resumed, step)
    assert all(torch.equal(p, q) for p, q in zip(resumed, straight, strict=True)), "eval-mode save"
    for p, q in zip(resumed, straight, strict=True):
        for key in ("z", "exp_avg_sq"):
            assert torch.equal(resumed_opt.state[p][key], straight_opt.state[q][key])


@pytest.mark.parametrize(
    "saved_on, resumed_on",
    [
        pytest.param(FUSED, FOREACH, id="fused-to-foreach"),
        pytest.param(FOREACH, FUSED, id="foreach-to-fused"),
    ],
)
@pytest.mark.parametrize("name, kwargs", CASES)
def test_a_checkpoint_resumes_on_the_other_path(name, kwargs, saved_on, resumed_on):
    """A fused run's checkpoint resumes on a machine without a compiler (foreach), and a foreach run's
    on one with the kernel: each process keeps its own path, and the run goes on as the uninterrupted
    run on the resumed path would from that state (the paths differ by FMA-sized roundings only)."""
    first = _params()
    first_opt = build_optimizer(name, _groups(first), lr=1e-3, **saved_on, **kwargs)
    for step in range(6):
        _feed(first_opt, first, step)
    first_opt.eval()  # saved after a validation, as the trainer saves
    saved = _save(first, first_opt)
    resumed, resumed_opt = _resume(name, kwargs, resumed_on, saved)
    twin, twin_opt = _resume(name, kwargs, saved_on, saved)
    assert all(g["fused"] == ("fused" in resumed_on) for g in resumed_opt.param_groups), "this process's path"
    assert all(torch.equal(p, q) for p, q in zip(resumed, first, strict=True)), "x restored as saved"
    resumed_opt.train()
    twin_opt.train()
    for step in range(6, STEPS):
        _feed(resumed_opt, resumed, step)
        _feed(twin_opt, twin, step)
    resumed_opt.eval()
    twin_opt.eval()
    _close(resumed, twin, FMA_SIZED, "x after resuming on the other path")
    assert resumed_opt.state_dict()["param_groups"][0]["k"] == STEPS


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "RAdamScheduleFree"])
def test_a_state_dict_of_the_reference_loads_and_continues_identically(name):
    ours, theirs = _params(), _params()
    reference = getattr(schedulefree, name)(_groups(theirs), lr=1e-3, foreach=False)
    reference.train()
    for step in range(6):
        _feed(reference, theirs, step)
    reference.eval()  # as the reference recommends saving
    with torch.no_grad():
        for p, q in zip(ours, theirs, strict=True):
            p.copy_(q)
    optimizer = build_optimizer(name, _groups(ours), lr=1e-3, foreach=False)
    optimizer.load_state_dict(reference.state_dict())
    optimizer.train()
    reference.train()
    for step in range(6, STEPS):
        _feed(optimizer, ours, step)
        _feed(reference, theirs, step)
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))
    assert optimizer.state_dict()["param_groups"][0]["k"] == STEPS


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "RAdamScheduleFree"])
def test_state_bytes_count_z_and_the_second_moment(name):
    # Two buffers per parameter in its own dtype (z and exp_avg_sq); no per-parameter step counter.
    assert state_bytes_per_param(name) == pytest.approx(8.0, abs=0.01)
    assert state_bytes_per_param(name, param_dtype=torch.bfloat16) == pytest.approx(4.0, abs=0.01)


def test_the_memory_estimate_counts_their_state():
    from arvc.train.memory import estimate_memory
    from arvc.train.optimizers import Hyperparameters, run_state_bytes_per_param

    hp = Hyperparameters(
        optimizer="AdamWScheduleFree",
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        use_8bit=False,
        kwargs={"warmup_steps": 10},
    )
    per_param = run_state_bytes_per_param(hp, torch.float32)
    assert per_param == pytest.approx(8.0, abs=0.01)
    net_g, net_d = torch.nn.Linear(10, 10), torch.nn.Linear(10, 1)
    estimate = estimate_memory(net_g, net_d, per_param, activations_per_item=0, batch_size=1)
    assert estimate.optimizer_state == int(8.0 * (110 + 11))


@pytest.mark.parametrize("name, kwargs", CASES)
def test_a_refused_fused_step_leaves_the_group_as_it_was_and_can_be_taken_again(name, kwargs):
    """The kernel checks every tensor before it writes any; the group's step count, weight sum and
    lr_max move only after its tensors have, so the step taken again (the state repaired) is the same step
    an unrefused run takes."""
    params, twins = _params(), _params()
    optimizer = build_optimizer(name, _groups(params), lr=1e-3, **kwargs)
    straight = build_optimizer(name, _groups(twins), lr=1e-3, **kwargs)
    assert all(g["fused"] for g in optimizer.param_groups)
    for step in range(6):
        _feed(optimizer, params, step)
        _feed(straight, twins, step)
    running = [
        {k: g[k] for k in ("k", "weight_sum", "lr_max", "scheduled_lr")} for g in optimizer.param_groups
    ]
    z = optimizer.state[params[0]]["z"]
    optimizer.state[params[0]]["z"] = torch.zeros(3)  # a damaged checkpoint: the wrong size
    with pytest.raises(RuntimeError, match="elements"):
        _feed(optimizer, params, 6)
    assert [{k: g[k] for k in running[0]} for g in optimizer.param_groups] == running
    optimizer.state[params[0]]["z"] = z
    for step in range(6, STEPS):
        _feed(optimizer, params, step)
        _feed(straight, twins, step)
    assert all(torch.equal(p, q) for p, q in zip(params, twins, strict=True))
