"""arvc.train.timing: the optimizer-step timer that compare and benchmarks/gpu_check.py share."""

import itertools

import torch

from arvc.optim import build_optimizer
from arvc.train import timing


def _optimizers():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    return [build_optimizer("AdamW", [p], lr=1e-3) for p in params], params


def test_records_each_step_from_its_own_hooks(monkeypatch):
    clock = itertools.count(start=10.0, step=0.5)  # every reading half a second after the last
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    timer = timing.OptimizerStepTimer("cpu")
    optimizers, params = _optimizers()
    timer.attach(*optimizers)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        for optimizer in optimizers:
            optimizer.step()
    assert timer.durations == [0.5] * 6  # pre reads t, post reads t + 0.5: one entry per step of each
    assert timer.total == 3.0


def test_synchronises_cuda_around_each_step(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    timer = timing.OptimizerStepTimer("cuda:0")
    (optimizer, _), (param, _) = _optimizers()
    timer.attach(optimizer)
    param.grad = torch.ones_like(param)
    optimizer.step()
    assert calls == ["sync", "sync"] and len(timer.durations) == 1


def test_cpu_does_not_synchronise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: (_ for _ in ()).throw(AssertionError("synced")))
    timer = timing.OptimizerStepTimer(torch.device("cpu"))
    (optimizer, _), (param, _) = _optimizers()
    timer.attach(optimizer)
    param.grad = torch.ones_like(param)
    optimizer.step()
    assert len(timer.durations) == 1
