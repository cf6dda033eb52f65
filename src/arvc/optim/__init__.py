"""arvc's optimizer system: rated optimizers, one registry, paired schedulers."""

from arvc.optim.adabelief import AdaBelief
from arvc.optim.adabelief_v2 import AdaBeliefV2
from arvc.optim.adamw import AdamW
from arvc.optim.adamw_schedulefree import AdamWScheduleFree
from arvc.optim.anyprecision_adamw import AnyPrecisionAdamW
from arvc.optim.radam import RAdam
from arvc.optim.radam_schedulefree import RAdamScheduleFree
from arvc.optim.registry import (
    OPTIMIZERS,
    OptimizerSpec,
    bf16_weights_spec,
    build_from_spec,
    build_optimizer,
    get_spec,
    state_bytes_per_param,
)
from arvc.optim.schedulers import InverseSqrt, build_scheduler

__all__ = [
    "OPTIMIZERS",
    "AdaBelief",
    "AdaBeliefV2",
    "AdamW",
    "AdamWScheduleFree",
    "AnyPrecisionAdamW",
    "InverseSqrt",
    "OptimizerSpec",
    "RAdam",
    "RAdamScheduleFree",
    "bf16_weights_spec",
    "build_from_spec",
    "build_optimizer",
    "build_scheduler",
    "get_spec",
    "state_bytes_per_param",
]
