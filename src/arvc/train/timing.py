"""Wall time of each optimizer step, synchronised with the device so that queued GPU work is counted."""

from __future__ import annotations

import time

import torch


class OptimizerStepTimer:
    """Step hooks on optimizers: the wall time of every ``optimizer.step()``, in order, in ``durations``.

    On CUDA the device is synchronised before and after each step (``sync``), so the time is the step's
    kernels, not only their launch; on the CPU ``sync`` does nothing.
    """

    def __init__(self, device: str | torch.device) -> None:
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else _no_sync
        self.durations: list[float] = []
        self._started = 0.0

    def attach(self, *optimizers: torch.optim.Optimizer) -> None:
        for optimizer in optimizers:
            optimizer.register_step_pre_hook(self._pre)
            optimizer.register_step_post_hook(self._post)

    @property
    def total(self) -> float:
        return sum(self.durations)

    def _pre(self, *_) -> None:
        self.sync()
        self._started = time.perf_counter()

    def _post(self, *_) -> None:
        self.sync()
        self.durations.append(time.perf_counter() - self._started)


def _no_sync() -> None:
    pass
