"""The fused C++ path computes the single-tensor reference's update (issue #4's "all paths agree").

The configurations are the FUSED rows of _optim_helpers.CONFIGS, and the tolerance is its
TOLERANCES[FUSED] (stated and explained there): float32 within 1e-6; bf16/fp16 storage at most 1 ulp
(+1e-6 absolute, for results of cancellation) anywhere and on at most 0.5% of the elements, checked after
every step from a shared state.
"""

import warnings
from pathlib import Path

import pytest
import torch
from _optim_helpers import FUSED, FUSED_KERNELS, TOLERANCES, configs, gradient_stream

from arvc.optim import (
    OPTIMIZERS,
    AdaBelief,
    AdaBeliefV2,
    AnyPrecisionAdamW,
    RAdam,
    _fused,
    build_optimizer,
    build_scheduler,
)

SHAPES = [(7, 5), (5,), (40_000,), (2, 3, 4), (70_001,)]  # > one 32k chunk, odd sizes
TOLERANCE = TOLERANCES[FUSED]


def _optimizer(cls, kwargs, path, start, lr):
    """Parameters cloned from `start`, in two param groups; path: "single" (the loop), "foreach", "fused"."""
    params = [torch.nn.Parameter(t.clone()) for t in start]
    groups = [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "lr": lr / 3}]
    choice = {"foreach": False} if path == "single" else {path: True}
    return params, cls(groups, lr=lr, **choice, **kwargs)


def _run(cls, kwargs, path, dtype=torch.float32, steps=20, lr=1e-2):
    """`steps` steps over SHAPES."""
    torch.manual_seed(1)
    params, optimizer = _optimizer(cls, kwargs, path, [torch.randn(s).to(dtype) for s in SHAPES], lr)
    for step, grads in enumerate(gradient_stream(SHAPES, steps, seed=3)):
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.grad = None if (step % 7 == 3 and i == 0) else g.to(dtype)  # a param without grad
        optimizer.step()
    return params, optimizer


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """The larger gap to x's two neighbours (at a power of two the gap above is twice the one below)."""
    up = torch.nextafter(x, torch.full_like(x, float("inf"))).float() - x.float()
    down = x.float() - torch.nextafter(x, torch.full_like(x, float("-inf"))).float()
    return torch.maximum(up.abs(), down.abs())


def _assert_agree(expected: torch.Tensor, actual: torch.Tensor, what: str):
    assert expected.dtype == actual.dtype, what
    if expected.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=TOLERANCE.atol, rtol=TOLERANCE.rtol, msg=what)
        return
    differ = expected != actual
    # `ulps` of the stored value, plus atol for results of cancellation (m + w*(g - m) ≈ 0: the float32
    # inputs' last bits decide whether the result is 4e-9 or 0, far below the operands' ulps).
    bound = TOLERANCE.ulps * torch.maximum(_ulp(expected), _ulp(actual)) + TOLERANCE.atol
    assert (expected.float() - actual.float()).abs().le(bound).all(), (
        f"{what}: more than {TOLERANCE.ulps} ulp"
    )
    assert differ.float().mean().item() <= TOLERANCE.flipped, f"{what}: {differ.sum().item()} elements differ"


def _assert_same_run(reference, fused, reference_params, fused_params):
    assert all(g["fused"] for g in fused.param_groups)
    for p, q in zip(reference_params, fused_params, strict=True):
        _assert_agree(p.detach(), q.detach(), "param")
        assert reference.state[p].keys() == fused.state[q].keys()
        for key, value in reference.state[p].items():
            if key == "compensation":
                # Where the parameter's rounding flipped, the compensation flips the other way: what
                # must agree is the value Kahan tracks, parameter + compensation, to far below 1 ulp.
                tracked = p.detach().float() + value.float()
                tracked_fused = q.detach().float() + fused.state[q][key].float()
                bound = _ulp(p.detach()) / 64 + 1e-6 * p.detach().float().abs()
                assert (tracked - tracked_fused).abs().le(bound).all(), "parameter + compensation"
                continue
            _assert_agree(value, fused.state[q][key], key)


@pytest.mark.parametrize("cls, kwargs", configs(FUSED, "cls", "kwargs", where=lambda c: not c.low_precision))
def test_fused_matches_the_single_tensor_reference_in_float32(cls, kwargs):
    # RAdam's reference is torch.optim.RAdam's own for-loop; arvc's optimizers have their own.
    reference_cls = torch.optim.RAdam if cls is RAdam else cls
    reference_params, reference = _run(reference_cls, kwargs, "single")
    fused_params, fused = _run(cls, kwargs, "fused")
    _assert_same_run(reference, fused, reference_params, fused_params)


def _step_by_step(cls, kwargs, dtype, steps=20, lr=1e-3):
    """Both paths take each step from the same state; every step's results are compared, then the
    fused run is reset to the reference's state. (Over many steps, a 1-ulp rounding flip in a bf16
    buffer would grow into an honest but larger divergence, which would say nothing about the kernel.)"""
    torch.manual_seed(1)
    start = [torch.randn(s).to(dtype) for s in SHAPES]
    runs = [_optimizer(cls, kwargs, path, start, lr) for path in ("single", "fused")]
    (reference_params, reference), (fused_params, fused) = runs
    for grads in gradient_stream(SHAPES, steps, seed=3):
        for params, optimizer in runs:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(dtype)
            optimizer.step()
        _assert_same_run(reference, fused, reference_params, fused_params)
        with torch.no_grad():
            for p, q in zip(reference_params, fused_params, strict=True):
                q.copy_(p)
                for key, value in reference.state[p].items():
                    fused.state[q][key].copy_(value)
    return fused


@pytest.mark.parametrize(
    "cls, dtype, kwargs", configs(FUSED, "cls", "dtype", "kwargs", where=lambda c: c.low_precision)
)
def test_fused_matches_with_low_precision_storage_kahan_and_stochastic_rounding(cls, dtype, kwargs):
    fused = _step_by_step(cls, kwargs, dtype)
    for group in fused.param_groups:  # the buffers kept the dtypes asked for (AnyPrecisionAdamW's choice)
        for p in group["params"]:
            if "momentum_dtype" in group:
                assert fused.state[p]["exp_avg"].dtype == group["momentum_dtype"]
                assert fused.state[p]["exp_avg_sq"].dtype == group["variance_dtype"]


def test_a_gradient_laid_out_unlike_its_parameter_is_handled():
    param = torch.nn.Parameter(torch.randn(6, 9))
    twin = torch.nn.Parameter(param.detach().clone())
    fused, loop = AdaBelief([param], lr=1e-2, fused=True), AdaBelief([twin], lr=1e-2, foreach=False)
    for _ in range(3):
        grad = torch.randn(9, 6)
        param.grad, twin.grad = grad.t(), grad.t().contiguous()  # a transposed (non-contiguous) gradient
        fused.step()
        loop.step()
    torch.testing.assert_close(param, twin, atol=TOLERANCE.atol, rtol=TOLERANCE.rtol)


def test_resume_crosses_paths():
    """A fused run's state continues on the foreach path (a machine without a compiler) and back."""
    fused_params, fused = _run(AnyPrecisionAdamW, {}, "fused", steps=5)
    saved = fused.state_dict()
    params = [torch.nn.Parameter(p.detach().clone()) for p in fused_params]
    resumed = AnyPrecisionAdamW(
        [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "lr": 1e-2 / 3}], foreach=True
    )
    resumed.load_state_dict(saved)
    assert not any(g["fused"] for g in resumed.param_groups)  # this process's choice, not the file's
    assert all(g["foreach"] for g in resumed.param_groups)
    for p, q in zip(fused_params, params, strict=True):
        torch.testing.assert_close(resumed.state[q]["exp_avg"], fused.state[p]["exp_avg"])


def test_a_changing_learning_rate_builds_once_and_never_compiles(monkeypatch):
    """50 steps under a scheduler that changes lr every step: the kernel is built (or loaded) at most
    once per process, torch.compile is never involved (lr is a plain argument of the kernel), and
    every step really uses its own lr (the fused run tracks the loop's run)."""
    from torch._dynamo.utils import counters

    builds_before = _fused.builds
    graphs_before = sum(counters["stats"].values())
    runs = {}
    for path in ("single", "fused"):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(1000))
        choice = {"foreach": False} if path == "single" else {"fused": True}
        optimizer = AdaBeliefV2([param], lr=1e-2, **choice)
        scheduler = build_scheduler(optimizer, "auto", total_epochs=50, warmup_epochs=5)
        lrs = []
        for grads in gradient_stream([(1000,)], 50, seed=5):
            param.grad = grads[0]
            optimizer.step()
            lrs.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
        runs[path] = (param.detach(), lrs)
    assert len(set(runs["fused"][1])) == 50  # the lr really changed every step
    torch.testing.assert_close(runs["fused"][0], runs["single"][0], atol=TOLERANCE.atol, rtol=TOLERANCE.rtol)
    assert _fused.builds - builds_before <= 1
    assert sum(counters["stats"].values()) == graphs_before


def test_registry_switches_fused_on_for_cpu_and_off_where_no_kernel_exists():
    def fused_of(name, dtype, **extra):
        param = torch.nn.Parameter(torch.zeros(4, dtype=dtype))
        return build_optimizer(name, [param], lr=1e-3, **extra).param_groups[0]["fused"]

    for name in FUSED_KERNELS:
        assert fused_of(name, torch.float32) is True, name
        assert fused_of(name, torch.float32, foreach=True) is False, name  # the user's choice wins
    assert fused_of("AdaBelief", torch.float64) is False  # no float64 kernel: foreach
    assert fused_of("RAdam", torch.bfloat16) is False  # torch keeps RAdam's state in bf16


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda p: AdaBelief(p, fused=True, foreach=True), "cannot both be True"),
        (lambda p: AdaBelief([torch.nn.Parameter(torch.zeros(3).double())], fused=True), "float64"),
        (lambda p: AnyPrecisionAdamW(p, fused=True, momentum_dtype="float64"), "pass fused=False"),
        (lambda p: RAdam(p, fused=True, capturable=True), "capturable"),
        (lambda p: RAdam([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], fused=True), "float32"),
    ],
)
def test_unsupported_fused_requests_fail_up_front(build, error):
    with pytest.raises((RuntimeError, ValueError), match=error):
        build([torch.nn.Parameter(torch.zeros(3))])


def test_no_compiler_falls_back_to_foreach_with_one_warning(monkeypatch):
    def no_compiler():
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(_fused, "_loaded", None)
    monkeypatch.setattr(_fused, "_failure", None)
    monkeypatch.setattr(_fused, "_warned", False)
    monkeypatch.setattr(_fused, "_build", no_compiler)
    param = torch.nn.Parameter(torch.ones(3))
    with pytest.warns(RuntimeWarning, match="could not be built.*Ninja is required.*foreach path instead"):
        first = build_optimizer("AdaBelief", [param], lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second optimizer does not warn again
        second = build_optimizer("AnyPrecisionAdamW", [param], lr=1e-3)
    for optimizer in (first, second):
        assert optimizer.param_groups[0]["fused"] is False
        param.grad = torch.ones(3)
        optimizer.step()  # and it trains on the foreach path
    assert torch.isfinite(param).all()


@pytest.mark.parametrize("stochastic", [True, False])
def test_special_values_take_the_careful_path(stochastic):
    """NaN/inf gradients and values that round past the largest bf16 take the kernel's rare path; the
    result must still be the reference's (same NaN/inf positions, finite values within 1 ulp)."""
    kwargs = dict(
        use_kahan_summation=True,
        momentum_dtype="bf16",
        variance_dtype="bf16",
        stochastic_rounding=stochastic,
        lr=1e-3,
    )
    start = torch.randn(5000).to(torch.bfloat16)
    start[:8] = torch.tensor([3.38e38, -3.38e38, 1.0, 0.0, -0.0, 2.0, float("inf"), 5.0])
    grad = torch.randn(5000)
    grad[8:16] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e38, -1e38, 3e19, 0.0, 1e-30])
    results = []
    for path in ({"foreach": False}, {"fused": True}):
        param = torch.nn.Parameter(start.clone())
        optimizer = AnyPrecisionAdamW([param], **path, **kwargs)
        for _ in range(2):
            param.grad = grad.to(torch.bfloat16)
            optimizer.step()
        results.append([param.detach(), *(optimizer.state[param][k] for k in ("exp_avg", "exp_avg_sq"))])
    for expected, actual in zip(*results, strict=True):
        assert torch.equal(expected.isnan(), actual.isnan())
        assert torch.equal(expected.isinf(), actual.isinf())
        finite = expected.isfinite()
        assert torch.equal(expected[~finite & ~expected.isnan()], actual[~finite & ~actual.isnan()])
        _assert_agree(expected[finite], actual[finite], "finite values")


def test_stochastic_rounding_never_rounds_a_finite_moment_up_to_inf():
    """v = g² just above the largest bf16 (beta2 = 0): adding random low bits would carry a quarter of
    these into inf; the reference rounds them to nearest (the largest finite bf16), and so must the
    kernel's careful path. (A kernel without it fails here.)"""
    g = torch.full((4000,), 1.84201e19)  # g*g = 3.3930e38: above bf16's max 3.3895e38, below the midpoint
    states = []
    for path in ({"foreach": False}, {"fused": True}):
        param = torch.nn.Parameter(torch.zeros(4000))
        optimizer = AnyPrecisionAdamW(
            [param], lr=1e-3, betas=(0.9, 0.0), momentum_dtype="bf16", variance_dtype="bf16", **path
        )
        param.grad = g.clone()
        optimizer.step()
        states.append(optimizer.state[param]["exp_avg_sq"])
    reference, fused = states
    assert torch.isfinite(reference).all() and torch.isfinite(fused).all()
    assert torch.equal(reference, fused)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, caplog):
    """torch waits forever on a build lock; one left by a killed build must not hang later runs."""
    import os
    import time

    stale, fresh = tmp_path / "stale", tmp_path / "fresh"
    stale.touch()
    fresh.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    _fused._remove_stale_lock(stale)
    _fused._remove_stale_lock(fresh)
    _fused._remove_stale_lock(tmp_path / "absent")
    assert not stale.exists() and fresh.exists()
    assert "stale build lock" in caplog.text


@pytest.mark.parametrize("name", FUSED_KERNELS)
def test_a_fused_step_counts_as_an_in_place_change_for_autograd(name):
    """Like torch's own optimizers: backward through a graph that saved the old weights fails loudly."""
    weight = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = OPTIMIZERS[name].cls([weight], lr=1e-2, fused=True)
    x = torch.randn(2, 4, requires_grad=True)
    loss = (x @ weight).pow(2).sum()  # saves `weight` for the gradient of x
    weight.grad = torch.randn(4, 4)
    version = weight._version
    optimizer.step()
    assert weight._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# --- found by an independent review of the kernels ------------------------------------------------------
def test_channels_last_parameters_round_with_the_same_bits():
    """The kernel walks memory in order; the reference hashes each element's memory position too, so a
    channels_last parameter's stochastically rounded moments agree as a contiguous one's do."""
    torch.manual_seed(3)
    start = torch.randn(8, 16, 5, 7).to(memory_format=torch.channels_last)
    grad = torch.randn(8, 16, 5, 7).to(memory_format=torch.channels_last)
    states = []
    for path in ({"foreach": False}, {"fused": True}):
        param = torch.nn.Parameter(start.clone(memory_format=torch.channels_last))
        optimizer = AnyPrecisionAdamW([param], lr=1e-3, momentum_dtype="bf16", variance_dtype="bf16", **path)
        param.grad = grad.clone(memory_format=torch.channels_last)
        optimizer.step()
        states.append(optimizer.state[param])
    for key in ("exp_avg", "exp_avg_sq"):
        differ = (states[0][key] != states[1][key]).float().mean().item()
        assert differ <= TOLERANCE.flipped, f"{key}: {differ:.1%} of elements differ"


def test_amsgrad_maximum_keeps_a_nan_as_torch_maximum_does():
    runs = []
    for path in ({"foreach": False}, {"fused": True}):
        param = torch.nn.Parameter(torch.zeros(2))
        optimizer = AdaBeliefV2([param], lr=1e-3, **path)
        for grad in ([0.5, 0.5], [float("inf"), 0.5], [0.5, 0.5]):
            param.grad = torch.tensor(grad)
            optimizer.step()
        runs.append((param.detach().clone(), optimizer.state[param]["max_exp_avg_var"].clone()))
    (p_ref, m_ref), (p_fused, m_fused) = runs
    assert torch.equal(p_ref.isnan(), p_fused.isnan()) and torch.equal(m_ref.isnan(), m_fused.isnan())
    assert m_ref[0].isnan()


def test_state_follows_a_parameter_converted_to_channels_last():
    """State made for a contiguous parameter, then `model.to(memory_format=channels_last)`: the fused step
    re-lays the state out (same tensor objects) instead of failing, and matches the reference."""
    runs = []
    for path in ({"foreach": False}, {"fused": True}):
        torch.manual_seed(4)
        param = torch.nn.Parameter(torch.randn(4, 6, 3, 3))
        optimizer = AdaBelief([param], lr=1e-2, **path)
        param.grad = torch.randn(4, 6, 3, 3)
        optimizer.step()
        buffer = optimizer.state[param]["exp_avg"]
        param.data = param.data.to(memory_format=torch.channels_last)
        param.grad = torch.randn(4, 6, 3, 3).to(memory_format=torch.channels_last)
        optimizer.step()
        assert optimizer.state[param]["exp_avg"] is buffer
        runs.append(param.detach().clone())
    torch.testing.assert_close(runs[1], runs[0], atol=TOLERANCE.atol, rtol=TOLERANCE.rtol)


def test_a_refused_step_changes_nothing():
    good = torch.nn.Parameter(torch.zeros(3))
    bad = torch.nn.Parameter(torch.zeros(3))
    optimizer = AdaBelief([good, bad], lr=1e-2, fused=True)
    good.grad, bad.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    optimizer.state[bad]["exp_avg"] = torch.zeros(4)  # corrupt the second parameter's state
    with pytest.raises(RuntimeError, match="elements"):
        optimizer.step()
    assert optimizer.state[good]["step"].item() == 1.0  # the first parameter's counter did not move


@pytest.mark.parametrize("seed", [2**63 + 5, -7])
def test_any_int_seed_rounds_as_the_reference(seed):
    states = []
    for path in ({"foreach": False}, {"fused": True}):
        param = torch.nn.Parameter(torch.linspace(-1, 1, 5000))
        optimizer = AnyPrecisionAdamW([param], lr=1e-3, variance_dtype="bf16", seed=seed, **path)
        param.grad = torch.linspace(1, 2, 5000)
        optimizer.step()
        states.append(optimizer.state[param]["exp_avg_sq"])
    assert (states[0] != states[1]).float().mean().item() <= TOLERANCE.flipped


def test_the_cpu_library_registers_exactly_the_declared_fused_ops():
    """FUSED_OPS is the one list of fused ops: the C++ library's CPU kernels (fused_cpu.cpp) are its rows,
    each with a fake (meta) registration for torch.compile, and every optimizer's fused step is one."""
    _fused.fused_kernels()
    registered = {
        name.removeprefix("arvc_fused::")
        for name in torch._C._dispatch_get_registrations_for_dispatch_key("CPU")
        if name.startswith("arvc_fused::")
    }
    assert registered == set(_fused.FUSED_OPS)
    for op in _fused.FUSED_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"arvc_fused::{op}", "Meta")


def test_a_build_lock_left_by_a_killed_build_does_not_hang_the_next_run(tmp_path):
    """torch waits forever on its build lock file; a fresh one left by a killed build must not block."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    code = "from arvc.optim import _fused; _fused.fused_kernels(); print('ok')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)  # build once
    (build_directory,) = tmp_path.glob("arvc_fused_cpu_*")
    (build_directory / "lock").touch()  # what a build killed mid-way leaves behind
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr
    assert not (build_directory / "lock").exists()


def test_the_build_cache_is_keyed_by_install(tmp_path):
    """build.ninja holds one install's absolute paths: two installs (two clones) sharing one build folder
    rebuilt on every alternation. The folder key now differs per source location and is stable for one."""
    from arvc.optim._fused import _FLAGS, _cache_key

    texts = [("fused_cpu.cpp", "int main() {}"), ("kernels.h", "#pragma once")]
    one, two = tmp_path / "clone-1" / "_fused_cpu", tmp_path / "clone-2" / "_fused_cpu"
    for folder in (one, two):
        folder.mkdir(parents=True)
    key_one = _cache_key(texts, _FLAGS, "flags: avx2", one)
    assert key_one != _cache_key(texts, _FLAGS, "flags: avx2", two)
    assert key_one == _cache_key(texts, _FLAGS, "flags: avx2", one)
    assert key_one == _cache_key(texts, _FLAGS, "flags: avx2", one.parent / ".." / "clone-1" / "_fused_cpu")
    assert key_one != _cache_key([("fused_cpu.cpp", "int main() { return 1; }")], _FLAGS, "", one)


def test_each_scalar_table_is_laid_out_once_for_both_kernels():
    """The per-step scalars are computed once on the host (arvc.optim._fused_args) and each op's table has
    one named layout: the C++ kernels read it through the structs generated from that layout into the
    build folder (what the loaded library was compiled with), a row is built by column name only."""
    from arvc.optim import _fused_args

    _fused.fused_kernels()
    (build_directory,) = {
        Path(p).parent for p in torch.ops.loaded_libraries if Path(p).name.startswith("arvc_fused_cpu_")
    }
    assert (build_directory / "scalars.h").read_text() == _fused_args.cpp_header()
    for layout in _fused_args.LAYOUTS:
        assert (
            f"struct {layout.struct} {{\n  float {', '.join(layout.columns)};\n}};"
            in _fused_args.cpp_header()
        )
    row = dict.fromkeys(_fused_args.RADAM.columns, 0.0)
    assert _fused_args.RADAM.row(**{**row, "rect": 2.0})[_fused_args.RADAM.columns.index("rect")] == 2.0
    with pytest.raises(ValueError, match="expected"):
        _fused_args.RADAM.row(**{k: v for k, v in row.items() if k != "rect"})


def test_the_checks_run_once_per_layout_not_once_per_step(monkeypatch):
    """The C++ path's argument checks (arvc.optim._fused_args, the Triton path's too) are kept while the
    tensors' layouts stay the same: new gradient tensors every step (zero_grad's default) do not run them
    again, a gradient laid out unlike its parameter (copied for the kernel) does, every step; the steps
    still equal the single-tensor loop's."""
    from arvc.optim import _fused_args, _fused_cpu_steps

    checks = []

    def counted(*args):
        checks.append(1)
        return _fused_args.check_adabelief(*args)

    monkeypatch.setattr(_fused_cpu_steps, "check_adabelief", counted)
    monkeypatch.setattr(_fused_args, "_plans", [])
    torch.manual_seed(4)
    start = [torch.randn(6, 9), torch.randn(5)]
    params = [torch.nn.Parameter(t.clone()) for t in start]
    twins = [torch.nn.Parameter(t.clone()) for t in start]
    fused, loop = AdaBelief(params, lr=1e-2, fused=True), AdaBelief(twins, lr=1e-2, foreach=False)
    expected = []
    for step in range(6):
        grads = [torch.randn(6, 9), torch.randn(5)]
        if step >= 4:  # transposed: a laid-out copy for the kernel, checked anew each step
            grads[0] = grads[0].t().contiguous().t()
        for p, q, g in zip(params, twins, grads, strict=True):
            p.grad, q.grad = g.clone(memory_format=torch.preserve_format), g.clone()
        fused.step()
        loop.step()
        expected.append(1 if step in (0, 4, 5) else 0)
        assert len(checks) == sum(expected), f"step {step}"
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, atol=TOLERANCE.atol, rtol=TOLERANCE.rtol)
