"""Several processes, one model: DistributedDataParallel under torchrun (or `arvc train --nproc N`).

torchrun starts one process per rank with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set;
:func:`process_group` reads them and joins the group (gloo on CPU, nccl on CUDA). Without them — a plain
`arvc train` — it yields a one-process :class:`Ranks` whose collectives are the identity, so the training
loop has a single code path.

What is shared and what is per rank:

- Every rank builds the models from the same seed (DDP also broadcasts rank 0's weights) and reads its
  share of each global batch (`data.EpochSampler`). The model's training noise is drawn per item from
  ``(seed, step, dataset index)`` (`model.noise`), so it is the same for any number of ranks.
- Per rank (``seed + rank``): torch's global RNG, which training no longer draws from (only dropout
  would, and every shipped config has ``p_dropout = 0``).
- Rank 0 alone writes checkpoints, metrics.csv, TensorBoard, loss.png and the export, and shows progress.
  Saves are collective (:meth:`Ranks.on_main`): every rank waits for rank 0's write and stops with an
  error if it failed, so no rank races ahead or hangs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from arvc.device import AUTO, resolve_device
from arvc.train.faults import STOP_REASONS

__all__ = ["DistributedError", "Ranks", "launch", "local_optimizer", "process_group", "share_shards"]

logger = logging.getLogger(__name__)

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this fails instead of hanging
FAILURE_GRACE = 30.0  # seconds `launch` lets the other ranks stop on their own after one failed
# Every stop reason (arvc.train.faults.STOP_REASONS, least to most urgent) as the number the ranks agree on:
# the largest wins.
STOP_CODES = {reason: code for code, reason in enumerate(STOP_REASONS)}
T = TypeVar("T")


class DistributedError(RuntimeError):
    """A multi-process run cannot start or continue; the message says why and what to do."""


@dataclass
class Ranks:
    """This process's place in the run, and the few collectives training needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sharding(self) -> dict[str, int]:
        """`make_loader` arguments that give this rank its share of every global batch."""
        return {"rank": self.rank, "world_size": self.world_size}

    def train_device(self, device: str | torch.device) -> torch.device:
        """The device this rank trains on: its own GPU (LOCAL_RANK) when `device` is CUDA."""
        wanted = torch.device(device)
        if self.distributed and wanted.type == "cuda":
            return self.device
        return wanted

    # --- collectives (the identity with one process) ----------------------------------------------------
    def _all_reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        reduced = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(reduced, op=op)
        return reduced.to(tensor.device)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over ranks (detached)."""
        if not self.distributed:
            return tensor
        return self._all_reduce(tensor, dist.ReduceOp.SUM) / self.world_size

    def all_true(self, flag: bool) -> bool:
        """True only if `flag` is true on every rank (every rank gets the same answer)."""
        if not self.distributed:
            return flag
        return bool(self._all_reduce(torch.tensor([int(flag)]), dist.ReduceOp.MIN).item())

    def stop_reason(self, local: str | None) -> str | None:
        """Why to stop after this step, agreed by all ranks (a signal on any rank stops every rank)."""
        if not self.distributed:
            return local
        code = int(self._all_reduce(torch.tensor([STOP_CODES[local]]), dist.ReduceOp.MAX).item())
        return next(name for name, value in STOP_CODES.items() if value == code)

    def on_main(self, action: Callable[[], T], what: str) -> T | None:
        """Run `action` on rank 0 while the others wait; if it fails there, every rank stops.

        Rank 0 re-raises its own error (with its clear message); the other ranks raise a DistributedError
        that points to it. Returns the action's result on rank 0, None elsewhere.
        """
        result, failure = None, None
        if self.is_main:
            try:
                result = action()
            except Exception as error:  # re-raised below, after telling the other ranks
                failure = error
        if self.distributed and not self.all_true(failure is None) and failure is None:
            raise DistributedError(f"rank 0 could not {what}; every rank stopped (rank 0's error says why)")
        if failure is not None:
            raise failure
        return result

    # --- models and optimizers --------------------------------------------------------------------------
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around `module` (gradients averaged over ranks); itself with one rank."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        # Weight-norm'd convs with one input channel get gradients whose (meaningless) stride on the size-1
        # axis differs from the parameter's; DDP copies them correctly and warns. Not a problem here.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def zero(
        self, params, build: Callable[[Any, list[int]], torch.optim.Optimizer], lr: float
    ) -> torch.optim.Optimizer:
        """ZeroRedundancyOptimizer: each rank keeps and steps `build(its shard, global indices)`; weights are
        broadcast. The indices are the shard's parameters' positions in `params` (stochastic rounding is
        keyed by them, so a sharded run draws the same bits as one process).

        Its state_dict (after :meth:`consolidate`) has the same layout as the unsharded optimizer's, so
        checkpoints load either way. Scheduler and GradScaler work on its (global) `param_groups`. A change
        to the weights outside `step()` (a schedule-free `eval()`, `arvc.train.weights`) goes through
        :func:`local_optimizer` and :func:`share_shards`.
        """
        from torch.distributed.optim import ZeroRedundancyOptimizer

        params = list(params)
        position = {id(p): i for i, p in enumerate(params)}  # the unsharded optimizer's numbering

        def local_optimizer(shard, **_defaults):
            flat = [p for group in shard for p in (group["params"] if isinstance(group, dict) else [group])]
            return build(shard, [position[id(p)] for p in flat])

        return ZeroRedundancyOptimizer(params, optimizer_class=local_optimizer, lr=lr)

    def consolidate(self, *optimizers: torch.optim.Optimizer) -> None:
        """Gather sharded (ZeRO) optimizer state on rank 0 before saving; must run on every rank."""
        for optimizer in optimizers:
            if hasattr(optimizer, "consolidate_state_dict"):
                optimizer.consolidate_state_dict(to=0)

    def seed(self, seed: int, step: int) -> None:
        """Seed this rank's own torch RNG from (seed + rank, step); only used with several ranks."""
        words = np.random.SeedSequence([seed + self.rank, step]).generate_state(2)
        torch.manual_seed(int(words[0]) << 32 | int(words[1]))


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer this process steps: under --zero (:meth:`Ranks.zero`) the one over its own shard,
    which holds the state of that shard's parameters only; otherwise `optimizer` itself."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer


def share_shards(optimizer: torch.optim.Optimizer) -> None:
    """After this process changed its shard's parameters outside `step()` (through
    :func:`local_optimizer`): under --zero every rank broadcasts the parameters of its own shard, as
    ZeroRedundancyOptimizer's `step()` ends, so every rank holds every parameter exactly as its owner
    computed it; the shard's param-group settings (e.g. a schedule-free mode) become the exposed ones, which
    its state_dict saves. Collective under --zero: every rank calls it. Without ZeRO it does nothing."""
    local = local_optimizer(optimizer)
    if local is optimizer:
        return
    optimizer._sync_param_groups(local.param_groups, optimizer.param_groups)  # as its step() does
    optimizer._sync_params()  # (torch's own: each owner broadcasts its shard)


# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def process_group(device: str = AUTO) -> Iterator[Ranks]:
    """Join the torchrun process group described by the environment (if any) for the duration: nccl when
    `device` (`arvc.device.resolve_device`) is CUDA, gloo otherwise.

    Reuses a group that is already initialised (and then leaves it open); otherwise initialises one from
    the environment (`env://`) and destroys it on exit.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Ranks()
        return
    missing = [name for name in ENV if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; start multi-process training "
            "with torchrun (or `arvc train --nproc N`), which sets them"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if resolve_device(device).device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per machine (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        backend, collective_device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, collective_device = "gloo", torch.device("cpu")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield Ranks(rank, world_size, local_rank, collective_device)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m arvc ARGS` as `nproc` ranks on this machine; wait and return their exit status.

    Each process gets the environment torchrun would give it (RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT; OMP_NUM_THREADS = cores / nproc and
    OMP_WAIT_POLICY=PASSIVE unless set). They stay in this process group, so Ctrl-C in the terminal
    reaches each of them once, exactly as with one process (finish the step, rank 0 saves, exit 0; again:
    exit at once); a SIGTERM sent to this process is passed on to each. If one rank fails, the others get
    FAILURE_GRACE seconds to stop on their own (a failed save stops them all), then are killed.
    """
    if nproc < 1:
        raise DistributedError(f"--nproc {nproc}: need at least 1 process")
    env = {
        **os.environ,
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Ranks share the machine: OpenMP's default spin-wait lets one rank's idle threads take the cores the
    # others need (benchmarks/threads.py --concurrent 2: 1.7x slower median steps, 5x slower worst steps).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = [sys.executable, "-m", "arvc", *args]
    logger.info("starting %d processes: %s", nproc, " ".join(command))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is for the ranks
    previous_term = signal.getsignal(signal.SIGTERM)
    ranks: list[subprocess.Popen] = []
    try:
        for rank in range(nproc):
            try:
                ranks.append(
                    subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                )
            except OSError as error:
                raise DistributedError(f"could not start process {rank} of {nproc}: {error}") from error
        signal.signal(
            signal.SIGTERM, lambda signum, frame: [p.send_signal(signum) for p in ranks if p.poll() is None]
        )
        failed_at = None
        while any(p.poll() is None for p in ranks):
            if failed_at is None and any(p.poll() for p in ranks):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE:
                for p in ranks:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
        codes = [p.wait() for p in ranks]
        return next((code for code in codes if code), 0)
    finally:  # also when a rank could not start: the parent's handlers back, the started ranks ended
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
