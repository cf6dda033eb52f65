"""The error training raises for its users (kept apart so every training module can raise it)."""

__all__ = ["SaveInterrupted", "SettingsError", "TrainError"]


class TrainError(RuntimeError):
    """Training cannot start or continue as asked; the message says why and what to do."""


class SettingsError(TrainError, ValueError):
    """A run refused before any work for a setting that cannot be (`arvc.train.settings.check_run`): a
    TrainError for a caller of the Python API, a ValueError (a bad value) for a front end's checks."""


class SaveInterrupted(TrainError):
    """A second SIGINT/SIGTERM arrived while a checkpoint was being written: that checkpoint was not saved
    (the disk is fine); `exit_status` is the signal's conventional shell status (130, 143)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status
