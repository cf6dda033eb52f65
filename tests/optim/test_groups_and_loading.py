"""Param groups added or refused, state loaded across paths and dtypes, and the number types
hyperparameters come in: what a user of build_optimizer and the classes gets. Found in a review
(2026-12-05); every test here failed before its fix.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from arvc.optim import AdaBelief, AdaBeliefV2, AnyPrecisionAdamW, RAdam, build_optimizer

ARVC_CLASSES = [AdaBelief, AdaBeliefV2, AnyPrecisionAdamW, RAdam]  # AdamW is torch's add_param_group


def _params(n=2, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.randn(5, dtype=dtype, requires_grad=True) for _ in range(n)]


def _step(optimizer, params, grad=0.25):
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, grad * (i + 1))
    optimizer.step()


@pytest.mark.parametrize("cls", ARVC_CLASSES, ids=lambda c: c.__name__)
def test_a_refused_add_param_group_leaves_the_optimizer_as_it_was(cls):
    params, untouched = _params(), _params()
    optimizer = build_optimizer(cls.__name__, params, lr=1e-2)
    reference = build_optimizer(cls.__name__, untouched, lr=1e-2)
    wrong = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # the fused kernels step no float64
    with pytest.raises((RuntimeError, ValueError)):
        optimizer.add_param_group({"params": [wrong], "fused": True})
    assert len(optimizer.param_groups) == 1
    wrong.grad = torch.ones_like(wrong)
    _step(optimizer, params)  # before the fix: the refused group was stepped and raised
    _step(reference, untouched)
    assert all(torch.equal(p, q) for p, q in zip(params, untouched, strict=True))
    assert torch.equal(wrong, torch.zeros_like(wrong))


def test_param_indices_and_a_later_group_are_refused_clearly():
    first, later = _params(1), _params(1)
    optimizer = AnyPrecisionAdamW(first, lr=1e-2, param_indices=[5])
    with pytest.raises(ValueError, match="param_indices"):  # before: a bare KeyError at step()
        optimizer.add_param_group({"params": later})
    assert len(optimizer.param_groups) == 1
    _step(optimizer, first)


@pytest.mark.parametrize(
    "name, setting",
    [
        ("AnyPrecisionAdamW", {"momentum_dtype": torch.float64}),
        ("AdaBelief", {"foreach": True}),
        ("AdaBeliefV2", {"foreach": False}),
        ("RAdam", {"differentiable": True}),
        ("RAdam", {"foreach": True}),
    ],
)
def test_a_groups_own_settings_keep_the_registry_from_fusing_that_group(name, setting):
    # The registry switched fused on for every group from its keywords alone, and the class then refused
    # an option the user never passed ("fused and foreach cannot both be True"). Now the group that
    # chose keeps the class's own path and the others are fused.
    params, plain = _params(), _params()
    given = [{"params": params[:1]}, {"params": params[1:], **setting}]
    built = build_optimizer(name, given, lr=1e-2)
    assert [bool(group["fused"]) for group in built.param_groups] == [True, False]
    assert "fused" not in given[1]  # the caller's dicts are not touched
    cls = type(built)
    direct = cls([{"params": plain[:1], "fused": True}, {"params": plain[1:], **setting}], lr=1e-2)
    if name == "RAdam":  # the registry's RAdam decays decoupled (AdamW-style), as the CLI states
        for group in direct.param_groups:
            group["decoupled_weight_decay"] = True
    for _ in range(3):
        _step(built, params)
        _step(direct, plain)
    assert all(torch.equal(p, q) for p, q in zip(params, plain, strict=True))


def test_fused_adamw_resumed_from_a_foreach_checkpoint_goes_on_taking_grad_scalers_scale():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    earlier = build_optimizer("AdamW", model.parameters(), lr=1e-2, foreach=True)
    model(torch.randn(2, 4)).sum().backward()
    earlier.step()
    saved = copy.deepcopy(earlier.state_dict())
    reference_model = copy.deepcopy(model)

    resumed = build_optimizer("AdamW", model.parameters(), lr=1e-2)  # fused, as the registry builds it
    resumed.load_state_dict(copy.deepcopy(saved))  # torch's load shares same-dtype tensors
    assert all(group["fused"] for group in resumed.param_groups)
    reference = build_optimizer("AdamW", reference_model.parameters(), lr=1e-2, foreach=True)
    reference.load_state_dict(copy.deepcopy(saved))

    x = torch.randn(2, 4)
    for m, optimizer in ((model, resumed), (reference_model, reference)):
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        optimizer.zero_grad()
        scaler.scale(m(x).sum()).backward()
        scaler.step(optimizer)  # before the fix: AssertionError, grad_scale handed to a foreach step
        scaler.update()
    # fused and foreach kernels round differently: FMA-sized differences, nothing more
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize(
    "saved_dtype, new_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]
)
def test_radam_state_loads_beside_parameters_of_another_dtype_as_torch_radams_does(
    foreach, saved_dtype, new_dtype
):
    earlier_params = _params(dtype=saved_dtype)
    earlier = RAdam(earlier_params, lr=1e-2)
    for _ in range(2):
        _step(earlier, earlier_params)
    saved = earlier.state_dict()

    params = [p.detach().to(new_dtype).requires_grad_() for p in earlier_params]
    expected = [p.detach().clone().requires_grad_() for p in params]
    optimizer = RAdam(params, lr=1e-2, foreach=foreach, fused=False)
    optimizer.load_state_dict(copy.deepcopy(saved))  # before: "expected dtype float for `end`" at step
    reference = torch.optim.RAdam(expected, lr=1e-2, foreach=foreach)
    reference.load_state_dict(copy.deepcopy(saved))
    for _ in range(2):
        _step(optimizer, params)
        _step(reference, expected)
    assert all(torch.equal(p, q) for p, q in zip(params, expected, strict=True))
    assert all(optimizer.state[p]["exp_avg"].dtype == new_dtype for p in params)


@pytest.mark.parametrize("cls", [AdaBelief, AdaBeliefV2, AnyPrecisionAdamW], ids=lambda c: c.__name__)
@pytest.mark.parametrize("path", [{"fused": True}, {"foreach": True}, {"foreach": False}], ids=str)
def test_hyperparameters_come_in_the_number_types_torch_optim_takes(cls, path):
    # NumPy scalars and one-element tensors were refused with "Invalid epsilon value: 1e-08".
    given = dict(
        lr=np.float32(1e-3),
        betas=(torch.tensor(0.9), np.float64(0.99)),
        eps=np.float32(1e-8),
        weight_decay=np.float32(0.01),
    )
    as_floats = dict(
        lr=float(given["lr"]),
        betas=(float(given["betas"][0]), 0.99),
        eps=float(given["eps"]),
        weight_decay=float(given["weight_decay"]),
    )
    params, plain = _params(), _params()
    optimizer, reference = cls(params, **given, **path), cls(plain, **as_floats, **path)
    for _ in range(3):
        _step(optimizer, params)
        _step(reference, plain)
    assert all(torch.equal(p, q) for p, q in zip(params, plain, strict=True))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(eps=np.float32(-1.0)), "epsilon"),
        (dict(betas=(torch.tensor(1.0), 0.9)), "beta parameter at index 0"),
        (dict(weight_decay=np.float64("nan")), "weight_decay"),
        (dict(lr=torch.tensor([1e-3, 1e-3])), "1-element"),
        (dict(betas=(0.9, 1j)), "beta parameter at index 1"),
    ],
)
def test_out_of_range_numbers_of_any_type_are_still_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        AdaBelief(_params(), **{"lr": 1e-3, **bad})


@pytest.mark.parametrize("fused", [True, False])
def test_anyprecision_state_of_bf16_kahan_parameters_loads_beside_float32_ones(fused):
    # The fused step refused ("float32 parameters have no compensation buffer"); the others ignored it.
    low = [p.detach().to(torch.bfloat16).requires_grad_() for p in _params()]
    earlier = AnyPrecisionAdamW(low, lr=1e-2, use_kahan_summation=True)
    for _ in range(3):
        _step(earlier, low)
    saved = copy.deepcopy(earlier.state_dict())
    residuals = [earlier.state[p]["compensation"].float() for p in low]
    assert any(r.abs().max() > 0 for r in residuals)

    params = [p.detach().float().requires_grad_() for p in low]
    optimizer = AnyPrecisionAdamW(params, lr=1e-2, use_kahan_summation=True, fused=fused)
    optimizer.load_state_dict(saved)
    for p, q, r in zip(params, low, residuals, strict=True):  # the value Kahan was tracking, exactly
        assert torch.equal(p, q.float() + r)
        assert "compensation" not in optimizer.state[p]
    _step(optimizer, params)


def test_anyprecision_kahan_state_of_float32_parameters_loads_beside_bf16_ones_with_kahan_on():
    # A Kahan group's float32 parameters have no compensation; loaded beside bf16 parameters, Kahan stayed
    # off for the rest of the run (the buffer is only created for an empty state).
    earlier_params = _params()
    earlier = AnyPrecisionAdamW(earlier_params, lr=1e-2, use_kahan_summation=True)
    _step(earlier, earlier_params)
    low = [p.detach().to(torch.bfloat16).requires_grad_() for p in earlier_params]
    optimizer = AnyPrecisionAdamW(low, lr=1e-2, use_kahan_summation=True)
    optimizer.load_state_dict(copy.deepcopy(earlier.state_dict()))
    for p in low:
        compensation = optimizer.state[p]["compensation"]
        assert compensation.dtype == torch.bfloat16 and not compensation.any()
    for _ in range(3):
        _step(optimizer, low, grad=1e-3)
    assert all(optimizer.state[p]["compensation"].any() for p in low)  # Kahan is at work
