"""The bf16 precision study: does Kahan summation (and stochastic rounding) keep a long bf16 run on course?

A small teacher–student regression is trained for many cheap steps five times on the same batches:
fp32 AdamW (the reference trajectory) and AnyPrecisionAdamW with bf16 weights and bf16 moments, with and
without Kahan summation, with and without stochastic rounding of the moments. Each run's distance from the
fp32 weights, ||θ − θ_fp32|| / ||θ_fp32||, and its loss are recorded — the evidence behind the guide's claim
that Kahan prevents gradual precision loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arvc.optim import AnyPrecisionAdamW

__all__ = ["PRECISION_RUNS", "PrecisionRun", "plot_precision_study", "precision_study"]

logger = logging.getLogger(__name__)

# name -> (parameter dtype, optimizer keyword arguments)
PRECISION_RUNS = {
    "fp32 AdamW (reference)": (torch.float32, {}),
    "bf16 + Kahan + stochastic rounding": (torch.bfloat16, {"use_kahan_summation": True}),
    "bf16 + Kahan, nearest rounding": (
        torch.bfloat16,
        {"use_kahan_summation": True, "stochastic_rounding": False},
    ),
    "bf16, stochastic rounding, no Kahan": (torch.bfloat16, {"use_kahan_summation": False}),
    "bf16, nearest rounding, no Kahan": (
        torch.bfloat16,
        {"use_kahan_summation": False, "stochastic_rounding": False},
    ),
}


@dataclass
class PrecisionRun:
    name: str
    steps: list[int] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)  # relative to the fp32 weights at the same step
    loss: list[float] = field(default_factory=list)  # mean training loss since the previous record


def _student(seed: int, width: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(32, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, 1),
    )


def _batches(seed: int, steps: int, batch: int):
    """The same stream of (x, y) for every run: a fixed random teacher network plus a little noise."""
    generator = torch.Generator().manual_seed(seed + 1)
    teacher_in = torch.randn(32, 16, generator=generator)
    teacher_out = torch.randn(16, 1, generator=generator) / 4
    for _ in range(steps):
        x = torch.randn(batch, 32, generator=generator)
        yield x, torch.tanh(x @ teacher_in) @ teacher_out + 0.01 * torch.randn(batch, 1, generator=generator)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


def precision_study(
    steps: int = 20_000,
    record_every: int = 200,
    lr: float = 1e-3,
    batch: int = 64,
    width: int = 64,
    seed: int = 0,
) -> list[PrecisionRun]:
    """Train the five configurations in lockstep on the same batches; return their recorded trajectories."""
    if steps < record_every:
        raise ValueError(f"steps ({steps}) must be at least record_every ({record_every})")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add synchronisation
    try:
        return _run(steps, record_every, lr, batch, width, seed)
    finally:
        torch.set_num_threads(threads)


def _run(steps: int, record_every: int, lr: float, batch: int, width: int, seed: int) -> list[PrecisionRun]:
    models, optimizers, runs, sums = {}, {}, {}, {}
    for name, (dtype, kwargs) in PRECISION_RUNS.items():
        models[name] = _student(seed, width).to(dtype)
        extra = (
            {"momentum_dtype": "bf16", "variance_dtype": "bf16", **kwargs} if dtype == torch.bfloat16 else {}
        )
        optimizers[name] = AnyPrecisionAdamW(
            models[name].parameters(), lr=lr, weight_decay=0.0, seed=seed, **extra
        )
        runs[name], sums[name] = PrecisionRun(name), 0.0
    reference = next(iter(PRECISION_RUNS))
    for step, (x, y) in enumerate(_batches(seed, steps, batch), start=1):
        for name, model in models.items():
            dtype = next(model.parameters()).dtype
            loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            sums[name] += loss.item()
        if step % record_every == 0:
            ref = _flat(models[reference])
            for name, model in models.items():
                run = runs[name]
                run.steps.append(step)
                run.distance.append(((_flat(model) - ref).norm() / ref.norm()).item())
                run.loss.append(sums[name] / record_every)
                sums[name] = 0.0
            logger.debug("precision study: step %d/%d", step, steps)
    return list(runs.values())


def plot_precision_study(runs: list[PrecisionRun], path: Path) -> Path:
    """Distance from the fp32 trajectory (log scale) and training loss, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arvc.bench.plot import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for index, run in enumerate(runs):  # same colour for a configuration in both panels
        if index:  # the reference is at distance 0
            left.plot(run.steps, run.distance, label=run.name, color=f"C{index}")
        right.plot(run.steps, run.loss, label=run.name, color=f"C{index}")
    left.set(
        title="distance from the fp32 weights", xlabel="step", ylabel="‖θ − θ_fp32‖ / ‖θ_fp32‖", yscale="log"
    )
    right.set(title="training loss (MSE)", xlabel="step", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return save_figure(fig, path, dpi=90)
