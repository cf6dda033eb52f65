"""The reproductions of issue #12, one test each, through what the user calls (build_optimizer, the CLI).

The generic behaviours (complex, tensor lr, hooks, compile, layouts, ...) run over the whole table in
test_conformance.py; here are the exact cases the issue reported, plus what only some optimizers have.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from typer.testing import CliRunner

from arvc.optim import OPTIMIZERS, AdaBelief, AdaBeliefV2, AnyPrecisionAdamW, build_optimizer

NAMES = list(OPTIMIZERS)
# RAdamScheduleFree's first 4 steps only gather the second moment (its rectified start moves nothing).
PAST_RECTIFICATION = 5


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))


def _step(optimizer, params, grad=0.5):
    for p in params:
        p.grad = torch.full_like(p, grad)
    optimizer.step()


# 1. Param groups from generators; named parameters inside groups.
@pytest.mark.parametrize("name", NAMES)
def test_param_groups_built_from_generators_keep_their_params(name):
    model = _model()
    optimizer = build_optimizer(name, [{"params": model.parameters()}], lr=1e-3)
    reference = torch.optim.AdamW([{"params": model.parameters()}], lr=1e-3)
    assert len(optimizer.param_groups[0]["params"]) == len(reference.param_groups[0]["params"]) == 4
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(PAST_RECTIFICATION):
        _step(optimizer, list(model.parameters()))
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "in-groups"])
def test_named_parameters_behave_as_in_torch(name, grouped):
    model = _model()
    named = list(model.named_parameters())
    params = [{"params": iter(named)}] if grouped else iter(named)
    optimizer = build_optimizer(name, params, lr=1e-3)
    reference = torch.optim.AdamW([{"params": named}] if grouped else named, lr=1e-3)
    assert optimizer.param_groups[0]["param_names"] == reference.param_groups[0]["param_names"]
    assert optimizer.param_groups[0]["params"] == reference.param_groups[0]["params"]
    _step(optimizer, list(model.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_a_bare_tensor_is_refused_as_torch_refuses_it(name):
    with pytest.raises(TypeError, match="iterable of Tensors"):
        torch.optim.AdamW(torch.zeros(2, requires_grad=True))
    with pytest.raises(TypeError, match="iterable of Tensors"):
        build_optimizer(name, torch.zeros(2, requires_grad=True), lr=1e-3)


# 2. An explicit path is honoured; the automatic choice only picks fused where it works.
@pytest.mark.parametrize("name", NAMES)
def test_foreach_false_runs_the_for_loop_not_fused(name):
    optimizer = build_optimizer(name, _model().parameters(), lr=1e-3, foreach=False)
    group = optimizer.param_groups[0]
    assert group["foreach"] is False and not group.get("fused")  # (no "fused": the class has no such path)


def test_capturable_radam_on_cpu_is_not_made_fused():
    params = list(_model().parameters())
    optimizer = build_optimizer("RAdam", params, lr=1e-3, capturable=True)
    assert not optimizer.param_groups[0]["fused"] and optimizer.param_groups[0]["capturable"]


@pytest.mark.parametrize("name", NAMES)
def test_non_dense_params_get_a_path_that_steps_them(name):
    base = torch.zeros(4, 6)
    view = torch.nn.Parameter(base[:, ::2])
    optimizer = build_optimizer(name, [view], lr=1e-2)
    assert not optimizer.param_groups[0].get("fused")
    for _ in range(PAST_RECTIFICATION):
        view.grad = torch.ones(4, 3)
        optimizer.step()  # failed with "must be dense" when fused was switched on automatically
    assert (base[:, ::2] < 0).all() and (base[:, 1::2] == 0).all()


@pytest.mark.parametrize("name", [n for n in NAMES if n != "AdamW" and OPTIMIZERS[n].supports_fused])
def test_explicit_fused_with_a_non_dense_param_is_refused_at_construction(name):
    view = torch.nn.Parameter(torch.zeros(4, 6)[:, ::2])
    with pytest.raises(RuntimeError, match="dense parameters.*foreach=True"):
        build_optimizer(name, [view], lr=1e-2, fused=True)


# 3. Complex parameters (the example); the rule holds on every path (test_conformance).
@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}, {"fused": True}])
@pytest.mark.parametrize("name", ["AdaBelief", "AdaBeliefV2", "AnyPrecisionAdamW"])
def test_complex_imaginary_part_is_stepped(name, path):
    c = torch.tensor([1 + 1j, 2 - 1j], requires_grad=True)
    optimizer = build_optimizer(name, [c], lr=0.1, **path)
    c.grad = torch.tensor([1 + 1j, 2 - 1j])
    optimizer.step()
    assert (c.imag.abs() < 1).all() and (c.imag.abs() > 0.5).all()


def test_anyprecision_complex_matches_torch_adamw():
    c, ref = (
        torch.tensor([1 + 1j, 2 - 1j], requires_grad=True),
        torch.tensor([1 + 1j, 2 - 1j], requires_grad=True),
    )
    optimizer = AnyPrecisionAdamW([c], lr=0.1, weight_decay=0.1)
    reference = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.1, foreach=False)
    for k in range(3):
        c.grad = ref.grad = torch.tensor([1 + 2j, -1j]) * (k + 1)
        optimizer.step()
        reference.step()
    torch.testing.assert_close(c, ref, rtol=1e-6, atol=1e-7)


def test_complex32_is_refused_at_construction():
    with pytest.raises(ValueError, match="complex32"):
        AdaBelief([torch.zeros(2, dtype=torch.complex32, requires_grad=True)])


# 4. Tensor lr on the default path (foreach by default with several tensors) and for 1-D/2-D lr.
@pytest.mark.parametrize("name", ["AdaBelief", "AdaBeliefV2", "AnyPrecisionAdamW"])
@pytest.mark.parametrize("lr", [torch.tensor(1e-2), torch.tensor([1e-2]), torch.tensor([[1e-2]])])
def test_tensor_lr_steps_on_the_default_and_single_paths(name, lr):
    for path in ({"fused": False}, {"foreach": False}):
        params = list(_model().parameters())
        floats = list(_model().parameters())
        optimizer = build_optimizer(name, params, lr=lr, **path)
        reference = build_optimizer(name, floats, lr=1e-2, **path)
        for _ in range(2):
            _step(optimizer, params)
            _step(reference, floats)
        assert all(torch.equal(p, q) for p, q in zip(params, floats, strict=True))


# 5. State dicts with a numeric step.
@pytest.mark.parametrize("name", NAMES)
def test_numeric_step_in_a_loaded_state_dict_is_converted(name):
    params = list(_model().parameters())
    optimizer = build_optimizer(name, params, lr=1e-3)
    _step(optimizer, params)
    state = optimizer.state_dict()
    if not all("step" in entry for entry in state["state"].values()):
        pytest.skip(f"{name} counts steps per param group (k, as its reference), not per parameter")
    for entry in state["state"].values():
        entry["step"] = int(entry["step"].item())  # as older torch / pytorch_optimizer write it
    fresh_params = list(_model().parameters())
    fresh = build_optimizer(name, fresh_params, lr=1e-3)
    fresh.load_state_dict(state)
    _step(fresh, fresh_params)
    steps = [fresh.state[p]["step"] for p in fresh_params]
    assert all(isinstance(s, torch.Tensor) and s.item() == 2 for s in steps)


@pytest.mark.parametrize("cls, amsgrad", [(AdaBelief, False), (AdaBeliefV2, True)], ids=["V1", "V2"])
def test_adabelief_pytorch_state_dict_continues_in_arvc(cls, amsgrad):
    adabelief_pytorch = pytest.importorskip("adabelief_pytorch")
    kwargs = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.1)

    def reference(params):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return adabelief_pytorch.AdaBelief(
                params, rectify=False, weight_decouple=True, amsgrad=amsgrad, print_change_log=False, **kwargs
            )

    theirs = list(_model().parameters())
    their_opt = reference(theirs)
    generator = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=generator) for p in theirs] for _ in range(6)]
    for step in grads[:3]:
        for p, g in zip(theirs, step, strict=True):
            p.grad = g.clone()
        their_opt.step()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    our_opt = cls(ours, **kwargs)
    our_opt.load_state_dict(their_opt.state_dict())
    for step in grads[3:]:
        for p, q, g in zip(theirs, ours, step, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        their_opt.step()
        our_opt.step()
    for p, q in zip(theirs, ours, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


# 7. RAdam: groups on different paths; hooks once (every optimizer: test_conformance).
def test_radam_groups_on_different_paths():
    model = _model()
    optimizer = build_optimizer(
        "RAdam",
        [
            {"params": model[0].parameters()},
            {"params": model[1].parameters(), "fused": False, "foreach": True},
        ],
        lr=1e-2,
    )
    assert [bool(g["fused"]) for g in optimizer.param_groups] == [True, False]
    reference_model = _model()
    reference = torch.optim.RAdam(reference_model.parameters(), lr=1e-2, decoupled_weight_decay=True)
    for _ in range(3):
        _step(optimizer, list(model.parameters()))
        _step(reference, list(reference_model.parameters()))
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_radam_hooks_fire_once_after_a_torch_radam_exists():
    torch.optim.RAdam([torch.nn.Parameter(torch.ones(1))])
    params = list(_model().parameters())
    optimizer = build_optimizer("RAdam", params, lr=1e-3, foreach=True)
    calls = []
    optimizer.register_step_pre_hook(lambda *a: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *a: calls.append("post"))
    _step(optimizer, params)
    assert calls == ["pre", "post"]


# 8. Weight decay is decoupled through the registry, and `arvc optimizers NAME` says how.
def test_radam_from_the_registry_decays_decoupled():
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = build_optimizer("RAdam", params, lr=1e-2, weight_decay=0.5)
    assert optimizer.param_groups[0]["decoupled_weight_decay"] is True
    reference_params = [torch.nn.Parameter(torch.ones(3))]
    reference = torch.optim.RAdam(reference_params, lr=1e-2, weight_decay=0.5, decoupled_weight_decay=True)
    for _ in range(3):
        _step(optimizer, params)
        _step(reference, reference_params)
    torch.testing.assert_close(params[0], reference_params[0], rtol=1e-6, atol=1e-7)
    coupled = build_optimizer(
        "RAdam", [torch.nn.Parameter(torch.ones(3))], lr=1e-2, decoupled_weight_decay=False
    )
    assert coupled.param_groups[0]["decoupled_weight_decay"] is False


@pytest.mark.parametrize("name", NAMES)
def test_cli_states_how_weight_decay_is_applied(name):
    from arvc.cli import app

    result = CliRunner().invoke(app, ["optimizers", name, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["weight_decay"].startswith("decoupled")
    table = CliRunner().invoke(app, ["optimizers", name]).stdout
    assert "weight decay" in table and "decoupled" in table


# 9. torch's fused CPU AdamW and expanded / non-contiguous gradients.
@pytest.mark.parametrize(
    "make",
    [
        lambda: (torch.zeros(3), torch.ones(1).expand(3)),
        lambda: (torch.zeros(4, 3), torch.arange(12.0).reshape(3, 4).t()),
        lambda: (torch.zeros(2, 3, 2, 2).to(memory_format=torch.channels_last), torch.randn(2, 3, 2, 2)),
    ],
    ids=["expanded", "transposed", "channels_last-param-contiguous-grad"],
)
def test_default_adamw_steps_odd_gradient_layouts_like_torch_foreach(make):
    data, grad = make()
    param = torch.nn.Parameter(data.clone(memory_format=torch.preserve_format))
    reference = torch.nn.Parameter(data.clone(memory_format=torch.preserve_format))
    optimizer = build_optimizer("AdamW", [param], lr=1e-2)
    assert optimizer.param_groups[0]["fused"]
    torch_foreach = torch.optim.AdamW([reference], lr=1e-2, foreach=True)
    for _ in range(2):
        param.grad, reference.grad = grad, grad.clone()
        optimizer.step()
        torch_foreach.step()
    torch.testing.assert_close(param, reference, rtol=1e-6, atol=1e-7)
    assert param.grad is grad  # the user's gradient is left as it was


# 10. AdaBelief <-> AdaBeliefV2 state dicts.
@pytest.mark.parametrize("source, target", [(AdaBelief, AdaBeliefV2), (AdaBeliefV2, AdaBelief)])
@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_adabelief_state_dicts_load_across_versions(source, target, path):
    params = list(_model().parameters())
    first = source(params, lr=1e-2, **path)
    _step(first, params)
    second = target(params, lr=1e-2, **path)
    second.load_state_dict(first.state_dict())
    _step(second, params)
    state = second.state[params[0]]
    assert ("max_exp_avg_var" in state) is target.amsgrad
    if target.amsgrad:
        assert torch.equal(
            state["max_exp_avg_var"], torch.maximum(state["max_exp_avg_var"], state["exp_avg_var"])
        )
    assert all(torch.isfinite(p).all() for p in params)


# 11. The 8-bit switch: betas and weight decay as the requested optimizer resolves them; eps in Adam's
# meaning (AdamW8bit is an Adam), unless given.
@pytest.mark.parametrize("name", NAMES)
def test_eight_bit_switch_keeps_the_requested_betas_and_weight_decay_and_takes_adams_eps(name):
    bnb = pytest.importorskip("bitsandbytes")
    params = [torch.nn.Parameter(torch.zeros(4096))]
    eight = build_optimizer(name, params, lr=1e-3, use_8bit=True)
    assert isinstance(eight, bnb.optim.AdamW8bit)
    plain = build_optimizer(name, [torch.nn.Parameter(torch.zeros(4096))], lr=1e-3)
    for key in ("weight_decay", "betas"):
        assert eight.param_groups[0][key] == plain.param_groups[0][key], key
    # AdaBelief's default 1e-16 is added into its variance; in AdamW8bit's denominator it would be none.
    assert (
        eight.param_groups[0]["eps"]
        == torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults["eps"]
    )
    assert eight.param_groups[0]["eps"] == 1e-8
    given = build_optimizer(name, [torch.nn.Parameter(torch.zeros(4096))], lr=1e-3, eps=1e-16, use_8bit=True)
    assert given.param_groups[0]["eps"] == 1e-16


# 12. Smaller: a refused fused step changes nothing; foreach Kahan alignment; RAdam fused + complex.
def test_fused_adabelief_refusing_a_max_buffer_dtype_changes_no_step_counter():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = AdaBeliefV2([param], lr=1e-2, fused=True)
    _step(optimizer, [param])
    state = optimizer.state[param]
    # bf16 passes the layout checks every buffer gets, but the kernel keeps this buffer in float32.
    state["max_exp_avg_var"] = state["max_exp_avg_var"].to(torch.bfloat16)
    before = {k: v.clone() for k, v in state.items()}
    before_param = param.detach().clone()
    with pytest.raises(RuntimeError, match="(?i)float"):
        _step(optimizer, [param])
    assert all(torch.equal(state[k], v) for k, v in before.items()) and torch.equal(param, before_param)


def test_foreach_kahan_buffers_stay_with_their_params():
    def run(foreach):
        params = [torch.nn.Parameter(torch.full((5,), 1.0 + i, dtype=torch.bfloat16)) for i in range(3)]
        optimizer = AnyPrecisionAdamW(params, lr=1e-2, use_kahan_summation=True, foreach=foreach)
        _step(optimizer, params, grad=0.3)
        del optimizer.state[params[0]]["compensation"]  # e.g. a state dict written without Kahan for it
        for k in range(3):
            _step(optimizer, params, grad=0.1 * (k + 1))
        return params, optimizer

    single, single_opt = run(False)
    multi, multi_opt = run(True)
    for p, q in zip(single, multi, strict=True):
        assert torch.equal(p, q)
        for key, value in single_opt.state[p].items():
            assert torch.equal(value, multi_opt.state[q][key]), key


def test_radam_fused_group_next_to_a_complex_group():
    real = torch.nn.Parameter(torch.ones(3))
    c = torch.nn.Parameter(torch.tensor([1 + 1j, 2 - 1j]))
    optimizer = build_optimizer(
        "RAdam", [{"params": [real]}, {"params": [c], "fused": False}], lr=1e-2, fused=True
    )
    assert [bool(g["fused"]) for g in optimizer.param_groups] == [True, False]
    ref_real, ref_c = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.tensor([1 + 1j, 2 - 1j]))
    reference = torch.optim.RAdam([ref_real, ref_c], lr=1e-2, decoupled_weight_decay=True)
    for _ in range(7):  # past RAdam's rectification threshold
        for p in (real, c, ref_real, ref_c):
            p.grad = torch.ones_like(p) * (1 - 2j if p.is_complex() else 1)
        optimizer.step()
        reference.step()
    torch.testing.assert_close(c, ref_c, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(real, ref_real, rtol=1e-6, atol=1e-7)
    assert math.isfinite(c.imag.abs().sum().item())
