"""Conformance: every registry entry keeps torch.optim's contract on every path (single, foreach, fused).

The rows live in tests/optim/_table.py; every test here is generic and parametrized over the table.

torch's own generic optimizer tests (test/test_optim.py's TestOptimRenewed over `optim_db`) do not run
here: test_optim.py is not shipped in the torch wheel, and common_optimizers.py, which is, imports
torch.testing._internal.common_utils, which needs `expecttest` (a torch-dev-only package arvc does not
depend on). What its tests check is covered below instead, row by row:
* test_step_is_noop_when_params_have_no_grad, test_param_groups_lr/weight_decay, test_state_dict_*,
  test_state_dict_deterministic (named and unnamed), test_deepcopy_copies_all_public_attrs,
  test_step_pre/post_hook, test_state_dict_pre/post_hook, test_load_state_dict_pre/post_hook (hooks that
  put entries other than a parameter's state into `state`), test_complex, test_tensor_lr,
  test_fused_matches_forloop, test_foreach_matches_forloop, test_compile (inductor), test_grad_scaling /
  amp: here.
* Not applicable: CUDA graphs / capturable (arvc's fused kernels, C++ on CPU and Triton on CUDA, have
  no capturable mode; AdamW and RAdam keep torch's own capturable code unchanged), `differentiable=True`
  (only torch's classes take it, unchanged), test_forloop_goes_right_direction_multigpu,
  test_mixed_device_dtype (one CPU device here), the `maximize`/`amsgrad` flags of the classes without
  them (AdaBelief, AnyPrecisionAdamW; AdaBeliefV2 *is* AMSGrad), and test_peak_memory_foreach /
  test_fused_cpu_matches_cuda (need CUDA).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import pickle
import warnings

import pytest
import torch
from _table import (
    DTYPES,
    LAYOUTS,
    LOW_PRECISION,
    LR,
    STEPS,
    TABLE,
    OptimInfo,
)
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from arvc.optim import get_spec

ROWS = [pytest.param(info, id=info.name) for info in TABLE]
ROW_PATHS = [pytest.param(info, path, id=f"{info.name}-{path}") for info in TABLE for path in info.paths]


def _skip_without_reference(info: OptimInfo):
    if info.needs and importlib.util.find_spec(info.needs) is None:
        pytest.skip(f"reference needs {info.needs}")


def _grads(shapes, steps=STEPS, seed=3, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=generator) * scale for s in shapes] for _ in range(steps)]


def _close(actual, expected, rtol, atol, what=""):
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=what or None)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _groups(model):
    return [
        {"params": list(model[0].parameters()), "lr": 2e-2, "weight_decay": 0.05},
        {"params": list(model[2].parameters()), "lr": 5e-3, "weight_decay": 0.0},
    ]


def _loss(model, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=generator)
    return model(x).pow(2).mean()


def _train(model, optimizer, steps, first_seed=0):
    for seed in range(first_seed, first_seed + steps):
        optimizer.zero_grad()
        _loss(model, seed).backward()
        optimizer.step()


def _same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --- Numbers: every row x path x dtype x layout against its reference ----------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_matches_reference(info, path, dtype_name, layout):
    _skip_without_reference(info)
    dtype = DTYPES[dtype_name]
    shape, make = LAYOUTS[layout]
    torch.manual_seed(0)
    values = torch.randn(shape, dtype=torch.float64).to(dtype)
    data, make_grad = make(values)
    param = torch.nn.Parameter(data)
    if path == "fused" and dtype not in info.fused_dtypes:
        with pytest.raises(RuntimeError, match="fused=True"):
            info.build([param], path)
        return
    if path == "fused" and layout == "non_dense" and info.name != "AdamW":
        # arvc's kernels need dense memory; an explicit fused=True says so at construction.
        with pytest.raises(RuntimeError, match="dense"):
            info.build([param], path)
        return
    optimizer = info.build([param], path)
    reference_dtype = dtype if info.reference_in_param_dtype else torch.float32
    if dtype == torch.float64:
        reference_dtype = torch.float64
    reference_param = torch.nn.Parameter(values.to(reference_dtype).clone())
    reference = info.reference([reference_param], LR)
    for (g,) in _grads([shape]):
        grad = make_grad(g.to(dtype))
        param.grad = grad
        reference_param.grad = grad.contiguous().to(reference_dtype)
        optimizer.step()
        reference.step()
    rtol, atol = info.tolerance(dtype)
    _close(param, reference_param, rtol, atol, f"{info.name} {path} {dtype_name} {layout}")
    assert param.dtype == dtype and param.stride() == data.stride()


# --- Generic behaviours over every row x path ----------------------------------------------------------


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_closure_zero_grad_and_params_without_grad(info, path):
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = info.build([used, unused], path)

    def closure():
        optimizer.zero_grad()
        loss = (used**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == pytest.approx(3.0)
    assert not torch.equal(used.detach(), torch.ones(3))
    assert torch.equal(unused.detach(), torch.ones(3)) and len(optimizer.state[unused]) == 0
    optimizer.zero_grad()
    assert used.grad is None
    before = used.detach().clone()
    optimizer.step()  # no gradients at all: nothing moves
    assert torch.equal(used.detach(), before)


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_state_dict_round_trip_continues_like_an_uninterrupted_run(info, path):
    straight, resumed = _model(), _model()
    straight_opt = info.build(_groups(straight), path)
    _train(straight, straight_opt, 6)

    first = info.build(_groups(resumed), path)
    _train(resumed, first, 3)
    buffer = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    # A fresh optimizer on a deep copy of a fresh model, as a resumed process builds it.
    fresh_model = copy.deepcopy(_model(seed=5))
    fresh_model.load_state_dict(saved["model"])
    fresh = info.build(_groups(fresh_model), path)
    fresh.load_state_dict(saved["optimizer"])
    _train(fresh_model, fresh, 3, first_seed=3)
    assert _same_params(straight, fresh_model)
    assert [g["lr"] for g in fresh.param_groups] == [2e-2, 5e-3]


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_param_groups_equal_separate_optimizers(info, path):
    together = _model()
    apart = _model()
    optimizer = info.build(_groups(together), path)
    separate = [info.build([group], path) for group in _groups(apart)]
    for seed in range(4):
        optimizer.zero_grad()
        _loss(together, seed).backward()
        optimizer.step()
        for opt in separate:
            opt.zero_grad()
        _loss(apart, seed).backward()
        for opt in separate:
            opt.step()
    # Per-group lr and weight decay are honoured: the same numbers as one optimizer per group.
    assert _same_params(together, apart)


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_add_param_group_mid_run(info, path):
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    optimizer = info.build([first], path)
    first.grad = torch.full((3,), 0.5)
    optimizer.step()
    optimizer.add_param_group({"params": [second], "lr": 3e-3})
    alone = torch.nn.Parameter(torch.ones(4))
    alone_opt = info.build([alone], path, lr=3e-3)
    for _ in range(3):
        first.grad, second.grad, alone.grad = (
            torch.full((3,), 0.5),
            torch.full((4,), -0.2),
            torch.full((4,), -0.2),
        )
        optimizer.step()
        alone_opt.step()
    assert torch.equal(second.detach(), alone.detach())
    assert optimizer.param_groups[-1]["lr"] == 3e-3
    assert optimizer.param_groups[-1].get("fused") == optimizer.param_groups[0].get("fused")


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_tensor_lr_follows_torch_adamws_rules(info, path):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    if path == "foreach" and not info.tensor_lr_with_foreach:
        # torch.optim.AdamW refuses a tensor lr with foreach=True (without capturable); so does arvc.
        with pytest.raises(ValueError, match="lr as a Tensor"):
            torch.optim.AdamW(params, lr=torch.tensor(LR), foreach=True)
        with pytest.raises(ValueError, match="lr as a Tensor"):
            info.build(params, path, lr=torch.tensor(LR))
        return
    with pytest.raises(ValueError, match="1-element"):
        info.build(params, path, lr=torch.tensor([LR, LR]))
    for lr in (torch.tensor(LR), torch.tensor([LR]), torch.tensor([[LR]])):
        tensor_params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        float_params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        tensor_opt = info.build(tensor_params, path, lr=lr)
        float_opt = info.build(float_params, path, lr=LR)
        for _ in range(3):
            for p in tensor_params + float_params:
                p.grad = torch.full_like(p, 0.3)
            tensor_opt.step()
            float_opt.step()
        for p, q in zip(tensor_params, float_params, strict=True):
            _close(p, q, 1e-6, 1e-7, f"lr shape {tuple(lr.shape)}")


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_hooks_fire_exactly_once(info, path):
    # torch's own classes exist in this process (their step is then hook-wrapped too).
    torch.optim.RAdam([torch.nn.Parameter(torch.ones(1))])
    torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))])
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = info.build([param], path)
    calls = []
    handles = [
        optimizer.register_step_pre_hook(lambda *a: calls.append("pre")),
        optimizer.register_step_post_hook(lambda *a: calls.append("post")),
        register_optimizer_step_pre_hook(lambda *a: calls.append("global-pre")),
        register_optimizer_step_post_hook(lambda *a: calls.append("global-post")),
        optimizer.register_state_dict_pre_hook(lambda *a: calls.append("sd-pre")),
        optimizer.register_state_dict_post_hook(lambda *a: calls.append("sd-post")),
        optimizer.register_load_state_dict_pre_hook(lambda *a: calls.append("load-pre")),
        optimizer.register_load_state_dict_post_hook(lambda *a: calls.append("load-post")),
    ]
    try:
        param.grad = torch.ones(3)
        optimizer.step()
        assert sorted(calls) == ["global-post", "global-pre", "post", "pre"]
        calls.clear()
        optimizer.load_state_dict(optimizer.state_dict())
        assert sorted(calls) == ["load-post", "load-pre", "sd-post", "sd-pre"]
    finally:
        for handle in handles:
            handle.remove()


def _mark_load_pre_hook(optimizer, state_dict):
    # torch's _load_state_dict_pre_hook2: returns a modified copy, which the load must use.
    state_dict = copy.deepcopy(state_dict)
    state_dict["param_groups"][0]["lr"] = 3e-3
    return state_dict


def _mark_load_post_hook(optimizer):
    # torch's _load_state_dict_post_hook: entries that are not a parameter's state go into `state`.
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 3e-3
    optimizer.state["ran_load_state_dict_post_hook"] = True


@pytest.mark.parametrize("with_pre_hook", [False, True], ids=["post", "pre_post"])
@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_load_state_dict_hooks_may_put_other_entries_into_state(info, path, with_pre_hook):
    # torch's test_load_state_dict_post_hook / test_load_state_dict_pre_post_hook: `state` may hold
    # entries keyed by something other than a parameter, with values other than a dict; a load (and a
    # second one, which loads those entries back) and the steps after it leave them alone.
    param = torch.nn.Parameter(torch.ones(2, 3))
    optimizer = info.build([param], path)
    param.grad = torch.full((2, 3), 0.5)
    optimizer.step()
    if with_pre_hook:
        optimizer.register_load_state_dict_pre_hook(_mark_load_pre_hook)
    optimizer.register_load_state_dict_post_hook(_mark_load_post_hook)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["ran_load_state_dict_pre_hook2"] is with_pre_hook
    assert optimizer.state["ran_load_state_dict_post_hook"] is True
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.step()
    assert optimizer.state["ran_load_state_dict_post_hook"] is True


@pytest.mark.parametrize("named0, named1", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_state_dict_deterministic_across_a_load(info, path, named0, named1):
    # torch's test_state_dict_deterministic: an optimizer built with the same arguments that loaded
    # another's state dict steps in lockstep with it and returns an equal state dict (param_names aside:
    # they are optional), also for a repeated group.
    torch.manual_seed(0)
    weight, bias = torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(2))
    x = torch.randn(3)

    def named(params, is_named):
        return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else params

    def without_param_names(state_dict):
        state_dict = copy.deepcopy(state_dict)
        for group in state_dict["param_groups"]:
            group.pop("param_names", None)
        return state_dict

    def step(optimizer, w, b):
        optimizer.zero_grad()
        (w.mv(x) + b).pow(2).sum().backward()
        optimizer.step()

    optimizer = info.build(named([weight, bias], named0), path)
    for _ in range(5):
        step(optimizer, weight, bias)
    weight_c = torch.nn.Parameter(weight.detach().clone())
    bias_c = torch.nn.Parameter(bias.detach().clone())
    optimizer_c = info.build(named([weight_c, bias_c], named1), path)
    optimizer_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    # groups added later take the defaults: a load (or a copy) must not have added any
    assert optimizer_c.defaults == optimizer.defaults == copy.deepcopy(optimizer).defaults
    for _ in range(5):
        step(optimizer, weight, bias)
        step(optimizer_c, weight_c, bias_c)
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    original, loaded = (
        without_param_names(optimizer.state_dict()),
        without_param_names(optimizer_c.state_dict()),
    )
    assert loaded["param_groups"] == original["param_groups"]
    torch.testing.assert_close(loaded["state"], original["state"], rtol=0, atol=0)
    optimizer_c.param_groups.extend(optimizer_c.param_groups)
    assert (
        without_param_names(optimizer_c.state_dict())["param_groups"][-1]
        == without_param_names(optimizer.state_dict())["param_groups"][-1]
    )


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_deepcopy_and_pickle_continue_identically(info, path):
    model = _model()
    optimizer = info.build(_groups(model), path)
    _train(model, optimizer, 2)
    copies = [copy.deepcopy((model, optimizer)), pickle.loads(pickle.dumps((model, optimizer)))]
    _train(model, optimizer, 2, first_seed=2)
    for copied_model, copied_optimizer in copies:
        _train(copied_model, copied_optimizer, 2, first_seed=2)
        assert _same_params(model, copied_model)


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_empty_and_duplicate_params_are_errors(info, path):
    with pytest.raises(ValueError, match="empty parameter list"):
        info.build([], path)
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        info.build([{"params": [p]}, {"params": [p]}], path)


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_sparse_gradients_are_a_clear_error(info, path):
    param = torch.nn.Parameter(torch.ones(5, 2))
    optimizer = info.build([param], path)
    param.grad = torch.ones(5, 2).to_sparse()
    with pytest.raises(RuntimeError, match="(?i)sparse"):
        optimizer.step()


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_complex_params_step_as_their_real_view(info, path):
    if info.name == "AdamW" and path == "fused":
        # torch.optim.AdamW's own fused kernel refuses complex params; the registry never picks it then.
        from arvc.optim import build_optimizer

        auto = build_optimizer("AdamW", [torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))], lr=LR)
        assert not auto.param_groups[0]["fused"]
        return
    torch.manual_seed(0)
    values = torch.randn(5, dtype=torch.complex64)
    complex_param = torch.nn.Parameter(values.clone())
    real_param = torch.nn.Parameter(torch.view_as_real(values).clone())
    complex_opt = info.build([complex_param], path)
    real_opt = info.build([real_param], path)
    for (g,) in _grads([(5,)]):
        grad = torch.complex(g, g.flip(0))
        complex_param.grad = grad
        real_param.grad = torch.view_as_real(grad).clone()
        complex_opt.step()
        real_opt.step()
    assert complex_param.dtype == torch.complex64
    assert torch.equal(torch.view_as_real(complex_param.detach()), real_param.detach())
    assert complex_param.imag.abs().sum() > 0


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_nan_and_inf_gradients_propagate_like_the_single_tensor_path(info, path):
    grads = [
        torch.tensor([1.0, float("nan"), 0.5, 2.0]),
        torch.tensor([float("inf"), -float("inf"), 0.1, 1.0]),
    ]
    params = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))]
    single = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))]
    optimizer, reference = info.build(params, path), info.build(single, "single")
    for p, q, g in zip(params, single, grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    optimizer.step()
    reference.step()
    for p, q in zip(params, single, strict=True):
        assert torch.equal(p.isnan(), q.isnan()) and torch.equal(p.isinf(), q.isinf())
        _close(p, q, 1e-6, 1e-7)
    assert params[0][1].isnan() and torch.isfinite(params[0][[0, 2, 3]]).all()


@pytest.mark.parametrize("scale", [1e-30, 1e30], ids=["tiny", "huge"])
@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_gradients_from_1e_minus30_to_1e30(info, path, scale):
    _skip_without_reference(info)
    param = torch.nn.Parameter(torch.linspace(-1, 1, 6))
    reference_param = torch.nn.Parameter(torch.linspace(-1, 1, 6))
    optimizer, reference = info.build([param], path), info.reference([reference_param], LR)
    for (g,) in _grads([(6,)], scale=scale):
        param.grad, reference_param.grad = g.clone(), g.clone()
        optimizer.step()
        reference.step()
    assert torch.isfinite(param).all()
    _close(param, reference_param, 1e-5, 1e-6)


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_torch_compile_of_step(info, path):
    # aot_eager traces the step with fake tensors and functionalizes it (what failed without fake
    # implementations of arvc's fused ops) and runs the traced graph; inductor codegen is one test below.
    torch._dynamo.reset()
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    eager = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    optimizer, eager_opt = info.build(params, path), info.build(eager, path)
    step = torch.compile(optimizer.step, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's graph-break notes
        for k in range(3):
            for p, q in zip(params, eager, strict=True):
                p.grad = torch.full_like(p, 0.1 * (k + 1))
                q.grad = torch.full_like(q, 0.1 * (k + 1))
            step()
            eager_opt.step()
    for p, q in zip(params, eager, strict=True):
        _close(p, q, 1e-6, 1e-7)


def test_inductor_compiles_a_default_built_optimizer():
    from arvc.optim import build_optimizer

    torch._dynamo.reset()
    params, eager = [torch.nn.Parameter(torch.ones(4))], [torch.nn.Parameter(torch.ones(4))]
    optimizer = build_optimizer("AdaBelief", params, lr=LR)
    assert optimizer.param_groups[0]["fused"]  # the registry's default on CPU
    eager_opt = build_optimizer("AdaBelief", eager, lr=LR)
    step = torch.compile(optimizer.step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            params[0].grad, eager[0].grad = torch.full((4,), 0.2), torch.full((4,), 0.2)
            step()
            eager_opt.step()
    _close(params[0], eager[0], 1e-6, 1e-7)


@pytest.mark.parametrize("info, path", ROW_PATHS)
def test_grad_scaler(info, path):
    scaled_model, plain_model = _model(), _model()
    optimizer = info.build(list(scaled_model.parameters()), path)
    plain = info.build(list(plain_model.parameters()), path)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for seed in range(3):
        optimizer.zero_grad()
        scaler.scale(_loss(scaled_model, seed)).backward()
        scaler.step(optimizer)
        scaler.update()
        plain.zero_grad()
        _loss(plain_model, seed).backward()
        plain.step()
    for p, q in zip(scaled_model.parameters(), plain_model.parameters(), strict=True):
        _close(p, q, 1e-5, 1e-6)
    # An inf in the scaled gradients skips the step.
    before = [p.detach().clone() for p in scaled_model.parameters()]
    optimizer.zero_grad()
    scaler.scale(_loss(scaled_model, 9)).backward()
    next(scaled_model.parameters()).grad[0, 0] = float("inf")
    scaler.step(optimizer)
    assert all(torch.equal(p, b) for p, b in zip(scaled_model.parameters(), before, strict=True))


# The rows whose moments can be stored in bf16/fp16: torch's in the parameter's dtype, AnyPrecisionAdamW's
# in the dtype it is given (arvc's AdaBelief keeps float32 moments for any parameter: test_adabelief.py).
LOW_PRECISION_MOMENTS = [
    pytest.param(info, dtype, id=f"{info.name}-{str(dtype).removeprefix('torch.')}")
    for info in TABLE
    if info.reference_in_param_dtype or info.moment_dtype_kwargs
    for dtype in LOW_PRECISION
]


@pytest.mark.parametrize("info, dtype", LOW_PRECISION_MOMENTS)
def test_low_precision_moments_keep_their_dtype_on_every_path(info, dtype):
    """bf16/fp16 moments stay in their dtype through a step on every path that takes the dtype, the step
    count float32: state dtypes do not depend on the path (so a checkpoint moves between machines)."""
    for path in (p for p in info.paths if p != "fused" or dtype in info.fused_dtypes):
        param = torch.nn.Parameter(torch.ones(3, dtype=dtype))
        optimizer = info.build([param], path, **dict.fromkeys(info.moment_dtype_kwargs, dtype))
        param.grad = torch.ones_like(param)
        optimizer.step()
        state = {k: v.dtype for k, v in optimizer.state[param].items()}
        assert state == {key: kept or dtype for key, kept in info.state_dtypes}, path


# --- Construction: bad hyperparameters, paths a class does not have -----------------------------------

COMMON_BAD_HYPERPARAMETERS = (
    ({"lr": -1.0}, "learning rate"),
    ({"betas": (1.0, 0.999)}, "beta parameter at index 0"),
    ({"betas": (0.9, 1.5)}, "beta parameter at index 1"),
    ({"eps": -1e-8}, "epsilon"),
    ({"weight_decay": -0.1}, "weight_decay"),
)
BAD_HYPERPARAMETERS = [
    pytest.param(info, kwargs, name, id=f"{info.name}-{name}-{kwargs}")
    for info in TABLE
    for kwargs, name in COMMON_BAD_HYPERPARAMETERS + info.bad_hyperparameters
]


@pytest.mark.parametrize("info, kwargs, name", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_value_errors_naming_them(info, kwargs, name):
    with pytest.raises(ValueError, match=f"(?i){name}"):
        info.build([torch.nn.Parameter(torch.ones(2))], info.paths[0], **kwargs)


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in TABLE if "fused" not in i.paths])
def test_a_path_the_class_lacks_is_refused_by_name(info):
    with pytest.raises(TypeError, match="does not accept fused"):
        info.build([torch.nn.Parameter(torch.ones(2))], info.paths[0], fused=True)


MAXIMIZE_ROW_PATHS = [
    pytest.param(info, path, id=f"{info.name}-{path}")
    for info in TABLE
    for path in info.paths
    if "maximize" in get_spec(info.name).supported_kwargs
]


@pytest.mark.parametrize("info, path", MAXIMIZE_ROW_PATHS)
def test_maximize_is_minimizing_the_negated_gradient(info, path):
    up, down = torch.nn.Parameter(torch.linspace(-1, 1, 6)), torch.nn.Parameter(torch.linspace(-1, 1, 6))
    maximizing, minimizing = info.build([up], path, maximize=True), info.build([down], path)
    for (g,) in _grads([(6,)], steps=6):
        up.grad, down.grad = g.clone(), -g
        maximizing.step()
        minimizing.step()
    assert torch.equal(up.detach(), down.detach())
    assert not torch.equal(up.detach(), torch.linspace(-1, 1, 6))
