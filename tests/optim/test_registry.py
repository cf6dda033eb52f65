"""The registry: specs, introspected kwargs, fused decision, build_optimizer and the 8-bit switch."""

import logging

import pytest
import torch

from arvc.optim import OPTIMIZERS, OptimizerSpec, build_from_spec, build_optimizer, get_spec
from arvc.optim.registry import state_bytes_per_param, supported_kwargs, use_fused

GUIDE = [
    (5, "AdamW", "PyTorch built-in", "general purpose, most reliable (default)"),
    (4, "RAdam", "PyTorch built-in", "warmup-free training, short runs"),
    (4, "AnyPrecisionAdamW", "Mixed-precision", "bfloat16 training, long runs with Kahan summation"),
    (3, "AdaBelief", "Belief-based", "better-conditioned adaptive step sizes"),
    (3, "AdaBeliefV2", "Belief-based", "stable deep training: AMSGrad + InverseSqrt scheduler"),
    # Rated from the 3-seed `arvc compare` on the demo voice (docs/compare.md).
    (
        3,
        "AdamWScheduleFree",
        "Schedule-free",
        "no fixed epoch count: the averaged weights are good whenever training stops",
    ),
    (2, "RAdamScheduleFree", "Schedule-free", "no fixed epoch count and no warm-up to tune"),
]


def params(n=8, dtype=torch.float32):
    return [torch.nn.Parameter(torch.zeros(n, dtype=dtype))]


def test_table_matches_the_guide_in_order():
    assert [(s.rating, s.name, s.category, s.best_for) for s in OPTIMIZERS.values()] == GUIDE
    # arvc's AdamW is torch's own class, its fused path kept to gradient layouts it reads correctly.
    assert issubclass(OPTIMIZERS["AdamW"].cls, torch.optim.AdamW)
    # arvc's RAdam is torch's own class plus a fused CPU path (tests/optim/test_fused.py).
    assert issubclass(OPTIMIZERS["RAdam"].cls, torch.optim.RAdam)
    assert all(
        issubclass(s.cls, torch.optim.Optimizer) and s.paper and s.description for s in OPTIMIZERS.values()
    )
    with pytest.raises(TypeError):
        OPTIMIZERS["SGD"] = None


def test_supported_kwargs_are_read_from_the_signature():
    assert {"betas", "eps", "weight_decay", "fused", "foreach", "amsgrad"} <= set(
        OPTIMIZERS["AdamW"].supported_kwargs
    )
    assert {"fused", "decoupled_weight_decay"} <= set(OPTIMIZERS["RAdam"].supported_kwargs)
    assert "amsgrad" not in OPTIMIZERS["RAdam"].supported_kwargs
    assert "use_kahan_summation" in OPTIMIZERS["AnyPrecisionAdamW"].supported_kwargs
    assert "params" not in OPTIMIZERS["AdaBelief"].supported_kwargs
    # Whether a fused path exists is read off the class (its `fused` argument): every entry has one now
    # (the schedule-free ones since their kernel, docs/performance.md).
    assert all(spec.supports_fused for spec in OPTIMIZERS.values())
    assert OPTIMIZERS["AdamWScheduleFree"].fused_on("cpu") and OPTIMIZERS["RAdamScheduleFree"].fused_on("cpu")
    assert "warmup_steps" in OPTIMIZERS["AdamWScheduleFree"].supported_kwargs
    assert "warmup_steps" not in OPTIMIZERS["RAdamScheduleFree"].supported_kwargs
    assert {"r", "weight_lr_power", "silent_sgd_phase", "maximize"} <= set(
        OPTIMIZERS["RAdamScheduleFree"].supported_kwargs
    )


def test_names_are_case_insensitive_and_unknown_names_list_the_valid_ones():
    assert type(build_optimizer("adabeliefv2", params(), lr=1e-3)).__name__ == "AdaBeliefV2"
    assert type(build_optimizer(" RADAM ", params(), lr=1e-3)) is OPTIMIZERS["RAdam"].cls
    with pytest.raises(ValueError, match="AdamW, RAdam, AnyPrecisionAdamW, AdaBelief, AdaBeliefV2"):
        get_spec("Lion")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_common_hyperparameters_reach_every_optimizer(name):
    optimizer = build_optimizer(name, params(), lr=2e-3, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.02)
    group = optimizer.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (
        2e-3,
        (0.8, 0.99),
        1e-9,
        0.02,
    )


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_none_keeps_the_class_default(name):
    optimizer = build_optimizer(name, params(), lr=1e-3)
    defaults = OPTIMIZERS[name].cls([torch.nn.Parameter(torch.zeros(1))]).defaults
    for key in ("betas", "eps", "weight_decay"):
        assert optimizer.defaults[key] == defaults[key]


class _NoBetas(torch.optim.SGD):
    """A class without betas/eps: the registry must find that out from the signature alone."""

    def __init__(self, params, lr=1e-3, weight_decay=0.0):
        super().__init__(params, lr=lr, weight_decay=weight_decay)


def test_hyperparameters_a_class_lacks_are_omitted_with_a_debug_log(caplog):
    spec = OptimizerSpec("NoBetas", _NoBetas, 1, "test", "tests", "-", "-", "coupled")
    with caplog.at_level(logging.DEBUG, logger="arvc.optim.registry"):
        optimizer = build_from_spec(spec, params(), lr=0.1, betas=(0.5, 0.5), eps=1e-3, weight_decay=0.01)
    assert optimizer.defaults["weight_decay"] == 0.01
    assert "takes no betas" in caplog.text and "takes no eps" in caplog.text


def test_unknown_extra_kwargs_raise_naming_them():
    with pytest.raises(TypeError, match="use_kahan_summation"):
        build_optimizer("AdamW", params(), lr=1e-3, use_kahan_summation=True)
    optimizer = build_optimizer("AnyPrecisionAdamW", params(), lr=1e-3, use_kahan_summation=True)
    assert optimizer.defaults["use_kahan_summation"] is True


@pytest.mark.parametrize(
    "cls, devices, dtypes, expected",
    [
        (torch.optim.AdamW, {"cpu"}, {torch.float32}, True),
        (torch.optim.AdamW, {"cuda"}, {torch.float32, torch.bfloat16}, True),
        (torch.optim.AdamW, {"meta"}, {torch.float32}, False),
        (torch.optim.AdamW, {"cpu", "meta"}, {torch.float32}, False),
        (torch.optim.AdamW, {"cpu"}, {torch.int64}, False),
        (torch.optim.AdamW, set(), set(), False),
        (torch.optim.RAdam, {"cuda"}, {torch.float32}, False),
        (OPTIMIZERS["AdaBelief"].cls, {"cuda"}, {torch.float32, torch.bfloat16}, True),  # Triton
        (OPTIMIZERS["AdaBelief"].cls, {"cpu", "cuda"}, {torch.float32}, False),  # one device type a group
        (OPTIMIZERS["RAdam"].cls, {"cuda"}, {torch.float32}, True),
        (OPTIMIZERS["RAdam"].cls, {"cuda"}, {torch.float16}, False),
        (OPTIMIZERS["AnyPrecisionAdamW"].cls, {"cuda"}, {torch.bfloat16}, True),
        (OPTIMIZERS["AnyPrecisionAdamW"].cls, {"cuda"}, {torch.float64}, False),
        (OPTIMIZERS["AdaBelief"].cls, {"cpu"}, {torch.float32, torch.bfloat16}, True),
        (OPTIMIZERS["AdaBelief"].cls, {"cpu"}, {torch.float64}, False),
        (OPTIMIZERS["RAdam"].cls, {"cpu"}, {torch.float32}, True),
        (OPTIMIZERS["RAdam"].cls, {"cpu"}, {torch.bfloat16}, False),
    ],
)
def test_fused_decision_is_pure(cls, devices, dtypes, expected):
    assert use_fused(cls, devices, dtypes) is expected


def test_fused_is_switched_on_for_cpu_adamw_unless_the_user_chooses():
    assert build_optimizer("AdamW", params(), lr=1e-3).defaults["fused"] is True
    assert build_optimizer("AdamW", params(), lr=1e-3, fused=False).defaults["fused"] is False
    foreach = build_optimizer("AdamW", params(), lr=1e-3, foreach=True)
    assert foreach.defaults["foreach"] is True and not foreach.defaults["fused"]
    meta = build_optimizer("AdamW", [torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3)
    assert not meta.defaults["fused"]


def test_fused_adamw_built_by_the_registry_matches_the_loop():
    a, b = params(64), params(64)
    fused = build_optimizer("AdamW", a, lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(20):
        g = torch.randn(64)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-7)


def test_param_groups_and_named_parameters_are_accepted():
    model = torch.nn.Linear(3, 3)
    groups = [{"params": [model.weight], "lr": 1e-2}, {"params": [model.bias]}]
    assert len(build_optimizer("AdaBelief", groups, lr=1e-3).param_groups) == 2
    assert build_optimizer("AdamW", model.named_parameters(), lr=1e-3).defaults["fused"] is True


class TestEightBit:
    bnb = pytest.importorskip("bitsandbytes")

    def test_overrides_the_choice_and_forwards_every_hyperparameter(self, caplog):
        with caplog.at_level(logging.INFO, logger="arvc.optim.registry"):
            optimizer = build_optimizer(
                "AdaBelief",
                params(4096),
                lr=3e-4,
                betas=(0.8, 0.99),
                eps=1e-9,
                weight_decay=0.0,
                use_8bit=True,
            )
        assert isinstance(optimizer, self.bnb.optim.AdamW8bit)
        group = optimizer.param_groups[0]
        assert (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (
            3e-4,
            (0.8, 0.99),
            1e-9,
            0.0,
        )
        assert "instead of AdaBelief" in caplog.text

    def test_defaults_are_the_adamw_paths(self):
        eight = build_optimizer("AdamW", params(4096), lr=1e-3, use_8bit=True).param_groups[0]
        adamw = build_optimizer("AdamW", params(4096), lr=1e-3).param_groups[0]
        for key in ("lr", "betas", "eps", "weight_decay"):
            assert eight[key] == adamw[key], key

    def test_unknown_extra_kwargs_raise(self):
        with pytest.raises(TypeError, match="use_kahan_summation"):
            build_optimizer("AdamW", params(4096), lr=1e-3, use_8bit=True, use_kahan_summation=True)

    def test_trains_on_cpu(self):
        p = params(4096)
        optimizer = build_optimizer("AdamW", p, lr=1e-2, use_8bit=True)
        p[0].grad = torch.ones(4096)
        optimizer.step()
        assert (p[0].detach() < 0).all()


def test_missing_bitsandbytes_names_the_extra(no_bitsandbytes):
    with pytest.raises(ImportError, match=r"pip install 'arvc\[bnb\]'"):
        build_optimizer("AdamW", params(), lr=1e-3, use_8bit=True)


def test_state_bytes_are_measured():
    assert state_bytes_per_param("AdamW") == pytest.approx(8.0, abs=0.01)
    assert state_bytes_per_param("AdaBeliefV2") == pytest.approx(12.0, abs=0.01)
    low = state_bytes_per_param(
        "AnyPrecisionAdamW",
        param_dtype=torch.bfloat16,
        use_kahan_summation=True,
        momentum_dtype="bf16",
        variance_dtype="bf16",
    )
    assert low <= 6.0 + 0.01


def test_supported_kwargs_excludes_self_and_params():
    assert "self" not in supported_kwargs(torch.optim.AdamW) and "params" not in supported_kwargs(
        torch.optim.AdamW
    )


def test_float64_anyprecision_state_through_the_registry_takes_the_non_fused_path():
    """Known edge of issue 15: the registry switched fused=True on for CPU AnyPrecisionAdamW without
    seeing its buffer dtypes, so float64 moments needed an explicit fused=False."""
    param = torch.nn.Parameter(torch.ones(8))
    opt = build_optimizer("AnyPrecisionAdamW", [param], lr=1e-3, momentum_dtype=torch.float64,
                          variance_dtype="float64", use_kahan_summation=False)  # fmt: skip
    assert not opt.param_groups[0]["fused"]
    param.grad = torch.full_like(param, 0.5)
    opt.step()
    assert opt.state[param]["exp_avg"].dtype == torch.float64
    default = build_optimizer("AnyPrecisionAdamW", [torch.nn.Parameter(torch.ones(8))], lr=1e-3)
    assert default.param_groups[0]["fused"], "float32 buffers still get the fused kernel"
