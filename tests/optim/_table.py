"""The conformance table: one row per registry entry, in the spirit of torch's OptimizerInfo database
(torch/testing/_internal/common_optimizers.py) and optimi's reference runner.

A row says how to build the optimizer through `build_optimizer`, which reference it must match (torch's
own class, adabelief-pytorch, or torch's AdamW where arvc's update *is* AdamW's), which parameter dtypes
its fused path takes, and the tolerances, stated per dtype. tests/optim/test_conformance.py runs every
generic behaviour over every row x path (x dtype x layout where that matters). Adding an optimizer is one
row here.

Tolerances (max |arvc - reference| <= atol + rtol * |reference|, after STEPS steps):
* float64: 1e-12 / 1e-10 - the same formulas in double precision.
* float32: 1e-6 / 1e-5 - the fused kernels and torch's vectorized lerp_/addcmul_ use fused multiply-adds
  where the reference rounds twice, and adabelief-pytorch orders a few operations differently; both move
  the last bits only.
* bfloat16 / float16 where the reference runs in the same dtype (torch's own AdamW and RAdam): 1e-2 / 1e-2
  and 2e-3 / 2e-3 - torch's paths differ from each other by a rounding of the parameter (one ulp).
* bfloat16 / float16 for arvc's own optimizers, against the reference run in float32 on a float32 copy:
  arvc keeps float32 moments and rounds the parameter once per step, so after STEPS steps it may sit up
  to STEPS half-ulps from the float32 trajectory: bf16 ulp at |p| < 4 is <= 2**-6, giving 3e-2; fp16 4e-3.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

STEPS = 4
LR = 1e-2
WEIGHT_DECAY = 0.1

PATHS = ("single", "foreach", "fused")
PATH_KWARGS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
LOW_PRECISION = (torch.bfloat16, torch.float16)

SAME_DTYPE_TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}
FLOAT32_MASTER_TOLERANCES = {
    **SAME_DTYPE_TOLERANCES,
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}


def _adabelief_reference(amsgrad: bool):
    def build(params, lr):
        import adabelief_pytorch  # a dev dependency; rows that need it are skipped without it

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return adabelief_pytorch.AdaBelief(
                params,
                lr=lr,
                eps=1e-16,
                weight_decay=WEIGHT_DECAY,
                rectify=False,
                weight_decouple=True,
                amsgrad=amsgrad,
                print_change_log=False,
            )

    return build


def _schedulefree_reference(class_name: str, **kwargs):
    def build(params, lr):
        import schedulefree  # a dev dependency; rows that need it are skipped without it

        optimizer = getattr(schedulefree, class_name)(
            params, lr=lr, weight_decay=WEIGHT_DECAY, foreach=False, **kwargs
        )
        optimizer.train()  # the reference starts in eval mode and refuses to step there
        return optimizer

    return build


@dataclass(frozen=True)
class OptimInfo:
    name: str  # the registry name
    reference_name: str
    reference: Callable  # reference(params, lr) -> a torch.optim.Optimizer with the same hyperparameters
    fused_dtypes: tuple[torch.dtype, ...]  # parameter dtypes the fused path takes (others: refused)
    # True: the reference runs on parameters of the tested dtype (torch's own classes keep their state
    # in the parameter's dtype); False: it runs in float32 on a float32 copy (arvc's float32 master math).
    reference_in_param_dtype: bool
    # Constructor arguments that set the moments' storage dtype (AnyPrecisionAdamW's); torch's own classes
    # keep them in the parameter's dtype, arvc's others keep float32 moments for any parameter.
    moment_dtype_kwargs: tuple[str, ...] = ()
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments for build_optimizer
    needs: str | None = None  # a module the reference needs
    tolerance_overrides: dict = field(default_factory=dict)  # dtype -> (rtol, atol), with a reason
    # torch.optim.AdamW refuses a tensor lr with foreach=True (without capturable); torch.optim.RAdam,
    # which arvc's RAdam is, takes it. arvc's own optimizers follow AdamW's rule.
    tensor_lr_with_foreach: bool = False
    paths: tuple[str, ...] = PATHS  # the paths the class has (no "fused": building one is refused)
    # The per-parameter state after a step, as (key, dtype) with None for "the moments' dtype".
    state_dtypes: tuple[tuple[str, torch.dtype | None], ...] = (
        ("step", torch.float32),
        ("exp_avg", None),
        ("exp_avg_sq", None),
    )
    # Bad constructor arguments beyond lr/betas/eps/weight_decay, each with the name its ValueError says.
    bad_hyperparameters: tuple[tuple[dict, str], ...] = ()

    def build(self, params, path: str, **overrides):
        from arvc.optim import build_optimizer

        kwargs = {"weight_decay": WEIGHT_DECAY, **self.kwargs, **PATH_KWARGS[path], **overrides}
        lr = kwargs.pop("lr", LR)
        return build_optimizer(self.name, params, lr=lr, **kwargs)

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        table = SAME_DTYPE_TOLERANCES if self.reference_in_param_dtype else FLOAT32_MASTER_TOLERANCES
        return self.tolerance_overrides.get(dtype, table[dtype])

    def __str__(self) -> str:
        return self.name


TABLE = (
    OptimInfo(
        "AdamW",
        "torch.optim.AdamW",
        lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, foreach=False),
        fused_dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
        reference_in_param_dtype=True,
    ),
    OptimInfo(
        "RAdam",
        "torch.optim.RAdam(decoupled_weight_decay=True)",
        lambda params, lr: torch.optim.RAdam(
            params, lr=lr, weight_decay=WEIGHT_DECAY, decoupled_weight_decay=True, foreach=False
        ),
        fused_dtypes=(torch.float32,),
        reference_in_param_dtype=True,
        tensor_lr_with_foreach=True,
    ),
    OptimInfo(
        "AnyPrecisionAdamW",
        "torch.optim.AdamW",
        lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, foreach=False),
        fused_dtypes=(torch.float32, torch.bfloat16, torch.float16),
        reference_in_param_dtype=False,
        moment_dtype_kwargs=("momentum_dtype", "variance_dtype"),
        # Its moments are float32 unless momentum_dtype/variance_dtype say otherwise, float64 params too.
        tolerance_overrides={torch.float64: SAME_DTYPE_TOLERANCES[torch.float32]},
    ),
    OptimInfo(
        "AdaBelief",
        "adabelief_pytorch.AdaBelief(rectify=False, weight_decouple=True)",
        _adabelief_reference(amsgrad=False),
        fused_dtypes=(torch.float32, torch.bfloat16, torch.float16),
        reference_in_param_dtype=False,
        needs="adabelief_pytorch",
    ),
    OptimInfo(
        "AdaBeliefV2",
        "adabelief_pytorch.AdaBelief(rectify=False, weight_decouple=True, amsgrad=True)",
        _adabelief_reference(amsgrad=True),
        fused_dtypes=(torch.float32, torch.bfloat16, torch.float16),
        reference_in_param_dtype=False,
        needs="adabelief_pytorch",
    ),
    # Schedule-free: the parameters hold y in train mode (a new optimizer's mode); tests/optim/
    # test_schedulefree.py compares x (after eval()) and both modes' resume as well.
    OptimInfo(
        "AdamWScheduleFree",
        "schedulefree.AdamWScheduleFree(warmup_steps=2)",
        _schedulefree_reference("AdamWScheduleFree", warmup_steps=2),
        fused_dtypes=(
            torch.float32,
        ),  # the reference rounds every operation to a bf16/fp16 parameter's dtype
        reference_in_param_dtype=True,
        kwargs={"warmup_steps": 2},
        needs="schedulefree",
        state_dtypes=(("z", None), ("exp_avg_sq", None)),
        bad_hyperparameters=(
            ({"betas": (0.0, 0.999)}, "beta parameter at index 0"),
            ({"warmup_steps": -1}, "warmup_steps"),
            ({"warmup_steps": 2.5}, "warmup_steps"),
            ({"r": -1.0}, "r value"),
            ({"r": float("nan")}, "r value"),
            ({"weight_lr_power": -2.0}, "weight_lr_power"),
        ),
    ),
    OptimInfo(
        "RAdamScheduleFree",
        "schedulefree.RAdamScheduleFree(silent_sgd_phase=False)",
        _schedulefree_reference("RAdamScheduleFree", silent_sgd_phase=False),
        reference_in_param_dtype=True,
        # The generic tests take STEPS steps, all before RAdam's rectification applies (step 5): with the
        # default silent start nothing would move. test_schedulefree.py runs the default, and past step 5.
        kwargs={"silent_sgd_phase": False},
        needs="schedulefree",
        fused_dtypes=(torch.float32,),
        state_dtypes=(("z", None), ("exp_avg_sq", None)),
        bad_hyperparameters=(
            ({"betas": (0.0, 0.999)}, "beta parameter at index 0"),
            ({"r": float("inf")}, "r value"),
            ({"weight_lr_power": -1.0}, "weight_lr_power"),
            ({"silent_sgd_phase": "yes"}, "silent_sgd_phase"),
        ),
    ),
)


# --- Layouts: how a parameter and its gradient sit in memory ------------------------------------------
# Each maps float32 values of `shape` to (parameter, gradient factory); the values are the same for every
# layout, so the reference (always contiguous) sees the same numbers.


def _layout_contiguous(values):
    return values.clone(), lambda g: g.clone()


def _layout_channels_last(values):
    cl = torch.channels_last
    return values.clone(memory_format=cl), lambda g: g.clone(memory_format=cl)


def _layout_transposed(values):
    # A dense but non-contiguous parameter, and a contiguous gradient: the strides differ.
    return values.t().contiguous().t(), lambda g: g.contiguous()


def _layout_expanded_grad(values):
    # An expanded gradient (stride 0), as `x.expand(...)` or a broadcast in backward gives.
    return values.clone(), lambda g: g[:1].expand(g.shape)


def _layout_non_dense(values):
    # A strided view: every other column of a larger tensor.
    base = torch.zeros(values.shape[0], values.shape[1] * 2, dtype=values.dtype)
    base[:, ::2] = values
    return base[:, ::2], lambda g: g.clone()


LAYOUTS = {
    "contiguous": ((4, 5), _layout_contiguous),
    "channels_last": ((2, 3, 2, 2), _layout_channels_last),
    "transposed": ((4, 5), _layout_transposed),
    "expanded_grad": ((6,), _layout_expanded_grad),
    "non_dense": ((4, 3), _layout_non_dense),
    "zero_dim": ((), _layout_contiguous),
    "empty": ((0, 3), _layout_contiguous),
}
