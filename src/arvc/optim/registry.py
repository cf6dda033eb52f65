"""The one place that knows arvc's optimizers: specs, ratings, and how to build them.

Adding an optimizer is two changes in src/: its file, `arvc/optim/<name>.py` (the class, its functional
step through `_checks.step_body`), and its entry in `_SPECS` below (what the CLI, the UI, `arvc compare`
and the benchmark show and build: the benchmark's cases and its bf16 case come from the spec). No other
list of them is kept in src/ (`arvc recommend`'s rules and the benchmark's reference peers name only the
ones they are about); re-exporting the class from `arvc/optim/__init__.py` is optional (for
`from arvc.optim import Name`; `build_optimizer` finds it through `_SPECS`). What is kept by hand beyond
those two is the evidence and the documentation, on purpose:

* its row in the conformance table, tests/optim/_table.py (the torch.optim contract on every path it has),
  and its reference test in tests/optim (beside a reference implementation, as test_adabelief.py);
* its row in the guide's table: docs/optimizers.md, README.md, and tests/optim/test_registry.py's GUIDE,
  which pins that table's order and ratings.

Everything else — which keyword arguments a class accepts, whether it can run fused here, whether it keeps
two sets of weights switched by `train()`/`eval()` (schedule-free) — is read off the class itself
(`supported_kwargs`, `arvc.optim._fused.fused_refusal`, `has_weight_modes`), never listed by hand: the CLI,
the UI, `arvc compare`, the benchmark and the generic tests iterate `OPTIMIZERS`. AdamWScheduleFree and
RAdamScheduleFree were added this way (issue 33); the tests that assumed every class has a fused path or
a per-parameter step counter now read that off the class or its state. An
optimizer with fused kernels adds them too: a C++ header in `_fused_cpu/` registered in fused_cpu.cpp, a
Triton module in `_fused_triton/`, its checks and scalar table (with the table's named layout) in
`arvc.optim._fused_args`, its CPU step in `arvc.optim._fused_cpu_steps`, and one row in
`arvc.optim._fused_ops.FUSED_OPS` (which feeds the CPU ops' fake registrations and the Triton package).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch.optim import Optimizer

from arvc.optim._fused import fused_refusal
from arvc.optim.adabelief import AdaBelief
from arvc.optim.adabelief_v2 import AdaBeliefV2
from arvc.optim.adamw import AdamW
from arvc.optim.adamw_schedulefree import AdamWScheduleFree
from arvc.optim.anyprecision_adamw import AnyPrecisionAdamW
from arvc.optim.radam import RAdam
from arvc.optim.radam_schedulefree import RAdamScheduleFree

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "bf16_weights_spec",
    "build_from_spec",
    "build_optimizer",
    "eight_bit_optimizer_class",
    "get_spec",
    "has_weight_modes",
    "spec_for_optimizer",
    "state_bytes_after_one_step",
    "state_bytes_per_param",
    "supported_kwargs",
    "use_fused",
]

logger = logging.getLogger(__name__)

_COMMON_HYPERPARAMETERS = ("betas", "eps", "weight_decay")
_NOT_KWARGS = ("self", "params")


@functools.cache
def supported_kwargs(cls: type) -> tuple[str, ...]:
    """Keyword arguments `cls(params, ...)` accepts, read from its constructor's signature."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.name not in _NOT_KWARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _signature_defaults(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def use_fused(cls: type, device_types: Collection[str], dtypes: Collection[torch.dtype]) -> bool:
    """Whether to switch on `fused=True` for `cls` with parameters on these devices and dtypes.

    Pure: no tensors, no GPU needed. True only if the class takes `fused` and arvc's one rule
    (`arvc.optim._fused.fused_refusal`) has nothing against parameters of these device types and dtypes.
    """
    if "fused" not in supported_kwargs(cls) or not device_types:
        return False
    return fused_refusal(cls, itertools.product(device_types, dtypes)) is None


def has_weight_modes(optimizer_or_class: Any) -> bool:
    """Whether an optimizer (or its class) keeps two sets of weights switched by `train()` / `eval()`.

    Schedule-free optimizers (the `schedulefree` package's contract) train at one point (y) and evaluate
    at the average (x): the model's parameters hold y after `optimizer.train()` and x after
    `optimizer.eval()`. Read off the object, never listed by name.
    """
    return all(callable(getattr(optimizer_or_class, mode, None)) for mode in ("train", "eval"))


@dataclass(frozen=True)
class OptimizerSpec:
    """What the CLI shows about an optimizer and what the registry needs to build it."""

    name: str
    cls: type[Optimizer]
    rating: int
    category: str
    best_for: str
    description: str
    paper: str
    weight_decay: str  # how `weight_decay` is applied, as `arvc optimizers NAME` states it
    paired_scheduler: str | None = None
    # The algorithm it implements, for the benchmark's "best peer implementing the same algorithm"
    # (None: its name).
    algorithm: str | None = None
    # Constructor arguments the registry passes unless the caller gives them (what arvc means by the name).
    default_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # A run's config holds Adam-family values (RVC's betas 0.8,0.99, eps 1e-9, weight decay 0.01).
    # eps_from_adam turns the config's Adam eps into this optimizer's equivalent; None: eps means what
    # Adam's means and is passed as is. betas and (decoupled) weight decay mean the same in every
    # optimizer here. An explicit --eps/--betas/--weight-decay is always passed as given.
    eps_from_adam: Callable[[float], float] | None = None
    eps_rule: str = "the config's Adam eps as is (added to sqrt(v), as in Adam)"
    # Extra constructor arguments of the mode that keeps the *weights themselves* in bf16 (a bf16 run with
    # this optimizer converts the models to bf16 and passes these unless given); None: no such mode.
    bf16_weights_kwargs: Mapping[str, Any] | None = None
    # Settings of that mode worth comparing in `arvc compare` (variant suffix -> kwargs).
    bf16_variants: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def scheduler_label(self) -> str:
        """The paired scheduler as the CLI and UI show it (no pairing: RVC's exponential decay)."""
        return self.paired_scheduler or "exponential (RVC default)"

    @property
    def algorithm_name(self) -> str:
        return self.algorithm or self.name

    @property
    def supported_kwargs(self) -> tuple[str, ...]:
        return supported_kwargs(self.cls)

    @property
    def schedule_free(self) -> bool:
        """Schedule-free: weights switched by `train()`/`eval()` (see `has_weight_modes`)."""
        return has_weight_modes(self.cls)

    @property
    def supports_fused(self) -> bool:
        return "fused" in self.supported_kwargs

    def fused_on(self, device_type: str) -> bool:
        return use_fused(self.cls, {device_type}, {torch.float32})

    def run_hyperparameters(
        self,
        *,
        config_betas: tuple[float, float],
        config_eps: float,
        config_weight_decay: float,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
        use_8bit: bool = False,
    ) -> dict[str, Any]:
        """betas/eps/weight_decay this optimizer trains with in a run.

        `config_*` are the run config's Adam-family values; `betas`/`eps`/`weight_decay` the user's explicit
        ones (None: not given), always used as given. With `use_8bit` the optimizer is bitsandbytes'
        AdamW8bit, an Adam: the config's eps is its own.
        """
        if eps is None:
            convert = None if use_8bit else self.eps_from_adam
            eps = float(convert(config_eps)) if convert is not None else float(config_eps)
        return {
            "betas": tuple(float(b) for b in (betas if betas is not None else config_betas)),
            "eps": float(eps),
            "weight_decay": float(weight_decay if weight_decay is not None else config_weight_decay),
        }


_DECOUPLED = "decoupled, as AdamW: p <- p*(1 - lr*wd) before the update"


def _adam_eps_squared(eps: float) -> float:
    """AdaBelief's equivalent of Adam's eps (adabelief-pytorch issue #38): eps_adabelief = eps_adam**2."""
    return eps * eps


# AdaBelief adds eps into its variance every step: s >= eps/(1-beta2) at steady state. Adam's 1e-9 with
# beta2 0.99 floors s at 1e-7 (sqrt ~3e-4), so residuals below ~3e-4 would get SGD-like steps.
_BELIEF_EPS_RULE = (
    "the config's Adam eps squared (1e-9 -> 1e-18): AdaBelief adds eps into its variance every step, "
    "so Adam's value would floor it at eps/(1-beta2); its author's rule eps_adabelief = eps_adam**2"
)

_SCHEDULE_FREE_PAPER = (
    "Defazio et al., The Road Less Scheduled, NeurIPS 2024 (arXiv:2405.15682); reference: the "
    "schedulefree package"
)
_AT_Y = "decoupled, taken at y (as the reference): lr*wd*y joins the normalized step of y and z"

_SPECS = (
    OptimizerSpec(
        name="AdamW",
        cls=AdamW,
        rating=5,
        category="PyTorch built-in",
        best_for="general purpose, most reliable (default)",
        description="Adam with decoupled weight decay; torch's own implementation with fused CPU/CUDA "
        "kernels (arvc hands the fused CPU kernel only gradient layouts it reads correctly). RVC's "
        "optimizer, and the safest choice.",
        paper="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019 (arXiv:1711.05101)",
        weight_decay=_DECOUPLED + " (torch's default 0.01)",
    ),
    OptimizerSpec(
        name="RAdam",
        cls=RAdam,
        rating=4,
        category="PyTorch built-in",
        best_for="warmup-free training, short runs",
        description="Adam with the variance of the adaptive step rectified in early steps, so no warm-up "
        "is needed; torch's own implementation, plus arvc's fused kernel (CPU and CUDA) for float32 "
        "parameters.",
        paper="Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020 "
        "(arXiv:1908.03265)",
        weight_decay=_DECOUPLED + " (class default 0); the registry passes decoupled_weight_decay=True, "
        "torch.optim.RAdam's own default is coupled L2 (g += wd*p)",
        default_kwargs=MappingProxyType({"decoupled_weight_decay": True}),
    ),
    OptimizerSpec(
        name="AnyPrecisionAdamW",
        cls=AnyPrecisionAdamW,
        rating=4,
        category="Mixed-precision",
        best_for="bfloat16 training, long runs with Kahan summation",
        description="AdamW with bf16/fp16/fp32 storage per buffer, Kahan-compensated low-precision "
        "weights and stochastically rounded moments; all math in fp32.",
        paper="torchdistx AnyPrecisionAdamW; Zamirai et al., Revisiting BFloat16 Training (arXiv:2010.06192)",
        weight_decay=_DECOUPLED + " (class default 0)",
        algorithm="AdamW",
        bf16_weights_kwargs=MappingProxyType(
            {"use_kahan_summation": True, "momentum_dtype": "bfloat16", "variance_dtype": "bfloat16"}
        ),
        bf16_variants=MappingProxyType(
            {
                # bf16 weights + bf16 moments with Kahan-compensated updates (a bf16 run's mode).
                "kahan": MappingProxyType({"use_kahan_summation": True}),
                # the same, but rounding drops what does not fit the weights.
                "plain": MappingProxyType({"use_kahan_summation": False}),
            }
        ),
    ),
    OptimizerSpec(
        name="AdaBelief",
        cls=AdaBelief,
        rating=3,
        category="Belief-based",
        best_for="better-conditioned adaptive step sizes",
        description="Adam that divides by the variance of the gradient around its prediction (the "
        "'belief'); paired with cosine annealing.",
        paper="Zhuang et al., AdaBelief Optimizer, NeurIPS 2020 (arXiv:2010.07468)",
        weight_decay=_DECOUPLED + " (class default 0; adabelief-pytorch's weight_decouple=True)",
        paired_scheduler="cosine",
        eps_from_adam=_adam_eps_squared,
        eps_rule=_BELIEF_EPS_RULE,
    ),
    OptimizerSpec(
        name="AdaBeliefV2",
        cls=AdaBeliefV2,
        rating=3,
        category="Belief-based",
        best_for="stable deep training: AMSGrad + InverseSqrt scheduler",
        description="AdaBelief with AMSGrad (running maximum of the belief variance); paired with a "
        "linear warm-up + inverse-square-root schedule.",
        paper="Zhuang et al., AdaBelief Optimizer, NeurIPS 2020 (arXiv:2010.07468); Reddi et al., On the "
        "Convergence of Adam and Beyond, ICLR 2018 (arXiv:1904.09237)",
        weight_decay=_DECOUPLED + " (class default 0; adabelief-pytorch's weight_decouple=True)",
        paired_scheduler="inverse_sqrt",
        algorithm="AdaBelief+AMSGrad",
        eps_from_adam=_adam_eps_squared,
        eps_rule=_BELIEF_EPS_RULE,
    ),
    # Ratings from the 3-seed `arvc compare` on the demo voice (docs/compare.md, docs/optimizers.md).
    OptimizerSpec(
        name="AdamWScheduleFree",
        cls=AdamWScheduleFree,
        rating=3,
        category="Schedule-free",
        best_for="no fixed epoch count: the averaged weights are good whenever training stops",
        description="Schedule-free AdamW: trains at y, between a base sequence z (Adam-normalized SGD "
        "steps) and its running average x, the weights to evaluate (optimizer.eval() switches to x, "
        "optimizer.train() back); warm-up inside the optimizer (warmup_steps), no schedule. Semantics "
        "of the schedulefree package's AdamWScheduleFree.",
        paper=_SCHEDULE_FREE_PAPER,
        weight_decay=_AT_Y + " (class default 0)",
        paired_scheduler="constant",
    ),
    OptimizerSpec(
        name="RAdamScheduleFree",
        cls=RAdamScheduleFree,
        rating=2,
        category="Schedule-free",
        best_for="no fixed epoch count and no warm-up to tune",
        description="Schedule-free RAdam: schedule-free AdamW whose first steps are RAdam's rectified "
        "start instead of a warm-up (the first 4 steps only gather the second moment); "
        "optimizer.eval() switches to the averaged weights. Semantics of the schedulefree package's "
        "RAdamScheduleFree.",
        paper=_SCHEDULE_FREE_PAPER + "; Liu et al., On the Variance of the Adaptive Learning Rate and "
        "Beyond, ICLR 2020 (arXiv:1908.03265)",
        weight_decay=_AT_Y + " (class default 0)",
        paired_scheduler="constant",
    ),
)

OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


def get_spec(name: str) -> OptimizerSpec:
    """The spec registered under `name` (case-insensitive); ValueError listing valid names otherwise."""
    if isinstance(name, str):
        for spec in OPTIMIZERS.values():
            if spec.name.lower() == name.strip().lower():
                return spec
    raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")


def bf16_weights_spec() -> OptimizerSpec | None:
    """The first registered optimizer with a bf16-weights mode (what a long bf16 run should use)."""
    return next((s for s in OPTIMIZERS.values() if s.bf16_weights_kwargs is not None), None)


def spec_for_optimizer(optimizer: Optimizer) -> OptimizerSpec | None:
    """The spec whose class is exactly the optimizer's class (None for e.g. bitsandbytes AdamW8bit)."""
    return next((s for s in OPTIMIZERS.values() if type(optimizer) is s.cls), None)


def _materialize(params: Iterable) -> list:
    """The params argument as a list, each group's "params" as a list too (a copy of the group dict).

    Generators (`model.parameters()`) can be read only once: the registry reads them here, decides the
    path from that list and passes the same list on, so the optimizer sees exactly what torch's would.
    """
    if isinstance(params, torch.Tensor):
        return params  # torch.optim's own TypeError says what to pass instead
    items = list(params)
    return [
        {**item, "params": _group_params(item["params"])}
        if isinstance(item, Mapping) and "params" in item
        else item
        for item in items
    ]


def _group_params(params) -> list:
    return [params] if isinstance(params, torch.Tensor) else list(params)


def _tensors(params: list) -> list[torch.Tensor]:
    """Every tensor in a materialized params list: plain, named ((name, tensor) pairs) or in groups."""
    if isinstance(params, torch.Tensor):
        return []
    tensors = []
    for item in params:
        entries = item["params"] if isinstance(item, Mapping) else [item]
        for entry in entries:
            tensors.append(entry[1] if isinstance(entry, tuple) else entry)
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def _auto_fused(spec: OptimizerSpec, params: list, extra: Mapping[str, Any]) -> bool | None:
    """fused=True where the fused path will work, None (the class's own choice) otherwise.

    Never when the caller chose a path (`foreach`/`fused`) or asked for what fused kernels lack, or a
    parameter is one the kernel cannot step (device, dtype, a non-dense view): `fused_refusal` decides.
    A param group that chose its own path or rules fused out keeps the class's choice (its dict gets
    fused=None when the others are switched on) and does not hold the other groups back.
    """
    if not spec.supports_fused or "fused" in extra or extra.get("foreach") is not None:
        return None
    if fused_refusal(spec.cls, (), extra) is not None:
        return None
    own_choice, tensors = [], []
    for item in params:
        group = isinstance(item, Mapping)
        chose = group and ("fused" in item or item.get("foreach") is not None)
        if chose or (group and fused_refusal(spec.cls, (), item) is not None):
            own_choice.append(item)
        else:
            tensors += _tensors([item])
    if not tensors or fused_refusal(spec.cls, tensors) is not None:
        return None
    for item in own_choice:  # (materialized copies: the caller's dicts are not touched)
        item.setdefault("fused", None)
    return True


def _common_kwargs(cls: type, **values: Any) -> dict[str, Any]:
    """Pass betas/eps/weight_decay only to a class that accepts them; None means the class default."""
    accepted = supported_kwargs(cls)
    kwargs = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in accepted:
            kwargs[key] = value
        else:
            logger.debug("%s takes no %s; not passing %s=%r", cls.__name__, key, key, value)
    return kwargs


def _reject_unknown(cls: type, extra: Mapping[str, Any]) -> None:
    unknown = sorted(set(extra) - set(supported_kwargs(cls)))
    if unknown:
        accepted = ", ".join(supported_kwargs(cls))
        raise TypeError(f"{cls.__name__} does not accept {', '.join(unknown)}; it accepts: {accepted}")


def build_from_spec(
    spec: OptimizerSpec,
    params: Iterable,
    *,
    lr: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
    **extra: Any,
) -> Optimizer:
    """Build `spec.cls`, forwarding only what it accepts and switching fused kernels on where possible."""
    params = _materialize(params)
    _reject_unknown(spec.cls, extra)
    extra = {**spec.default_kwargs, **extra}
    kwargs = _common_kwargs(spec.cls, betas=betas, eps=eps, weight_decay=weight_decay)
    fused = _auto_fused(spec, params, extra)
    if fused is not None:
        kwargs["fused"] = fused
    logger.debug("%s: fused=%s", spec.name, fused if fused is not None else extra.get("fused"))
    return spec.cls(params, lr=lr, **kwargs, **extra)


def eight_bit_optimizer_class() -> type[Optimizer]:
    """bitsandbytes' AdamW8bit, or an ImportError naming the extra (callers check this before any work)."""
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise ImportError("The 8-bit optimizer needs bitsandbytes: pip install 'arvc[bnb]'") from error
    return bnb.optim.AdamW8bit


def _build_8bit(
    params: list, *, lr, betas, eps, weight_decay, spec: OptimizerSpec, **extra: Any
) -> Optimizer:
    cls = eight_bit_optimizer_class()
    _reject_unknown(cls, extra)
    requested = spec.name
    # Every hyperparameter is passed explicitly, so bitsandbytes' own defaults (weight_decay=0.01) never
    # stand in for the requested optimizer's. betas and (decoupled) weight decay mean the same in every
    # optimizer here: a value left None is the requested optimizer's default (AdaBelief: weight_decay 0).
    # eps does not: AdamW8bit is an Adam, so where the requested optimizer's eps means something else
    # (AdaBelief's 1e-16 goes into its variance; added to Adam's sqrt(v) it is no guard at all) a value
    # left None is Adam's default, torch AdamW's 1e-8. An explicit eps is passed as given.
    defaults = _signature_defaults(spec.cls)
    adam_eps = (
        defaults["eps"] if spec.eps_from_adam is None else _signature_defaults(torch.optim.AdamW)["eps"]
    )
    resolved = dict(
        betas=tuple(betas) if betas is not None else defaults["betas"],
        eps=eps if eps is not None else adam_eps,
        weight_decay=weight_decay if weight_decay is not None else defaults["weight_decay"],
    )
    logger.info(
        "8-bit switch: using bitsandbytes AdamW8bit instead of %s (lr=%g, betas=%s, eps=%g, weight_decay=%g)",
        requested,
        lr,
        resolved["betas"],
        resolved["eps"],
        resolved["weight_decay"],
    )
    return cls(params, lr=lr, **resolved, **extra)


def build_optimizer(
    name: str,
    params: Iterable,
    *,
    lr: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
    use_8bit: bool = False,
    **extra: Any,
) -> Optimizer:
    """Build the optimizer registered as `name` (case-insensitive).

    betas/eps/weight_decay are forwarded only to classes that accept them (None keeps the class
    default). Unknown extra keyword arguments raise TypeError. Fused kernels are switched on wherever
    they will work for the class and the parameters (device, dtype, dense layout; not with
    capturable/differentiable), unless `fused` or `foreach` is given: an explicit choice is honoured.
    `use_8bit=True` replaces the choice with bitsandbytes' AdamW8bit (needs `arvc[bnb]`).
    """
    spec = get_spec(name)
    if use_8bit:
        return _build_8bit(
            _materialize(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, spec=spec, **extra
        )
    return build_from_spec(spec, params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **extra)


def state_bytes_per_param(
    name: str,
    *,
    param_dtype: torch.dtype = torch.float32,
    use_8bit: bool = False,
    numel: int = 1 << 16,
    **extra,
) -> float:
    """Measured bytes of optimizer state per parameter after one step (not a table: the real buffers)."""
    param = torch.nn.Parameter(torch.zeros(numel, dtype=param_dtype))
    optimizer = build_optimizer(name, [param], lr=1e-3, use_8bit=use_8bit, **extra)
    return state_bytes_after_one_step(optimizer, param)


def state_bytes_after_one_step(optimizer: Optimizer, param: torch.nn.Parameter) -> float:
    """Bytes of `optimizer`'s state per element of `param` (its one parameter) after one step: the real
    buffers, not a table (a schedule-free optimizer is put in train mode first, the mode it steps in)."""
    if has_weight_modes(optimizer):
        optimizer.train()
    param.grad = torch.full_like(param, 1e-3)
    optimizer.step()
    state = optimizer.state[param].values()
    return sum(v.numel() * v.element_size() for v in state if isinstance(v, torch.Tensor)) / param.numel()
