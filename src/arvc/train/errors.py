"""The error training raises for its users (kept apart so every training module can raise it)."""

__all__ = ["TrainError"]


class TrainError(RuntimeError):
    """Training cannot start or continue as asked; the message says why and what to do."""
