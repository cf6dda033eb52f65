"""The web UI's one job at a time: a training or a comparison, in a background thread of the server.

The job outlives the browser tab that started it (closing the page stops nothing; reopening shows it),
and a second start while one runs is refused (`Busy`). Everything the job does is a library call the CLI
makes too — `arvc.train.request.plan_training` (every check, `arvc.train.settings.check_run` included) /
`prepare` and `arvc.train.loop.train`, or
`arvc.compare.runner.run_compare`; the job only records their progress for the page to show.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arvc.config import TrainConfig
from arvc.train.callbacks import Callbacks
from arvc.train.faults import interrupted
from arvc.train.validation import selected

__all__ = ["Busy", "JobStatus", "Jobs"]

logger = logging.getLogger(__name__)
MAX_POINTS = 2000  # loss points kept for the plot (thinned beyond that)
MAX_LOG_LINES = 200


class _LogLines(logging.Handler):
    """arvc's log records from the job's thread, into its status (the page's Log box)."""

    def __init__(self, status: JobStatus, lock: threading.Lock, thread_name: str) -> None:
        super().__init__(logging.INFO)
        # not `self.lock`: logging.Handler's own lock has that name, and handle() holds it around emit()
        self.status, self.status_lock, self.thread_name = status, lock, thread_name
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != self.thread_name:
            return
        line = self.format(record)
        with self.status_lock:
            self.status.log = [*self.status.log[-(MAX_LOG_LINES - 1) :], line]


class Busy(RuntimeError):
    """A job is already running on this server."""


@dataclass
class JobStatus:
    kind: str  # "train" or "compare"
    name: str
    folder: Path  # the run folder (train) or the comparison folder (compare)
    state: str = "preparing"  # preparing, training, finished, stopped, failed
    started: float = field(default_factory=time.time)
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    total_steps: int = 0
    first_step: int = 0  # the step a resumed run started from (ETA counts this session's steps)
    step_started: float | None = None
    losses: list[dict[str, float]] = field(default_factory=list)  # step, loss_mel, loss_g, loss_d
    detail: str = ""  # e.g. preprocessing progress, or the contestant being trained
    log: list[str] = field(default_factory=list)  # the job's last arvc log lines (what the CLI prints)
    message: str = ""  # how it ended: result or error
    result: dict[str, Any] = field(default_factory=dict)
    mel_weight: float = TrainConfig.c_mel  # the run's c_mel: the training mel loss is mel L1 times this

    @property
    def running(self) -> bool:
        return self.state in ("preparing", "training")

    def eta_s(self) -> float | None:
        done = self.step - self.first_step
        if self.state != "training" or done < 1 or self.step_started is None or not self.total_steps:
            return None
        return (time.time() - self.step_started) / done * max(0, self.total_steps - self.step)


class _Callbacks(Callbacks):
    """arvc.train.callbacks.Callbacks that write into a JobStatus (read by the page on its timer)."""

    def __init__(self, status: JobStatus, lock: threading.Lock) -> None:
        self.status, self.lock = status, lock

    def on_start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        with self.lock:
            s = self.status
            s.state, s.total_epochs = "training", total_epochs
            s.total_steps = total_epochs * steps_per_epoch
            s.step = s.first_step = (start_epoch - 1) * steps_per_epoch
            s.epoch, s.step_started = start_epoch, time.time()

    def on_step(self, epoch: int, step: int, losses: dict[str, float], lr: float) -> None:
        with self.lock:
            s = self.status
            s.epoch, s.step = epoch, step
            s.losses.append(
                {"step": step, **{k: losses[k] for k in ("loss_mel", "loss_g", "loss_d") if k in losses}}
            )
            if len(s.losses) > MAX_POINTS:
                s.losses = s.losses[::2]


class Jobs:
    """The server's job slot. `start_*` checks everything first (raising ValueError and the like, as the
    CLI would, before any work) and only then takes the slot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: JobStatus | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- what the page calls -------------------------------------------------------------------------
    def status(self) -> JobStatus | None:
        with self._lock:
            return self._status

    def running(self) -> bool:
        status = self.status()
        return status is not None and status.running

    def stop(self) -> bool:
        """Ask the running job to stop at its next step boundary (a checkpoint is saved, as with Ctrl-C)."""
        if not self.running():
            return False
        self._stop.set()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job's thread to end (tests, shutdown); True if it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def start_training(self, request) -> JobStatus:
        from arvc.train.request import plan_training

        plan = plan_training(request)  # every check before any work: a refused request changes nothing
        status = JobStatus(
            "train", plan.run_dir.name, plan.run_dir, mel_weight=plan.options.config.train.c_mel
        )
        return self._start(status, lambda callbacks, stop: self._train(plan, status, callbacks, stop))

    def start_compare(self, dataset: Path | None, out_dir: Path, optimizers: str, **kwargs) -> JobStatus:
        from arvc.compare.runner import check_request
        from arvc.device import AUTO as AUTO_DEVICE
        from arvc.train.runlock import check_unlocked

        check_request(  # the request run_compare will check, so a refused one takes no slot
            dataset,
            optimizers,
            kwargs.get("schedule", "paired"),
            kwargs.get("precision", "fp32"),
            kwargs.get("device", AUTO_DEVICE),
            kwargs.get("config", "tiny"),
            kwargs.get("overrides"),
            kwargs.get("allow_mel_rvc_config", False),
        )
        check_unlocked(out_dir)  # another process runs this comparison: refused before taking the slot
        status = JobStatus("compare", out_dir.name, out_dir)

        def run(callbacks, stop):
            from arvc.compare.report import REPORT_FILE
            from arvc.compare.runner import run_compare

            def progress(event: str, **info) -> None:
                if event == "run":
                    with self._lock:
                        status.detail = (
                            f"{info['index'] + 1}/{info['count']}: {info['name']} seed {info['seed']}"
                        )
                        status.losses = []
                elif event == "start":
                    callbacks.on_start(1, info["total"], 1)
                    with self._lock:
                        status.step = status.first_step = info["done"]
                elif event == "step":
                    callbacks.on_step(info["epoch"], info["step"], info["losses"], info["lr"])

            result = run_compare(dataset, out_dir, optimizers, progress=progress, stop=stop, **kwargs)
            if not result.ranked and not result.stopped_by:
                failed = (f"{name} seed {seed}: {error}" for name, seed, error in result.failures)
                raise RuntimeError("no contestant finished: " + "; ".join(failed))
            report = out_dir / REPORT_FILE
            return result.stopped_by, {"report": report if report.is_file() else None}

        return self._start(status, run)

    # --- the job thread ------------------------------------------------------------------------------
    def _start(self, status: JobStatus, work) -> JobStatus:
        with self._lock:
            if self._status is not None and self._status.running:
                running = self._status
                raise Busy(
                    f"a {running.kind} is already running ({running.name}); one at a time per server — "
                    "stop it or wait for it to finish"
                )
            self._status = status
            self._stop = threading.Event()
        callbacks = _Callbacks(status, self._lock)
        stop = self._stop

        thread_name = f"arvc-{status.kind}-{status.name}"
        handler = _LogLines(status, self._lock, thread_name)

        def body() -> None:
            logging.getLogger("arvc").addHandler(handler)
            try:
                stopped_by, result = work(callbacks, stop)
            except BaseException as error:  # shown on the page; the server goes on
                logger.exception("%s %s failed", status.kind, status.name)
                with self._lock:
                    status.state, status.message = "failed", f"{type(error).__name__}: {error}"
                return
            finally:
                logging.getLogger("arvc").removeHandler(handler)
            with self._lock:
                status.result = result
                if not interrupted(stopped_by):
                    status.state = "finished"
                    status.message = result.get("summary", "finished")
                else:
                    status.state = "stopped"
                    status.message = (
                        f"stopped ({stopped_by}) after step {status.step}; a checkpoint was saved: "
                        + (
                            "resume the run to continue"
                            if status.kind == "train"
                            else "run it again to go on"
                        )
                    )

        self._thread = threading.Thread(target=body, name=thread_name, daemon=True)
        self._thread.start()
        return status

    def _train(self, plan, status: JobStatus, callbacks: _Callbacks, stop: threading.Event):
        from arvc.train.loop import train
        from arvc.train.request import prepare
        from arvc.train.runlock import run_lock

        def preprocessing(done, total, what) -> None:
            with self._lock:
                status.detail = f"preprocessing {done}/{total}: {what}"

        with run_lock(plan.run_dir):  # from the data on: another process is refused (it was checked before)
            prepare(plan, preprocessing)
            with self._lock:
                status.detail = ""
            result = train(plan.run_settings.with_stop(stop), callbacks)
        summary = result.summary()
        if result.best is not None:
            criterion = selected(plan.options.config.train.select, result.best)
            summary += f"; best held-out {criterion} at epoch {result.best['epoch']}"
        return result.stopped_by, {
            "summary": summary,
            "best": result.best,
            "exports": {k: str(v) for k, v in result.exports.items()},
            "samples_dir": str(result.samples_dir) if result.samples_dir else None,
        }
