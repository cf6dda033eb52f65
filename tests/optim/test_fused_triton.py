"""arvc's Triton kernels (the fused path on CUDA) equal its fused C++ CPU kernels, bit for bit.

Without a GPU (CI) the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set below before the
kernels are imported) on CPU tensors, through the optimizers as built by the registry: the Triton side
is pointed at CPU tensors by patching `_fused._uses_triton`. The kernels are written so that the
interpreter's result stands for the GPU's (correctly rounded `tl.div_rn` / `tl.sqrt_rn`, bf16 conversions
as integer bit operations, no a*b+c fusion; see _fused_triton/common.py), and compile-only checks on the
PTX for sm_75 to sm_120 (test_the_ptx_...) hold the compiled code to that. On a GPU machine,
ARVC_TRITON_GPU=1 runs the same comparisons with the Triton side on CUDA (benchmarks/gpu_check.py).

The configurations are the TRITON rows of _optim_helpers.CONFIGS. Tolerance: none (TOLERANCES[TRITON]).
Every comparison is of raw bits (NaN equals NaN, whatever its payload), for float32 as for bf16/fp16
storage: both kernels perform the same IEEE float32 operations in the same order.
"""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'arvc[gpu]' or the dev extra)")

GPU = os.environ.get("ARVC_TRITON_GPU") == "1" and torch.cuda.is_available()
if not GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined: @triton.jit reads it then

from _optim_helpers import FUSED_KERNELS, ONE_PER_KERNEL, TRITON, configs  # noqa: E402

from arvc.optim import OPTIMIZERS, _fused, _fused_args, _fused_probe, build_optimizer  # noqa: E402
from arvc.optim._fused_triton import common  # noqa: E402

TRITON_DEVICE = "cuda" if GPU else "cpu"
# The interpreter computes with numpy, which warns about the NaN/inf the special-value cases feed it.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
SHAPES = [(3000,), (33, 40), (1024,), (1,), (0,), (5, 7)]  # several blocks, a partial one, one element, empty
NAN, INF = float("nan"), float("inf")


@contextlib.contextmanager
def triton_path(probe: bool = False):
    """CPU tensors step through the Triton kernels (in the interpreter) while this is active; the
    first-use check (_fused_probe) runs only with `probe` (the tests of the kernels themselves skip it)."""
    original_check = _fused_probe.first_use_failure
    if not probe:
        _fused_probe.first_use_failure = lambda *args: None
    if GPU:
        try:
            yield
        finally:
            _fused_probe.first_use_failure = original_check
        return
    original, cpu_kernels = _fused._uses_triton, _fused.fused_kernels

    def not_here():
        raise AssertionError("the C++ kernels were called inside triton_path()")

    _fused._uses_triton, _fused.fused_kernels = (lambda device: True), not_here
    try:
        yield
    finally:
        _fused._uses_triton, _fused.fused_kernels = original, cpu_kernels
        _fused_probe.first_use_failure = original_check


def _params(dtype, device):
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype).to(device)) for s in SHAPES]


def _grads(step, dtype):
    generator = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(s, generator=generator) * (1 + step) for s in SHAPES]
    if step == 2:  # special values: NaN, inf, and (in bf16/fp16) a value that overflows the moments
        grads[0][5], grads[0][7], grads[0][9] = NAN, INF, 6e4
    grads[1] = grads[1].t().contiguous().t()  # laid out unlike its parameter: the kernel gets a copy
    return [g.to(dtype) for g in grads]


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    raw = t.view(torch.int32 if t.dtype == torch.float32 else torch.int16).to(torch.int64)
    return torch.where(torch.isnan(t.float()), torch.full_like(raw, -1), raw)  # any NaN equals any NaN


def _assert_identical(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    differ = (_bits(a) != _bits(b)).sum().item()
    assert differ == 0, f"{what}: {differ} of {a.numel()} elements differ"


CASES = configs(TRITON)  # the TRITON rows of _optim_helpers.CONFIGS (tolerance: TOLERANCES[TRITON], none)
# The optimizers GradScaler hands its scale and overflow flag (not the schedule-free ones: their group's
# step count lives on the host, so GradScaler unscales and skips their overflowing steps itself).
TAKE_SCALE = [name for name in ONE_PER_KERNEL if issubclass(OPTIMIZERS[name].cls, _fused.AmpScaling)]


def _build(name, params, kwargs):
    optimizer = build_optimizer(name, [{"params": params[:3]}, {"params": params[3:], "lr": 3e-4}], **kwargs)
    assert all(group["fused"] for group in optimizer.param_groups), "the registry chose the fused path"
    return optimizer


def _run_both(name, dtype, kwargs, steps=4, amp=None):
    kwargs = {"lr": 1e-2, "weight_decay": 0.01, **kwargs}
    cpu_params, triton_params = _params(dtype, "cpu"), _params(dtype, TRITON_DEVICE)
    cpu = _build(name, cpu_params, kwargs)
    with triton_path():
        triton = _build(name, triton_params, kwargs)
    for step in range(steps):
        grads = _grads(step, dtype)
        for optimizer, params in ((cpu, cpu_params), (triton, triton_params)):
            optimizer.param_groups[0]["lr"] = 1e-2 / (1 + step)  # a changing lr
            for p, g in zip(params, grads, strict=True):
                p.grad = None if (step == 1 and p is params[2]) else g.to(p.device)  # one without grad
        cpu.step()
        with triton_path():
            triton.step()
    return cpu, cpu_params, triton, triton_params


@pytest.mark.parametrize("name, dtype, kwargs", CASES)
def test_the_triton_step_equals_the_cpu_kernel_bit_for_bit(name, dtype, kwargs):
    cpu, cpu_params, triton, triton_params = _run_both(name, dtype, kwargs)
    for i, (p, q) in enumerate(zip(cpu_params, triton_params, strict=True)):
        _assert_identical(p, q, f"parameter {i}")
        assert cpu.state[p].keys() == triton.state[q].keys()
        for key, value in cpu.state[p].items():
            _assert_identical(value, triton.state[q][key], f"parameter {i} {key}")


@pytest.mark.parametrize("name", ["AdaBelief", "AnyPrecisionAdamW"])
def test_a_complex_parameter_steps_as_its_real_view_on_both_kernels(name):
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(50, dtype=torch.complex64, generator=generator)
    cpu_param = torch.nn.Parameter(start.clone())
    triton_param = torch.nn.Parameter(start.clone().to(TRITON_DEVICE))
    cpu = build_optimizer(name, [cpu_param], lr=1e-2)
    with triton_path():
        triton = build_optimizer(name, [triton_param], lr=1e-2)
    assert cpu.param_groups[0]["fused"] and triton.param_groups[0]["fused"]
    for _ in range(3):
        grad = torch.randn(50, dtype=torch.complex64, generator=generator)
        cpu_param.grad, triton_param.grad = grad.clone(), grad.to(TRITON_DEVICE)
        cpu.step()
        with triton_path():
            triton.step()
    _assert_identical(torch.view_as_real(cpu_param), torch.view_as_real(triton_param), "complex parameter")


def test_a_changing_learning_rate_never_recompiles(monkeypatch):
    """lr (like every per-step number) travels in the launch's scalar table, never as a compile-time
    constant: while lr changes every step, no launch asks for a kernel variant the first step did not."""
    launches = []
    launch_blocks = common.launch_blocks

    def spy(kernel, launch, **constants):
        launches.append((kernel, tuple(sorted(constants.items()))))
        launch_blocks(kernel, launch, **constants)

    for name in ONE_PER_KERNEL:
        monkeypatch.setattr(f"arvc.optim._fused_triton.{FUSED_KERNELS[name]}.launch_blocks", spy)
    for name in ONE_PER_KERNEL:
        launches.clear()
        _run_both(name, torch.float32, {}, steps=1)
        first = set(launches)
        _run_both(name, torch.float32, {}, steps=4)
        assert first and set(launches) == first, name


def test_a_refused_step_changes_nothing():
    params = _params(torch.float32, TRITON_DEVICE)[:2]
    with triton_path():
        optimizer = build_optimizer("AdaBelief", params, lr=1e-2)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        before = [p.detach().clone() for p in params]
        optimizer.state[params[1]]["exp_avg"] = torch.zeros(4, device=TRITON_DEVICE)  # corrupt the second
        with pytest.raises(RuntimeError, match="elements"):
            optimizer.step()
    assert [optimizer.state[p]["step"].item() for p in params] == [1.0, 1.0]  # no counter moved
    for p, b in zip(params, before, strict=True):
        _assert_identical(p, b, "a parameter of a refused step")


@pytest.mark.parametrize("name", ONE_PER_KERNEL)
def test_a_triton_step_counts_as_an_in_place_change_for_autograd(name):
    param = torch.nn.Parameter(torch.ones(3, device=TRITON_DEVICE))
    with triton_path():
        optimizer = build_optimizer(name, [param], lr=1e-2)
        loss = (param * param).sum()  # saves param for backward
        param.grad = torch.ones(3, device=TRITON_DEVICE)
        optimizer.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("name", TAKE_SCALE)
def test_grad_scaler_hands_its_scale_to_the_kernel(name):
    """With every group fused, GradScaler passes its scale and overflow flag to step() (as to torch's
    fused Adam) instead of unscaling in a pass of its own: the kernel divides by the scale, the C++ path
    divides a copy, and both equal the usual unscale-then-step; an overflow skips the step entirely."""
    scale = 2.0**12

    def run(use_triton, hand_scale):
        params = _params(torch.float32, TRITON_DEVICE if use_triton else "cpu")[:3]
        context = triton_path() if use_triton else contextlib.nullcontext()
        with context:
            optimizer = build_optimizer(name, params, lr=1e-2)
            assert optimizer._step_supports_amp_scaling
            for step in range(3):
                for p, g in zip(params, _grads(step, torch.float32)[:3], strict=True):
                    g = torch.nan_to_num(g, nan=0.0, posinf=1.0)
                    p.grad = (g * scale).to(p.device) if hand_scale else g.to(p.device)
                if hand_scale:  # what GradScaler.step sets before calling step()
                    optimizer.grad_scale = torch.tensor(scale)
                    optimizer.found_inf = torch.tensor(0.0)
                optimizer.step()
            optimizer.found_inf = torch.tensor(1.0)  # an overflow: nothing moves
            before = [p.detach().clone() for p in params]
            steps = [optimizer.state[p]["step"].item() for p in params]
            optimizer.step()
            assert [optimizer.state[p]["step"].item() for p in params] == steps
            for p, b in zip(params, before, strict=True):
                _assert_identical(p, b, "a parameter after a skipped step")
        return params

    expected = run(use_triton=False, hand_scale=False)
    for use_triton in (False, True):
        for p, q in zip(expected, run(use_triton, hand_scale=True), strict=True):
            _assert_identical(p, q, f"scaled step ({'Triton' if use_triton else 'C++'})")


def test_the_triton_package_serves_exactly_the_declared_fused_ops():
    """The Triton package's ops are the rows of FUSED_OPS, each from its own kernel module."""
    kernels = _fused.triton_kernels()
    assert set(kernels.__all__) == set(_fused.FUSED_OPS)
    for op, kernel in _fused.FUSED_OPS.items():
        assert getattr(kernels, op).__module__ == f"arvc.optim._fused_triton.{kernel}"


def test_without_triton_the_gpu_path_is_unavailable_with_a_message_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "arvc.optim._fused_triton", None)  # as if triton were missing
    with pytest.raises(_fused.FusedUnavailable, match=r"need triton.*arvc\[gpu\]"):
        _fused.triton_kernels()


def test_without_triton_the_registry_falls_back_to_foreach_with_one_warning(monkeypatch):
    """What a user with CUDA parameters but no triton gets from the registry: the foreach path (the
    same update), and one warning that names the fix — not an error, not silence."""
    monkeypatch.setitem(sys.modules, "arvc.optim._fused_triton", None)
    monkeypatch.setattr(_fused, "_warned", False)
    monkeypatch.setattr(_fused, "_uses_triton", lambda device: True)  # these CPU tensors stand for CUDA ones
    with pytest.warns(RuntimeWarning, match=r"arvc\[gpu\].*foreach path instead") as caught:
        first = build_optimizer("AdaBelief", _params(torch.float32, "cpu")[:2], lr=1e-3)
        second = build_optimizer("RAdam", _params(torch.float32, "cpu")[:2], lr=1e-3)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert not first.param_groups[0]["fused"] and not second.param_groups[0]["fused"]


@pytest.fixture(scope="module")
def ptx_reports():
    """triton_ptx.py's compile of every kernel variant (a subprocess: the kernels must not be the
    interpreter's), once for the tests below; see its docstring for which variants and targets."""
    if GPU:
        pytest.skip("compile-only checks are for machines without a GPU")
    script = Path(__file__).with_name("triton_ptx.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _check_ptx(reports):
    for r in reports:
        what = f"{r['kernel']} {r['variant']} sm_{r['target']}"
        assert r["approximate"] == [], f"{what}: approximate instructions {r['approximate']}"
        assert not r["ftz"], f"{what}: flush-to-zero"
        assert not r["fma"], f"{what}: fused multiply-add"
        if r["aligned"]:  # an unaligned tensor is read element by element
            assert r["vector_loads"] > 0, f"{what}: no vectorised loads"
        assert r["local_bytes"] == 0 and r["stack_bytes"] == 0, f"{what}: spills ({r['resources']})"


KERNELS = {"_adabelief_kernel", "_radam_kernel", "_any_precision_adamw_kernel", "_schedule_free_kernel"}


def test_the_ptx_is_exact_vectorised_and_does_not_spill(ptx_reports):
    """Every kernel variant compiled for sm_75 to sm_90 (RTX 20xx to H100) without a GPU, and the
    unaligned and unscaled variants of each kernel for sm_86: no approximate division / sqrt / exp, no
    flush-to-zero, no fused multiply-add, vectorised global loads on the aligned full-block path, no
    spills (cuobjdump)."""
    reports = [r for r in ptx_reports["reports"] if r["target"] < 100]
    assert {r["target"] for r in reports} == {75, 80, 86, 89, 90}
    assert {r["kernel"] for r in reports} == KERNELS
    for layout in ("aligned", "has_scale"):
        assert {r["kernel"] for r in reports if not r[layout]} == KERNELS, f"every kernel without {layout}"
    _check_ptx(reports)


def test_the_ptx_for_blackwell_is_exact_and_does_not_spill(ptx_reports):
    """sm_100 (B200) and sm_120 (RTX 50xx), where the installed triton can target them: one variant per
    kernel (the widest of each), the same checks."""
    if ptx_reports["unsupported"]:
        pytest.skip(f"this triton cannot compile for Blackwell: {ptx_reports['unsupported']}")
    reports = [r for r in ptx_reports["reports"] if r["target"] >= 100]
    assert {r["target"] for r in reports} == {100, 120}
    assert {r["kernel"] for r in reports} == KERNELS
    _check_ptx(reports)


# --- the first-use check (arvc.optim._fused_probe): a kernel that fails or computes wrongly never runs ---


@pytest.fixture
def verdict_file(monkeypatch, tmp_path):
    """A fresh verdict cache: its file under ARVC_CACHE_DIR, and nothing remembered by this process."""
    monkeypatch.setenv("ARVC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_fused_probe, "_verdicts", {})
    monkeypatch.setattr(_fused_probe, "_warned", set())
    return tmp_path / "fused-kernels.json"


def _inject(monkeypatch, name, launch):
    """Replace the kernel launch of `name`'s module by `launch(real, kernel, table, **constants)`;
    returns the list of launches made through it."""
    module = f"arvc.optim._fused_triton.{FUSED_KERNELS[name]}"
    real = common.launch_blocks
    calls = []

    def injected(kernel, table, **constants):
        calls.append(constants)
        return launch(real, kernel, table, **constants)

    monkeypatch.setattr(f"{module}.launch_blocks", injected)
    return calls


def _saved_verdicts(path):
    return list(json.loads(path.read_text())["verdicts"].values())


def _train_two_steps(name, kwargs):
    """build_optimizer + two steps on the Triton path (first-use check on), beside the same steps on an
    unfused optimizer; (optimizer, its params, the unfused one's params)."""
    params, expected = _params(torch.float32, TRITON_DEVICE)[:3], _params(torch.float32, TRITON_DEVICE)[:3]
    with triton_path(probe=True):
        optimizer = build_optimizer(name, params, lr=1e-2, **kwargs)
        reference = build_optimizer(name, expected, lr=1e-2, fused=False, **kwargs)
        for step in range(2):
            for p, q, g in zip(params, expected, _grads(step, torch.float32)[:3], strict=True):
                g = torch.nan_to_num(g, nan=0.0, posinf=1.0).to(p.device)
                p.grad, q.grad = g, g.clone()
            optimizer.step()
            reference.step()
    return optimizer, params, expected


@pytest.mark.parametrize("name, dtype, kwargs", CASES)
def test_a_working_kernel_passes_its_first_use_check_once(name, dtype, kwargs, verdict_file, monkeypatch):
    """Every configuration of the bit-exact tests passes the check against the foreach path within the
    stated tolerance; the verdict is kept, and neither this process nor a later one probes again."""
    calls = _inject(monkeypatch, name, lambda real, kernel, table, **c: real(kernel, table, **c))
    params = _params(dtype, TRITON_DEVICE)
    with triton_path(probe=True), warnings_as_errors():
        _build(name, params, {"lr": 1e-2, **kwargs})
        probe_launches = len(calls)
        assert probe_launches > 0, "the first use ran the probe"
        _build(name, params, {"lr": 1e-2, **kwargs})
        _fused_probe._verdicts.clear()  # as a new process: only the file remembers
        _build(name, params, {"lr": 1e-2, **kwargs})
    assert len(calls) == probe_launches, "the verdict was reused: no second probe"
    assert [v["ok"] for v in _saved_verdicts(verdict_file)] == [True]


@pytest.mark.parametrize("name", ONE_PER_KERNEL)
def test_a_kernel_that_fails_on_first_use_leaves_the_run_on_foreach_with_one_warning(
    name, verdict_file, monkeypatch
):
    def failing(real, kernel, table, **constants):
        raise RuntimeError("injected: PTX assembly failed for sm_120\nptxas fatal")

    calls = _inject(monkeypatch, name, failing)
    with pytest.warns(RuntimeWarning, match=rf"{name} \(float32\) failed its first-use check") as caught:
        optimizer, params, expected = _train_two_steps(name, {})
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "RuntimeError: injected: PTX assembly failed for sm_120" in messages[0]
    assert "foreach path instead" in messages[0] and str(verdict_file) in messages[0]
    assert not optimizer.param_groups[0]["fused"] and not optimizer._step_supports_amp_scaling
    for p, q in zip(params, expected, strict=True):  # the run went on, on foreach, exactly
        _assert_identical(p, q, "a parameter stepped on the foreach path")
    assert len(calls) == 1, "the probe's one failed launch; the steps never tried the kernel"
    [saved] = _saved_verdicts(verdict_file)
    assert not saved["ok"] and saved["why"].startswith("RuntimeError: injected")
    # A later run: the kept verdict, no probe, the one warning again.
    _fused_probe._verdicts.clear()
    _fused_probe._warned.clear()
    with pytest.warns(RuntimeWarning, match="injected") as caught, triton_path(probe=True):
        again = build_optimizer(name, _params(torch.float32, TRITON_DEVICE)[:3], lr=1e-2)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert len(calls) == 1 and not again.param_groups[0]["fused"]


@pytest.mark.parametrize(
    "name, kwargs",
    [("AdaBeliefV2", {}), ("AnyPrecisionAdamW", {"momentum_dtype": "bf16", "variance_dtype": "bf16"})],
)
def test_a_kernel_that_computes_wrongly_on_first_use_leaves_the_run_on_foreach(
    name, kwargs, verdict_file, monkeypatch
):
    """A kernel that runs but is off by 1% in its per-step numbers (lr, betas, ...): a mismatch beyond
    the tolerance, the same fallback and warning."""

    def off(real, kernel, table, **constants):
        table.scalars.mul_(1.01)
        return real(kernel, table, **constants)

    _inject(monkeypatch, name, off)
    with pytest.warns(RuntimeWarning, match=r"differs from the foreach path by .* \(tolerance") as caught:
        optimizer, params, expected = _train_two_steps(name, kwargs)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert not optimizer.param_groups[0]["fused"]
    for p, q in zip(params, expected, strict=True):
        _assert_identical(p, q, "a parameter stepped on the foreach path")
    assert [v["ok"] for v in _saved_verdicts(verdict_file)] == [False]


def test_a_damaged_verdict_cache_is_checked_again_and_replaced(verdict_file):
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    verdict_file.write_text("{not json")
    with triton_path(probe=True):
        optimizer = build_optimizer("RAdam", _params(torch.float32, TRITON_DEVICE)[:2], lr=1e-2)
    assert optimizer.param_groups[0]["fused"]
    assert [v["ok"] for v in _saved_verdicts(verdict_file)] == [True]


def test_a_verdict_that_cannot_be_kept_does_not_stop_the_run(verdict_file, monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ARVC_CACHE_DIR", str(tmp_path / "a-file"))  # the cache folder cannot be made
    with triton_path(probe=True):
        optimizer = build_optimizer("RAdam", _params(torch.float32, TRITON_DEVICE)[:2], lr=1e-2)
    assert optimizer.param_groups[0]["fused"]


@contextlib.contextmanager
def warnings_as_errors():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton.runtime.interpreter")
        yield


def _everything(optimizer, params):
    """The optimizer's whole state and its parameters, as copies."""
    state = {
        i: {k: v.detach().clone() for k, v in optimizer.state[p].items()}
        for i, p in enumerate(params)
        if p in optimizer.state
    }
    return state, [p.detach().clone() for p in params]


def _assert_unchanged(optimizer, params, before):
    state, values = _everything(optimizer, params)
    assert state.keys() == before[0].keys()
    for i, saved in before[0].items():
        assert state[i].keys() == saved.keys()
        for key, value in saved.items():
            _assert_identical(state[i][key], value, f"parameter {i} {key}")
    for i, (value, saved) in enumerate(zip(values, before[1], strict=True)):
        _assert_identical(value, saved, f"parameter {i}")


@pytest.mark.parametrize("name, kwargs", [(name, {}) for name in FUSED_KERNELS])
def test_a_launch_that_fails_changes_nothing_and_the_step_can_be_taken_again(name, kwargs, monkeypatch):
    """The kernel's launch raises (a compile or launch error after every check passed): no step counter
    moves, no parameter or buffer changes; the same step taken again then equals an unfailed run's."""
    params, expected = _params(torch.float32, TRITON_DEVICE)[:3], _params(torch.float32, TRITON_DEVICE)[:3]
    failing = []

    def launch(real, kernel, table, **constants):
        if failing:
            raise RuntimeError("injected launch failure")
        return real(kernel, table, **constants)

    _inject(monkeypatch, name, launch)
    with triton_path():
        optimizer = build_optimizer(name, params, lr=1e-2, **kwargs)
        reference = build_optimizer(name, expected, lr=1e-2, **kwargs)
        for step in range(2):
            for p, q, g in zip(params, expected, _grads(step, torch.float32)[:3], strict=True):
                p.grad, q.grad = g.to(p.device), g.to(q.device)
            reference.step()
            before = _everything(optimizer, params)
            group_steps = [g.get("k") for g in optimizer.param_groups]  # schedule-free: the group counts
            failing.append(True)
            with pytest.raises(RuntimeError, match="injected launch failure"):
                optimizer.step()
            assert [g.get("k") for g in optimizer.param_groups] == group_steps
            if step == 0:  # the state the first step creates is fresh: counters at 0, buffers zero
                for p, saved in zip(params, before[1], strict=True):
                    _assert_identical(p, saved, "a parameter")
                    state = optimizer.state[p]
                    assert state.get("step", torch.zeros(())).item() == 0.0
                    assert all(not v.any() for k, v in state.items() if k not in ("step", "z"))
                    if "z" in state:  # schedule-free's base sequence starts at the parameter
                        _assert_identical(state["z"], saved, "z")
            else:
                _assert_unchanged(optimizer, params, before)
            failing.clear()
            optimizer.step()
    for p, q in zip(params, expected, strict=True):
        _assert_identical(p, q, "a parameter after a failed launch and a retry")


def test_after_a_failed_second_launch_each_counter_matches_its_tensor(monkeypatch):
    """Tensors of two storage dtypes are two launches; when the second fails, the first one's tensors
    have stepped and counted the step, the second one's have done neither."""
    params = [
        torch.nn.Parameter(torch.ones(5, device=TRITON_DEVICE)),
        torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16, device=TRITON_DEVICE)),
    ]
    launches = []

    def launch(real, kernel, table, **constants):
        launches.append(constants)
        if len(launches) == 2:
            raise RuntimeError("injected launch failure")
        return real(kernel, table, **constants)

    _inject(monkeypatch, "AnyPrecisionAdamW", launch)
    with triton_path():
        optimizer = build_optimizer("AnyPrecisionAdamW", params, lr=1e-2)
        for p in params:
            p.grad = torch.ones_like(p)
        with pytest.raises(RuntimeError, match="injected launch failure"):
            optimizer.step()
    assert [optimizer.state[p]["step"].item() for p in params] == [1.0, 0.0]
    assert (params[0] != 1).all() and (params[1] == 1).all()


def test_a_launch_runs_with_its_tensors_cuda_device_made_current(monkeypatch):
    """Triton launches on the *current* CUDA device: for parameters on cuda:1 (`--device cuda:1` outside
    DDP) each launch makes cuda:1 current around itself. No GPU here: torch.cuda.device is a recorder, and
    the launch's device is set to cuda:1 by hand after its tables were built on the CPU."""
    current = []

    @contextlib.contextmanager
    def device(d):
        current.append(torch.device(d))
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "device", device)
    seen = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(list(current))

    param = torch.ones(3)
    launch = common.Launch("cpu", [0], [3], [[param.data_ptr()]])
    launch.prepare(torch.ones(1, 1))
    launch.device = torch.device("cuda", 1)
    common.launch_blocks(Kernel(), launch)
    assert seen == [[torch.device("cuda", 1)]] and current == []


@pytest.mark.parametrize("name", ONE_PER_KERNEL)
def test_every_launch_is_on_its_parameters_device(name, monkeypatch):
    devices = []

    def launch(real, kernel, table, **constants):
        devices.append(table.device)
        return real(kernel, table, **constants)

    _inject(monkeypatch, name, launch)
    params = _params(torch.float32, TRITON_DEVICE)[:3]
    with triton_path():
        optimizer = build_optimizer(name, params, lr=1e-2)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
    assert devices and set(devices) == {params[0].device}


@pytest.mark.parametrize("name", ONE_PER_KERNEL)
def test_the_launch_tables_are_built_once_and_again_only_when_a_tensor_changes(name, monkeypatch):
    """The checks and the pointer tables of a group are kept from step to step (host time: see
    docs/performance.md) and rebuilt when any tensor moves or changes (here: a gradient replaced by a
    tensor elsewhere, a parameter's data replaced); every step still equals the C++ kernel's."""
    module = sys.modules[f"arvc.optim._fused_triton.{FUSED_KERNELS[name]}"]
    builds = []
    real_plan = module._plan

    def counted(*args):
        builds.append(1)
        return real_plan(*args)

    monkeypatch.setattr(module, "_plan", counted)
    monkeypatch.setattr(_fused_args, "_plans", [])
    cpu_params, params = _params(torch.float32, "cpu")[:3], _params(torch.float32, TRITON_DEVICE)[:3]
    cpu = build_optimizer(name, cpu_params, lr=1e-2)
    with triton_path():
        optimizer = build_optimizer(name, params, lr=1e-2)
    grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) for p in params]
    for p, q, g in zip(cpu_params, params, grads, strict=True):
        p.grad, q.grad = g.clone(), g.to(q.device)
    expected_builds = []
    for step in range(5):
        if step == 3:  # a gradient that is a new tensor elsewhere, a parameter's data replaced
            params[0].grad = params[0].grad.clone()
            keep = params[1].data  # kept alive: its memory cannot be handed to the new data
            params[1].data = params[1].data.clone()
        cpu.step()
        with triton_path():
            optimizer.step()
        expected_builds.append(1 if step in (0, 3) else 0)
        assert len(builds) == sum(expected_builds), f"step {step}"
    del keep
    for p, q in zip(cpu_params, params, strict=True):
        _assert_identical(p, q, "a parameter after kept and rebuilt tables")


@pytest.mark.parametrize("name", TAKE_SCALE)
def test_grad_scalers_scale_and_flag_are_read_by_the_kernel_not_the_host(name, monkeypatch):
    """GradScaler's scale and overflow flag go to the kernel as tensors (pointers), never read on the host
    before the launch (on a GPU that read waits for the whole backward pass); the flag alone is copied
    to the host, without blocking, to decide whether the step counters advance."""
    params = _params(torch.float32, TRITON_DEVICE)[:2]
    scale, flag = torch.tensor(4.0, device=TRITON_DEVICE), torch.tensor(0.0, device=TRITON_DEVICE)
    seen = []

    def launch(real, kernel, table, **constants):
        seen.append((table.scale.data_ptr(), table.found_inf.data_ptr()))
        return real(kernel, table, **constants)

    _inject(monkeypatch, name, launch)
    real_float, real_item = torch.Tensor.__float__, torch.Tensor.item

    def guarded(method):
        def read(self, *args):
            if self is scale or self is flag:
                raise AssertionError("GradScaler's tensors were read on the host")
            return method(self, *args)

        return read

    with triton_path():
        optimizer = build_optimizer(name, params, lr=1e-2)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.grad_scale, optimizer.found_inf = scale, flag
        monkeypatch.setattr(torch.Tensor, "__float__", guarded(real_float))
        monkeypatch.setattr(torch.Tensor, "item", guarded(real_item))
        optimizer.step()
        flag.fill_(1.0)  # an overflow: the kernel writes nothing, no counter moves
        before = _everything(optimizer, params)
        optimizer.step()
        monkeypatch.undo()
    assert seen and all(s == (scale.data_ptr(), flag.data_ptr()) for s in seen)
    _assert_unchanged(optimizer, params, before)
    assert [optimizer.state[p]["step"].item() for p in params] == [1.0, 1.0]


def test_the_triton_kernels_read_each_scalar_column_by_its_one_name():
    """The Triton kernels' offsets into a scalar table come from the op's layout in
    arvc.optim._fused_args (the one the C++ kernels' generated structs come from), never restated."""
    for layout in _fused_args.LAYOUTS:
        columns = common.offsets(layout)
        assert [getattr(columns, name).value for name in layout.columns] == list(range(layout.width))
        assert columns.width.value == layout.width
    for module, layout in (
        ("adabelief", "ADABELIEF"),
        ("radam", "RADAM"),
        ("any_precision_adamw", "ANY_PRECISION_ADAMW"),
        ("schedule_free", "SCHEDULE_FREE"),
    ):
        assert (
            sys.modules[f"arvc.optim._fused_triton.{module}"]._K.value
            == common.offsets(getattr(_fused_args, layout)).value
        )


def test_a_refused_argument_fails_alike_on_both_kernels():
    """The argument checks run once, on the host, before either kernel (arvc.optim._fused_args): the same
    bad state is refused with the same message by the C++ and the Triton path, and nothing moves."""
    messages = []
    for use_triton in (False, True):
        params = _params(torch.float32, TRITON_DEVICE if use_triton else "cpu")[:2]
        with triton_path() if use_triton else contextlib.nullcontext():
            optimizer = build_optimizer("RAdam", params, lr=1e-2)
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer.step()
            optimizer.state[params[1]]["exp_avg_sq"] = torch.zeros(4, device=params[1].device)
            with pytest.raises(RuntimeError, match="elements") as refused:
                optimizer.step()
        messages.append(str(refused.value))
        assert [optimizer.state[p]["step"].item() for p in params] == [1.0, 1.0]
    assert messages[0] == messages[1]


def test_a_changed_host_side_checks_the_kernels_again(monkeypatch):
    """The kept verdicts are keyed by the kernels' source, and the per-step scalars the kernels get are
    computed in arvc.optim._fused_args: a change there (a wrong bias correction) must check again too."""
    import pathlib

    _fused_probe._kernels_hash.cache_clear()
    before = _fused_probe._kernels_hash()
    real = pathlib.Path.read_text

    def edited(self, *args, **kwargs):
        return real(self, *args, **kwargs) + ("\n# changed" if self.name == "_fused_args.py" else "")

    monkeypatch.setattr(pathlib.Path, "read_text", edited)
    _fused_probe._kernels_hash.cache_clear()
    try:
        assert _fused_probe._kernels_hash() != before
    finally:
        monkeypatch.undo()
        _fused_probe._kernels_hash.cache_clear()
