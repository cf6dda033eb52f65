"""Turn what the user gave (a folder of recordings, or nothing: the demo voice) into training data."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from arvc.config import RunConfig
from arvc.data.demo import generate_demo_voice
from arvc.data.preprocess import DataError, PreprocessResult, Progress, preprocess

__all__ = ["DEMO_SECONDS", "cache_dir", "prepare_data"]

logger = logging.getLogger(__name__)

DEMO_SECONDS = 150.0


def cache_dir() -> Path:
    """Where generated demo audio is kept between runs ($ARVC_CACHE_DIR, else ~/.cache/arvc)."""
    return Path(os.environ.get("ARVC_CACHE_DIR", Path.home() / ".cache" / "arvc")).expanduser()


def prepare_data(
    cfg: RunConfig,
    run_dir: Path,
    dataset_dir: Path | None = None,
    *,
    f0_method: str = "pm",
    features: str = "mel",
    hubert_path: Path | None = None,
    progress: Progress | None = None,
) -> PreprocessResult:
    """Preprocess `dataset_dir` (or the generated demo voice) into `run_dir/data`; finished files are kept."""
    if features == "mel" and cfg.data.feature_dim != 80 and cfg.name != "tiny":
        logger.info("mel features with %d dims for config %s", cfg.data.feature_dim, cfg.name)
    if features == "hubert" and cfg.data.feature_dim != 768:
        raise DataError(
            f"hubert features are 768-d but config {cfg.name} expects {cfg.data.feature_dim}-d features"
        )
    if dataset_dir is None:
        demo_dir = cache_dir() / f"demo-voice-{cfg.data.sampling_rate}"
        logger.info("no dataset given: using the embedded demo voice (%s)", demo_dir)
        generate_demo_voice(demo_dir, seconds=DEMO_SECONDS, sr=cfg.data.sampling_rate)
        dataset_dir = demo_dir
    return preprocess(
        dataset_dir,
        Path(run_dir) / "data",
        cfg.data.sampling_rate,
        f0_method,
        features=features,
        feature_dim=cfg.data.feature_dim,
        hubert_path=hubert_path,
        progress=progress,
    )
