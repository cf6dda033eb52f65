"""The error training raises for its users (kept apart so every training module can raise it)."""

__all__ = ["SaveInterrupted", "TrainError"]


class TrainError(RuntimeError):
    """Training cannot start or continue as asked; the message says why and what to do."""


class SaveInterrupted(TrainError):
    """A second SIGINT/SIGTERM arrived while a checkpoint was being written: that checkpoint was not saved
    (the disk is fine); `exit_status` is the signal's conventional shell status (130, 143)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status
