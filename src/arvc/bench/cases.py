"""Every optimizer configuration the benchmark times, arvc's own and the peers it is measured against.

arvc's rows come from the registry at run time (`OPTIMIZERS` through `build_optimizer`), so whatever path
the registry picks today — for-loop, foreach, fused, compiled — is what gets timed. Peers are third-party
packages implementing the same algorithm; each is given its fast path where it has one (foreach on CPU),
so a speed-up against them is a fair one. A peer that is not installed becomes a "not installed" row.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim import Optimizer

from arvc.optim import OPTIMIZERS, build_optimizer

__all__ = ["BASELINE", "Case", "all_cases", "is_installed", "select_cases"]

LR = 1e-3
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
BASELINE = "torch:AdamW-fused"


@dataclass(frozen=True)
class Case:
    """One optimizer configuration: how to build it and what to compare it with."""

    key: str
    label: str
    origin: str  # "arvc", "torch" or "peer"
    package: str  # the pip name, shown for "not installed"
    algorithm: str
    build: Callable[[list[torch.Tensor]], Optimizer]
    module: str | None = None  # import name that must be present; None: always available
    param_dtype: torch.dtype | None = None  # None: the run's --dtype
    path_hint: str | None = None  # shown when the optimizer's settings name no fused/foreach path


def is_installed(module: str | None) -> bool:
    """Whether `module` can be imported (looked up, not imported: importing torchao takes seconds)."""
    if module is None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _quiet_import(module: str):
    # torchao logs a warning for each optional CUDA extension it cannot load; irrelevant to a benchmark.
    logger = logging.getLogger(module.split(".")[0])
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    finally:
        logger.setLevel(level)


def _on_cpu(params: list[torch.Tensor]) -> bool:
    return all(p.device.type == "cpu" for p in params)


# --- builders (imports happen only when a case is built) -------------------------------------------
def _registry(name: str, **extra) -> Callable:
    return lambda params: build_optimizer(name, params, lr=LR, weight_decay=WEIGHT_DECAY, **extra)


def _torch_adamw(**path) -> Callable:
    return lambda params: torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, **path)


def _torch_radam(params):
    return torch.optim.RAdam(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, foreach=True)


# arvc's AdaBelief semantics in both reference packages' words (they take the same keywords): decoupled
# weight decay, no rectification, the benchmark's lr, betas and weight decay.
_ADABELIEF_AS_ARVC = dict(lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, weight_decouple=True, rectify=False)


def _adabelief_pytorch(amsgrad: bool) -> Callable:
    def build(params):
        from adabelief_pytorch import AdaBelief

        with contextlib.redirect_stdout(None):  # it prints a banner even with print_change_log=False
            return AdaBelief(params, **_ADABELIEF_AS_ARVC, amsgrad=amsgrad, print_change_log=False)

    return build


def _pytorch_optimizer_adabelief(params):
    from pytorch_optimizer import AdaBelief

    return AdaBelief(params, **_ADABELIEF_AS_ARVC, foreach=True)


def _optimi_adamw(params):
    import optimi

    fast = {"foreach": True} if _on_cpu(params) else {}  # on CUDA optimi picks triton/foreach itself
    return optimi.AdamW(
        params, lr=LR, betas=BETAS, eps=1e-8, weight_decay=WEIGHT_DECAY, kahan_sum=True, **fast
    )


def _schedulefree(name: str) -> Callable:
    def build(params):
        import schedulefree

        optimizer = getattr(schedulefree, name)(
            params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, foreach=True
        )
        optimizer.train()  # the reference starts in eval mode and refuses to step there
        return optimizer

    return build


def _torchao(name: str, **options) -> Callable:
    def build(params):
        optim = _quiet_import("torchao.optim")
        cls = getattr(optim, name, None) or getattr(optim, "_" + name)
        return cls(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, **options)

    return build


def _bnb_adamw8bit(params):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=LR, betas=BETAS, eps=1e-8, weight_decay=WEIGHT_DECAY)


def _bf16_weights_case(spec) -> Case:
    """The optimizer in the mode a bf16 run trains with (its spec's `bf16_weights_kwargs`), named as
    `arvc compare` names that setting: its bf16 variant that adds nothing to the mode (e.g. "kahan")."""
    mode = dict(spec.bf16_weights_kwargs)
    suffix = next(
        (s for s, kwargs in spec.bf16_variants.items() if kwargs.items() <= mode.items()), "weights"
    )
    return Case(
        f"arvc:{spec.name}-bf16-{suffix}",
        f"arvc {spec.name} bf16 + {suffix.capitalize()}",
        "arvc",
        "arvc",
        f"{spec.algorithm_name} bf16",
        _registry(spec.name, **mode),
        param_dtype=torch.bfloat16,
    )


def _arvc_cases(all_paths: bool) -> list[Case]:
    cases = []
    for name, spec in OPTIMIZERS.items():
        algorithm = spec.algorithm_name
        cases.append(Case(f"arvc:{name}", f"arvc {name}", "arvc", "arvc", algorithm, _registry(name)))
        if not all_paths:
            continue
        accepted = spec.supported_kwargs
        variants = {"for-loop": {k: False for k in ("fused", "foreach") if k in accepted}}
        variants.update({k: {k: True} for k in ("foreach", "fused") if k in accepted})
        for path, kwargs in variants.items():
            if kwargs:
                cases.append(
                    Case(
                        f"arvc:{name}[{path}]",
                        f"arvc {name} [{path}]",
                        "arvc",
                        "arvc",
                        algorithm,
                        _registry(name, **kwargs),
                    )
                )
    cases += [_bf16_weights_case(s) for s in OPTIMIZERS.values() if s.bf16_weights_kwargs is not None]
    cases.append(
        Case(
            "arvc:AdamW-8bit",
            "arvc 8-bit switch (AdamW8bit)",
            "arvc",
            "bitsandbytes",
            "AdamW 8-bit",
            _registry("AdamW", use_8bit=True),
            module="bitsandbytes",
            path_hint="bitsandbytes 8-bit",
        )
    )
    return cases


def all_cases(all_paths: bool = False) -> list[Case]:
    """Every case in report order: the baseline, torch, arvc, then the peers."""
    torch_cases = [
        Case(BASELINE, "torch AdamW (fused)", "torch", "torch", "AdamW", _torch_adamw(fused=True)),
        Case(
            "torch:AdamW-foreach",
            "torch AdamW (foreach)",
            "torch",
            "torch",
            "AdamW",
            _torch_adamw(foreach=True, fused=False),
        ),
        Case("torch:RAdam-foreach", "torch RAdam (foreach)", "torch", "torch", "RAdam", _torch_radam),
    ]
    peers = [
        Case(
            "adabelief-pytorch:AdaBelief",
            "adabelief-pytorch AdaBelief",
            "peer",
            "adabelief-pytorch",
            "AdaBelief",
            _adabelief_pytorch(amsgrad=False),
            module="adabelief_pytorch",
        ),
        Case(
            "adabelief-pytorch:AdaBelief-amsgrad",
            "adabelief-pytorch AdaBelief (amsgrad)",
            "peer",
            "adabelief-pytorch",
            "AdaBelief+AMSGrad",
            _adabelief_pytorch(amsgrad=True),
            module="adabelief_pytorch",
        ),
        Case(
            "pytorch_optimizer:AdaBelief",
            "pytorch_optimizer AdaBelief",
            "peer",
            "pytorch_optimizer",
            "AdaBelief",
            _pytorch_optimizer_adabelief,
            module="pytorch_optimizer",
        ),
        *(
            Case(
                f"schedulefree:{name}",
                f"schedulefree {name}",
                "peer",
                "schedulefree",
                name,
                _schedulefree(name),
                module="schedulefree",
            )
            for name in ("AdamWScheduleFree", "RAdamScheduleFree")
        ),
        Case(
            "optimi:AdamW-bf16-kahan",
            "optimi AdamW bf16 + Kahan",
            "peer",
            "torch-optimi",
            "AdamW bf16",
            _optimi_adamw,
            module="optimi",
            param_dtype=torch.bfloat16,
        ),
        Case(
            "torchao:AdamW-bf16",
            "torchao AdamW bf16 (stoch. rounding)",
            "peer",
            "torchao",
            "AdamW bf16",
            _torchao("AdamW", bf16_stochastic_round=True),
            module="torchao",
            param_dtype=torch.bfloat16,
            path_hint="torch.compile per tensor",
        ),
        Case(
            "torchao:AdamW8bit",
            "torchao AdamW8bit",
            "peer",
            "torchao",
            "AdamW 8-bit",
            _torchao("AdamW8bit"),
            module="torchao",
            path_hint="torch.compile per tensor",
        ),
        Case(
            "bitsandbytes:AdamW8bit",
            "bitsandbytes AdamW8bit",
            "peer",
            "bitsandbytes",
            "AdamW 8-bit",
            _bnb_adamw8bit,
            module="bitsandbytes",
            path_hint="bitsandbytes 8-bit",
        ),
    ]
    return torch_cases + _arvc_cases(all_paths) + peers


def select_cases(cases: list[Case], selection: str = "all") -> list[Case]:
    """Cases named by `selection`: 'all', or comma-separated keys, origins ('arvc', 'torch', 'peer')
    or package names ('torchao'), case-insensitive. The baseline is always kept: ratios need it."""
    items = [item.strip().lower() for item in selection.split(",") if item.strip()]
    if not items or "all" in items:
        return list(cases)
    chosen = set()
    for item in items:
        matches = {
            c.key for c in cases if item in (c.key.lower(), c.origin, c.package.lower(), c.key.split(":")[0])
        }
        if item in ("peers",):
            matches = {c.key for c in cases if c.origin == "peer"}
        if not matches:
            valid = ", ".join(c.key for c in cases)
            raise ValueError(
                f"unknown optimizer {item!r}; valid: all, arvc, torch, peers, or one of: {valid}"
            )
        chosen |= matches
    return [c for c in cases if c.key in chosen or c.key == BASELINE]
