"""What the end-to-end training tests share: the tiny config set up to train in seconds, and its options."""

from arvc.config import apply_overrides, load_config
from arvc.train.loop import TrainOptions


def tiny(batch_size: int = 4, **train):
    """The tiny config: 2 epochs, a checkpoint and a log row every step/epoch; `train` overrides train.*."""
    overrides = {
        "train.batch_size": batch_size,
        "train.epochs": 2,
        "train.save_every": 1,
        "train.log_interval": 1,
    }
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return apply_overrides(load_config("tiny"), overrides)


def options(tmp_path, data_dir, name: str = "run", batch_size: int = 4, **kwargs) -> TrainOptions:
    """TrainOptions for a run under tmp_path/name (config: `tiny(batch_size)` unless given)."""
    kwargs.setdefault("config", tiny(batch_size))
    return TrainOptions(run_dir=tmp_path / name, data_dir=data_dir, **kwargs)
