"""Validation messages and bit-exact resume with low-precision buffers.

The behaviours every registry entry shares on every path (closure, skipping, groups, sparse, ...) run over
the conformance table: tests/optim/test_conformance.py.
"""

import io

import pytest
import torch
from _optim_helpers import RESUME, configs, feed, gradient_stream, make_model, two_groups

from arvc.optim import OPTIMIZERS

ALL = [spec.cls for spec in OPTIMIZERS.values()]
IDS = list(OPTIMIZERS)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1e-3}, "learning rate"),
        ({"betas": (1.0, 0.999)}, "beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "beta parameter at index 1"),
        ({"eps": -1e-8}, "epsilon"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_parameter(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)


# Configurations whose resume must be exact: every registry entry in float32, and the RESUME rows of
# _optim_helpers.CONFIGS (low-precision buffers included).
RESUME_CASES = [
    pytest.param(spec.cls, torch.float32, {}, id=name) for name, spec in OPTIMIZERS.items()
] + configs(RESUME, "cls", "dtype", "kwargs")


def _save_load(optimizer_state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(optimizer_state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("cls, dtype, kwargs", RESUME_CASES)
def test_resume_mid_run_is_bit_identical(cls, dtype, kwargs):
    shapes = [p.shape for p in make_model().parameters()]
    grads = gradient_stream(shapes, 20, seed=12)

    straight_model = make_model(dtype)
    straight = cls(two_groups(straight_model), **kwargs)
    for step_grads in grads:
        feed(straight, list(straight_model.parameters()), step_grads)

    first_model = make_model(dtype)
    first = cls(two_groups(first_model), **kwargs)
    for step_grads in grads[:10]:
        feed(first, list(first_model.parameters()), step_grads)
    saved_state = _save_load(first.state_dict())
    saved_weights = [p.detach().clone() for p in first_model.parameters()]
    dtypes_before = {k: v.dtype for s in first.state.values() for k, v in s.items()}

    torch.rand(1000)  # whatever else touches the global RNG must not matter
    resumed_model = make_model(dtype, seed=99)
    with torch.no_grad():
        for p, w in zip(resumed_model.parameters(), saved_weights, strict=True):
            p.copy_(w)
    resumed = cls(two_groups(resumed_model), **kwargs)
    resumed.load_state_dict(saved_state)
    assert {k: v.dtype for s in resumed.state.values() for k, v in s.items()} == dtypes_before
    for step_grads in grads[10:]:
        feed(resumed, list(resumed_model.parameters()), step_grads)

    for p, q in zip(resumed_model.parameters(), straight_model.parameters(), strict=True):
        assert torch.equal(p, q)
