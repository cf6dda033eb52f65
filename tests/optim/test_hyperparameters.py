"""What each optimizer means by a run's Adam-family settings, and the bf16-weights mode as a spec property.

The registry's spec is the one place for both: a run's config holds RVC's Adam values (betas 0.8,0.99,
eps 1e-9, weight decay 0.01) and each spec turns them into its optimizer's equivalent; the bf16 mode is read
off the spec by the loop, recommend, the CLI and compare, never keyed by an optimizer's name.
"""

import ast
import dataclasses
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest
import torch

import arvc
from arvc.compare import variants
from arvc.config import RunConfig
from arvc.optim import OPTIMIZERS, get_spec, registry
from arvc.optim.recommend import recommend
from arvc.train.optimizers import bf16_weights, hyperparameters

RVC = dict(config_betas=(0.8, 0.99), config_eps=1e-9, config_weight_decay=0.01)


@pytest.mark.parametrize("name", ["AdaBelief", "AdaBeliefV2"])
def test_belief_eps_is_adams_squared(name):
    # eps enters AdaBelief's variance every step: Adam's 1e-9 floors it at 1e-9/(1-0.99) = 1e-7.
    assert get_spec(name).run_hyperparameters(**RVC) == {
        "betas": (0.8, 0.99),
        "eps": 1e-18,
        "weight_decay": 0.01,
    }
    assert get_spec(name).run_hyperparameters(**{**RVC, "config_eps": 1e-8})["eps"] == pytest.approx(1e-16)


@pytest.mark.parametrize("name", ["AdamW", "RAdam", "AnyPrecisionAdamW"])
def test_adam_family_takes_the_config_values_as_is(name):
    assert get_spec(name).run_hyperparameters(**RVC) == {
        "betas": (0.8, 0.99),
        "eps": 1e-9,
        "weight_decay": 0.01,
    }


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_explicit_values_always_win(name):
    explicit = dict(betas=(0.9, 0.999), eps=1e-9, weight_decay=0.0)
    assert get_spec(name).run_hyperparameters(**RVC, **explicit) == explicit


def test_eight_bit_is_an_adam_and_keeps_the_config_eps():
    # --use-8bit trains bitsandbytes' AdamW8bit whatever was asked for: Adam's eps means Adam's eps.
    assert get_spec("AdaBelief").run_hyperparameters(**RVC, use_8bit=True)["eps"] == 1e-9


def _opts(**kwargs):
    base = dict(optimizer=None, lr=None, betas=None, eps=None, weight_decay=None, use_8bit=False)
    base.update(optimizer_kwargs=None, precision="fp32")
    return SimpleNamespace(**{**base, **kwargs})


@pytest.fixture
def only_fake_has_bf16_mode(monkeypatch):
    """The registry with AnyPrecisionAdamW's bf16 mode moved onto a made-up AdamW entry."""
    fake = dataclasses.replace(
        get_spec("AdamW"), name="FakeBF16", bf16_weights_kwargs=MappingProxyType({"foreach": False})
    )
    fake = dataclasses.replace(
        fake, bf16_variants=MappingProxyType({"loop": MappingProxyType({"foreach": False})})
    )
    specs = {
        name: dataclasses.replace(spec, bf16_weights_kwargs=None, bf16_variants=MappingProxyType({}))
        for name, spec in OPTIMIZERS.items()
    }
    patched = MappingProxyType({**specs, "FakeBF16": fake})
    monkeypatch.setattr(registry, "OPTIMIZERS", patched)
    monkeypatch.setattr(variants, "OPTIMIZERS", patched)
    return fake


def test_bf16_mode_is_read_off_the_spec_everywhere(only_fake_has_bf16_mode):
    advice = recommend(800, "bf16")
    assert advice.optimizer == "FakeBF16" and advice.options == {"foreach": False}
    hp = hyperparameters(_opts(optimizer="FakeBF16", precision="bf16"), RunConfig(), None)
    assert hp.kwargs == {"foreach": False} and bf16_weights("bf16", hp)
    assert not bf16_weights("fp32", hp) and not bf16_weights("bf16", dataclasses.replace(hp, use_8bit=True))
    plain = hyperparameters(_opts(optimizer="AnyPrecisionAdamW", precision="bf16"), RunConfig(), None)
    assert plain.kwargs == {} and not bf16_weights("bf16", plain)
    made = variants._variants()
    assert made["FakeBF16-bf16-loop"].precision == "bf16" and made["FakeBF16-bf16-loop"].kwargs == {
        "foreach": False
    }
    assert not any(name.startswith("AnyPrecisionAdamW-bf16") for name in made)


def test_shipped_bf16_mode_is_anyprecision_with_kahan():
    spec = registry.bf16_weights_spec()
    assert spec.name == "AnyPrecisionAdamW"
    assert dict(spec.bf16_weights_kwargs) == {
        "use_kahan_summation": True,
        "momentum_dtype": "bfloat16",
        "variance_dtype": "bfloat16",
    }
    assert {"AnyPrecisionAdamW-bf16-kahan", "AnyPrecisionAdamW-bf16-plain"} <= set(variants.VARIANTS)


def test_no_module_decides_by_an_optimizer_name():
    """No `x == "AnyPrecisionAdamW"` (or any registered name) outside the registry: a decision about an
    optimizer reads its spec, so adding one stays one file + one registry entry."""
    root = Path(arvc.__file__).parent
    names = set(OPTIMIZERS)
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "optim" / "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                for operand in operands:
                    elements = (
                        operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                    )
                    for element in elements:
                        if isinstance(element, ast.Constant) and element.value in names:
                            offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


def test_rounding_seeds_come_from_the_run_seed_one_per_optimizer():
    from arvc.train.optimizers import Hyperparameters, build_for_role, optimizer_seed

    seeds = {
        (s, role): optimizer_seed(s, role) for s in (0, 1234, 1235) for role in ("generator", "discriminator")
    }
    assert len(set(seeds.values())) == len(seeds)  # distinct per run seed and per optimizer
    assert (
        all(0 < v < 2**63 for v in seeds.values())
        and optimizer_seed(1234, "generator") == seeds[1234, "generator"]
    )
    hp = Hyperparameters(
        optimizer="AnyPrecisionAdamW", lr=1e-3, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.0
    )
    param = torch.nn.Parameter(torch.zeros(4))
    built = build_for_role([param], hp, "discriminator", 1234)
    assert built.param_groups[0]["seed"] == seeds[1234, "discriminator"]
    explicit = build_for_role([param], dataclasses.replace(hp, kwargs={"seed": 7}), "generator", 1234)
    assert explicit.param_groups[0]["seed"] == 7  # a seed the user passed is theirs
    adamw = build_for_role(
        [param], dataclasses.replace(hp, optimizer="AdamW"), "generator", 1234
    )  # takes no seed
    assert "seed" not in adamw.param_groups[0]


def test_param_indices_number_the_parameters_for_rounding():
    from arvc.optim import AnyPrecisionAdamW

    def moments(indices):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(50).to(torch.bfloat16)) for _ in range(2)]
        opt = AnyPrecisionAdamW(
            params, momentum_dtype="bfloat16", variance_dtype="bfloat16", param_indices=indices
        )
        for p in params:
            p.grad = torch.randn(p.shape).to(torch.bfloat16) * 1e-3
        opt.step()
        return [opt.state[p]["exp_avg"] for p in params]

    default, swapped = moments(None), moments([1, 0])
    assert torch.equal(default[0], moments([0, 1])[0])
    assert not torch.equal(default[0], swapped[0]) or not torch.equal(default[1], swapped[1])
    with pytest.raises(ValueError, match="param_indices"):
        moments([0, 0])


def test_a_runs_hyperparameters_are_frozen_saved_as_before_and_compared_by_one_rule():
    from arvc.train.optimizers import Hyperparameters

    hp = Hyperparameters(optimizer="AdaBelief", lr=1e-3, betas=[0.8, 0.99], eps=1e-18, weight_decay=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.lr = 2e-3
    with pytest.raises(TypeError):
        hp.kwargs["foreach"] = False  # the kwargs are read-only too
    # what a checkpoint stores: the keys and plain types arvc's checkpoints have always had
    assert hp.record() == {
        "optimizer": "AdaBelief", "lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-18, "weight_decay": 0.01,
        "use_8bit": False, "kwargs": {},
    }  # fmt: skip
    assert type(hp.record()["kwargs"]) is dict
    saved = Hyperparameters.saved({"name": "AdaBelief", "hyperparameters": hp.record(), "state": {}})
    assert saved == hp and hp.same_as(saved)
    # a resume's --lr keeps the optimizer (its state loads, its schedule goes on); another optimizer or
    # the 8-bit switch does not
    assert dataclasses.replace(hp, lr=1e-4).same_as(saved)
    assert not dataclasses.replace(hp, optimizer="AdamW").same_as(saved)
    assert not dataclasses.replace(hp, use_8bit=True).same_as(saved)
