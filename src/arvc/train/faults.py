"""Surviving interruptions: stop on SIGINT/SIGTERM at a step boundary, and how a run's stop is classified.

`TrainResult.stopped_by` names why a run ended before its last epoch; this module is the one place that
says what each reason means (`interrupted`, `exit_status`), for the loop, the CLI, the web UI and compare:

| stopped_by | interrupted | exported | exit status |
|---|---|---|---|
| None (every epoch trained) | no | yes | 0 |
| "max_steps" (`--max-steps`) | no | yes | 0 |
| "early_stop" (held-out mel L1 stopped improving) | no | yes | 0 |
| "SIGINT" / "SIGTERM" (Ctrl-C, kill) | yes: resume to continue | no | 130 / 143 |
| "stop request" (the web UI's Stop) | yes: resume to continue | no | 0 |
"""

from __future__ import annotations

import logging
import signal
import threading

__all__ = [
    "EARLY_STOP",
    "MAX_STEPS",
    "SIGNAL_STOPS",
    "STOP_REASONS",
    "STOP_REQUEST",
    "StopOnSignal",
    "exit_status",
    "interrupted",
]

logger = logging.getLogger(__name__)

MAX_STEPS = "max_steps"  # --max-steps reached
EARLY_STOP = "early_stop"  # held-out mel L1 stopped improving (train.early_stop)
STOP_REQUEST = "stop request"  # TrainOptions.stop was set (the web UI's Stop)
SIGNAL_STOPS = ("SIGINT", "SIGTERM")  # the signals StopOnSignal handles, by name
_ENDS = (None, MAX_STEPS, EARLY_STOP)  # a run that ends so is finished: its model is exported
# Every way a run stops (None: it finished), least to most urgent: when the ranks of a multi-process run
# stop for different reasons they all take the most urgent one (arvc.train.distributed.STOP_CODES), an
# interruption over an end and a signal, whose exit status tells the shell, over the web UI's stop request.
STOP_REASONS = (*_ENDS, STOP_REQUEST, *SIGNAL_STOPS)


def interrupted(stopped_by: str | None) -> bool:
    """Whether a run that ended with `stopped_by` was interrupted (a signal or a stop request): a checkpoint
    was saved, nothing was exported, and resuming the run continues it. Not for a finished run, one that
    reached --max-steps or one stopped early: those are exported."""
    return stopped_by not in _ENDS


def exit_status(stopped_by: str | None) -> int | None:
    """The shell's status for a run a signal stopped, 128 + the signal's number (SIGINT 130, SIGTERM 143),
    so that `arvc train ... && arvc export ...` does not go on; None for any other end (finished, max_steps,
    early_stop, the web UI's stop request)."""
    if stopped_by not in SIGNAL_STOPS:
        return None
    return 128 + signal.Signals[stopped_by].value


class StopOnSignal:
    """First SIGINT/SIGTERM: ask the loop to finish its step, save and exit. Second: exit at once.

    Used as a context manager around the training loop; handlers are only installed in the main
    thread (signals cannot be handled elsewhere) and are restored on exit.
    """

    SIGNALS = tuple(signal.Signals[name] for name in SIGNAL_STOPS)

    def __init__(self) -> None:
        self.requested: str | None = None
        self.forced: str | None = (
            None  # the second signal's name: exiting at once (a save in progress is lost)
        )
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            logger.warning("%s again: exiting immediately (the last checkpoint is intact)", name)
            self.forced = name
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = name
        logger.warning(
            "%s: finishing the current step, then saving a checkpoint (again to exit at once)", name
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self._restore()
