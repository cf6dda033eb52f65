"""Shared helpers for the optimizer tests (imported, not a conftest, so the names stay explicit)."""

from dataclasses import dataclass, field

import pytest
import torch


def make_model(dtype=torch.float32, seed=0):
    """A small two-layer model; two param groups are built from its layers in tests."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    return model.to(dtype)


def two_groups(model, lr=(1e-2, 3e-3), weight_decay=(0.1, 0.0)):
    first, second = model[0], model[2]
    return [
        {"params": list(first.parameters()), "lr": lr[0], "weight_decay": weight_decay[0]},
        {"params": list(second.parameters()), "lr": lr[1], "weight_decay": weight_decay[1]},
    ]


def gradient_stream(shapes, steps, seed=1, scale=1.0):
    """A fixed sequence of gradients, so two optimizers can be fed exactly the same ones."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=generator) * scale for s in shapes] for _ in range(steps)]


def feed(optimizer, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype).clone()
    optimizer.step()


# --- The paths-agree table ------------------------------------------------------------------------------
# One row per optimizer configuration (registry name, parameter dtype, constructor arguments) and the
# comparisons it takes part in; each test file below reads its rows with `configs(...)`. Adding a
# configuration, or a comparison for one, is one row. (What every registry entry must do on every path,
# against an outside reference, is the conformance table: tests/optim/_table.py.)

FOREACH = "foreach == single"  # test_paths.py: the foreach body against the single-tensor loop
FUSED = "fused == single"  # test_fused.py: the C++ kernel against the single-tensor loop
TRITON = "triton == C++"  # test_fused_triton.py: the Triton kernel against the C++ kernel (and its probe)
RESUME = "resume"  # test_optimizers_common.py: stop, save, load, go on (beside every entry in float32)


@dataclass(frozen=True)
class Tolerance:
    """How closely two paths agree. `exact`: bit for bit. Otherwise float32 values within
    atol + rtol * |expected|, and values stored in bf16/fp16 within `ulps` units in the last place of
    their dtype (+ atol, for results of cancellation) on at most `flipped` of the elements."""

    exact: bool = False
    atol: float = 0.0
    rtol: float = 0.0
    ulps: int = 0
    flipped: float = 0.0


# The one tolerance table of these comparisons, and why:
# * foreach == single, resume: both run the same float32 arithmetic in the same order on the CPU, Kahan
#   compensation and stochastic rounding included.
# * triton == C++: both kernels perform the same IEEE float32 operations in the same order (correctly
#   rounded div/sqrt, no a*b+c contraction; see _fused_triton/common.py), NaN equal to NaN.
# * fused == single: the kernel runs the reference's float32 operations in the same order, but torch's own
#   vectorized ops may use fused multiply-adds, so the two can differ in the last bit of a step (1e-6, the
#   bound of issue #4). In bf16/fp16 storage that last bit can flip a rounding decision: at most 1 ulp of
#   the stored dtype (+1e-6 for results of cancellation, m + w*(g - m) ≈ 0), on at most 0.5% of elements,
#   checked after every step from a shared state.
TOLERANCES = {
    FOREACH: Tolerance(exact=True),
    RESUME: Tolerance(exact=True),
    TRITON: Tolerance(exact=True),
    FUSED: Tolerance(atol=1e-6, rtol=1e-6, ulps=1, flipped=0.005),
}

_LOW_PRECISION_NAMES = ("bf16", "fp16", "bfloat16", "float16")


@dataclass(frozen=True)
class Config:
    name: str  # the registry name
    dtype: torch.dtype = torch.float32  # the parameters'
    kwargs: dict = field(default_factory=dict)  # constructor arguments
    compared: tuple[str, ...] = ()  # FOREACH, FUSED, TRITON, RESUME
    variant: str = ""  # what sets the row apart from the others of its optimizer (the test id's tail)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name

    @property
    def cls(self) -> type:
        from arvc.optim import OPTIMIZERS

        return OPTIMIZERS[self.name].cls

    @property
    def low_precision(self) -> bool:
        """Whether anything is stored in bf16/fp16 (the parameters or a buffer)."""
        return self.dtype != torch.float32 or any(v in _LOW_PRECISION_NAMES for v in self.kwargs.values())


_BF16_MOMENTS = {"momentum_dtype": "bf16", "variance_dtype": "bf16"}
_FP16_MOMENTS = {"momentum_dtype": "fp16", "variance_dtype": "fp16"}
_KAHAN = {"use_kahan_summation": True}
_ALL = (FOREACH, FUSED, TRITON)
BF16, FP16 = torch.bfloat16, torch.float16

CONFIGS = (
    Config("AdaBelief", compared=_ALL),
    Config("AdaBelief", kwargs={"betas": (0.0, 0.99)}, compared=_ALL, variant="beta1-0"),
    Config("AdaBelief", BF16, compared=(*_ALL, RESUME), variant="bf16"),
    Config("AdaBelief", FP16, {"weight_decay": 0.1}, (TRITON,), "fp16-wd"),
    Config("AdaBeliefV2", compared=_ALL),
    Config("AdaBeliefV2", BF16, compared=(TRITON,), variant="bf16"),
    Config("RAdam", compared=(FUSED, TRITON)),
    Config("RAdam", kwargs={"decoupled_weight_decay": True}, compared=(FUSED,), variant="decoupled"),
    Config(
        "RAdam",
        kwargs={"maximize": True, "betas": (0.3, 0.9)},
        compared=(FUSED,),
        variant="maximize-beta1-0.3",
    ),
    Config("RAdam", kwargs={"maximize": True}, compared=(TRITON,), variant="maximize"),
    Config(
        "RAdam",
        kwargs={"decoupled_weight_decay": False, "betas": (0.3, 0.9)},
        compared=(TRITON,),
        variant="l2-decay",
    ),
    Config("AnyPrecisionAdamW", compared=_ALL),
    Config(
        "AnyPrecisionAdamW",
        kwargs={"betas": (0.6, 0.95)},  # the lerp's other branch
        compared=(FUSED, TRITON),
        variant="lerp-high-weight",
    ),
    Config("AnyPrecisionAdamW", kwargs=_BF16_MOMENTS, compared=(FUSED, TRITON), variant="fp32-bf16-moments"),
    Config("AnyPrecisionAdamW", BF16, compared=(FUSED,), variant="bf16-params"),
    Config("AnyPrecisionAdamW", BF16, _KAHAN, (FUSED,), "bf16-kahan"),
    Config(
        "AnyPrecisionAdamW", BF16, {**_KAHAN, **_BF16_MOMENTS}, (FOREACH, FUSED), "bf16-kahan-bf16-moments-sr"
    ),
    Config(
        "AnyPrecisionAdamW", BF16, {**_KAHAN, **_BF16_MOMENTS, "seed": 77}, (TRITON,), "bf16-kahan-sr-seed-77"
    ),
    Config(
        "AnyPrecisionAdamW",
        BF16,
        {**_KAHAN, "momentum_dtype": "bfloat16", "variance_dtype": "bfloat16", "seed": 3},
        (RESUME,),
        "bf16-kahan-sr-seed-3",
    ),
    Config(
        "AnyPrecisionAdamW",
        BF16,
        {**_BF16_MOMENTS, "stochastic_rounding": False},
        (FUSED,),
        "bf16-moments-nearest",
    ),
    Config(
        "AnyPrecisionAdamW", BF16, {**_KAHAN, "stochastic_rounding": False}, (TRITON,), "bf16-kahan-nearest"
    ),
    Config(
        "AnyPrecisionAdamW", FP16, {**_KAHAN, **_FP16_MOMENTS}, (FOREACH, FUSED), "fp16-kahan-fp16-moments-sr"
    ),
    Config(
        "AnyPrecisionAdamW",
        FP16,
        {**_KAHAN, **_FP16_MOMENTS, "seed": -3},
        (TRITON,),
        "fp16-kahan-sr-seed-neg3",
    ),
    Config(
        "AnyPrecisionAdamW",
        BF16,
        {**_KAHAN, "momentum_dtype": "fp16", "variance_dtype": "bf16"},
        (FUSED,),
        "mixed-buffers-blocked-path",
    ),
    Config(
        "AnyPrecisionAdamW",
        BF16,
        {"momentum_dtype": "fp16", "variance_dtype": "bf16"},
        (TRITON,),
        "mixed-buffers",
    ),
    Config(
        "AnyPrecisionAdamW",
        kwargs={"momentum_dtype": "bfloat16", "variance_dtype": "float16"},
        compared=(RESUME,),
        variant="fp32-params-low-buffers",
    ),
    # Schedule-free: float32 only on the fused path (bf16 parameters keep foreach); warm-up (ckp1 >= 0.5
    # for its first steps: lerp's high-weight form), RAdam's silent and SGD starts (not Adam-normalized).
    Config("AdamWScheduleFree", kwargs={"warmup_steps": 3}, compared=_ALL, variant="warmup"),
    Config(
        "AdamWScheduleFree",
        kwargs={"maximize": True, "r": 1.0},
        compared=(FUSED, TRITON),
        variant="maximize-r1",
    ),
    Config("RAdamScheduleFree", compared=(FUSED, TRITON)),
    Config(
        "RAdamScheduleFree",
        kwargs={"silent_sgd_phase": False, "weight_lr_power": 0.0},
        compared=_ALL,
        variant="sgd-start-power0",
    ),
    Config("AdamWScheduleFree", BF16, compared=(FOREACH,), variant="bf16-foreach-only"),
)


def configs(comparison: str, *fields: str, where=lambda config: True) -> list:
    """pytest params of the CONFIGS rows in `comparison` (and `where`), each as its `fields` (default:
    name, dtype, kwargs), with the row's id."""
    fields = fields or ("name", "dtype", "kwargs")
    return [
        pytest.param(*(getattr(c, f) for f in fields), id=c.id)
        for c in CONFIGS
        if comparison in c.compared and where(c)
    ]


# The optimizers with fused kernels -> their kernel (arvc.optim._fused_ops.FUSED_OPS's modules).
FUSED_KERNELS = {
    "AdaBelief": "adabelief",
    "AdaBeliefV2": "adabelief",
    "RAdam": "radam",
    "AnyPrecisionAdamW": "any_precision_adamw",
    "AdamWScheduleFree": "schedule_free",
    "RAdamScheduleFree": "schedule_free",
}
ONE_PER_KERNEL = list({kernel: name for name, kernel in reversed(FUSED_KERNELS.items())}.values())[::-1]
