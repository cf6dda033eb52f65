"""Turn what the user gave (a folder of recordings, or nothing: the demo voice) into training data."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from arvc._files import cache_dir
from arvc.config import RunConfig
from arvc.data.demo import DEMO_MANIFEST, generate_demo_voice
from arvc.data.outputs import RunFolder
from arvc.data.preprocess import MANIFEST, DataError, PreprocessResult, Progress, preprocess
from arvc.device import AUTO as AUTO_DEVICE

__all__ = [
    "DEMO_SECONDS",
    "DataSettings",
    "DataSource",
    "cache_dir",
    "data_settings",
    "prepare_data",
    "preprocessed_from",
    "recorded_features",
]

logger = logging.getLogger(__name__)

DEMO_SECONDS = 150.0
DEFAULT_F0 = "pm"
DEFAULT_FEATURES = "mel"
_CONFIG_FOR_RATE = {16000: "tiny", 32000: "v2-32k", 40000: "v2-40k", 48000: "v2-48k"}


@dataclass(frozen=True)
class DataSettings:
    """How a run's data is (or will be) made: the f0 method and content features preprocessing uses."""

    f0_method: str
    features: str
    reused: bool  # True: they are the settings recorded by an earlier `arvc preprocess` of this run
    embedder_layer: int | None = None  # HuBERT layer (None: the model's default)


@dataclass(frozen=True)
class DataSource:
    """What a run's preprocessed data was made from."""

    folder: Path | None  # the recordings' folder (None: data preprocessed before arvc recorded it)
    demo: bool  # the embedded demo voice


def preprocessed_from(data_dir: Path) -> DataSource | None:
    """Where the preprocessed data in `data_dir` came from (its preprocess.json says); None when there is
    none. Data from before the folder was recorded is the demo voice when every source is a demo file."""
    try:
        recorded = json.loads((Path(data_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    folder = recorded.get("dataset")
    if folder is not None:
        return DataSource(Path(folder), (Path(folder) / DEMO_MANIFEST).is_file())
    sources = recorded.get("sources") or {}
    demo = bool(sources) and all(re.fullmatch(r"demo_\d\d\.wav", name) for name in sources)
    return DataSource(None, demo)


def _train_at_rate(config: str, features: str | None) -> str:
    """The advice to train data preprocessed at another rate with `config`, the config for that rate: an
    RVC config (v2-*) needs HuBERT features, so mel data needs preprocessing again for it."""
    if features == "mel" and config != "tiny":
        return (
            f"train with --config {config} after preprocessing again with --features hubert --hubert PATH "
            f"(config {config} needs HuBERT features and this data has mel features), "
        )
    return f"train with --config {config} to use it, "


def data_settings(
    data_dir: Path,
    cfg: RunConfig,
    f0_method: str | None = None,
    features: str | None = None,
    embedder_layer: int | None = None,
) -> DataSettings:
    """The settings to preprocess `data_dir` with, so that data already there is reused, never redone.

    `f0_method`/`features` are what the user asked for (None: not asked). If `data_dir` holds data made by
    `arvc preprocess`, its recorded settings win where the user asked for nothing; a setting that differs
    from what the user (or the config) asks for is a DataError saying what differs and how to keep the data,
    because preprocessing would otherwise silently recompute it (the README flow `arvc preprocess DIR
    --f0 harvest` then `arvc train DIR` used to throw the harvest pitch away).
    """
    manifest = Path(data_dir) / MANIFEST
    try:
        recorded = json.loads(manifest.read_text())
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError) as error:
        raise DataError(f"{manifest} is unreadable ({error}); remove {data_dir} to start over") from error
    if not isinstance(recorded, dict):
        return DataSettings(f0_method or DEFAULT_F0, features or DEFAULT_FEATURES, False, embedder_layer)
    keep = "(nothing was changed)"
    problems = []
    rate = recorded.get("sample_rate")
    if rate != cfg.data.sampling_rate:
        other = _CONFIG_FOR_RATE.get(rate)
        problems.append(
            f"it was preprocessed at {rate} Hz but config {cfg.name} trains at {cfg.data.sampling_rate} Hz: "
            + (_train_at_rate(other, recorded.get("features")) if other else "")
            + f"or preprocess again with --sample-rate {cfg.data.sampling_rate}"
        )
    dim = recorded.get("feature_dim")
    if dim != cfg.data.feature_dim:
        problems.append(
            f"its features are {dim}-d but config {cfg.name} expects {cfg.data.feature_dim}-d: train with "
            f"--set data.feature_dim={dim} to use them, or preprocess again with --feature-dim "
            f"{cfg.data.feature_dim}"
        )
    for flag, asked, key in (("--f0", f0_method, "f0_method"), ("--features", features, "features")):
        if asked is not None and asked != recorded.get(key):
            problems.append(
                f"it holds {key.replace('_', ' ')} {recorded.get(key)!r} but {flag} {asked} was asked for: "
                f"drop {flag} to use the data as it is, or preprocess again with {flag} {asked}"
            )
    if embedder_layer is not None and embedder_layer != recorded.get("embedder_layer"):
        problems.append(
            f"its HuBERT features come from layer {recorded.get('embedder_layer') or 'default'} but "
            f"--embedder-layer {embedder_layer} was asked for: drop it to use the data as it is, or "
            "preprocess again"
        )
    if problems:
        raise DataError(f"{data_dir} already holds preprocessed data, and {'; '.join(problems)} {keep}")
    logger.info(
        "reusing the preprocessed data in %s (%d Hz, f0 %s, %s features)",
        data_dir,
        rate,
        recorded.get("f0_method"),
        recorded.get("features"),
    )
    return DataSettings(
        recorded.get("f0_method"), recorded.get("features"), True, recorded.get("embedder_layer")
    )


def _recorded(data_dir: Path, key: str):
    try:
        recorded = json.loads((Path(data_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return recorded.get(key) if isinstance(recorded, dict) else None


def recorded_features(data_dir: Path) -> str | None:
    """The content features (mel, hubert) the data in `data_dir` was preprocessed with; None: not known."""
    return _recorded(data_dir, "features")


def recorded_embedder_layer(data_dir: Path) -> int | None:
    """The HuBERT layer the data in `data_dir` was preprocessed with; None: the default, or not known."""
    layer = _recorded(data_dir, "embedder_layer")
    return layer if isinstance(layer, int) else None


def prepare_data(
    cfg: RunConfig,
    run_dir: Path,
    dataset_dir: Path | None = None,
    *,
    f0_method: str = "pm",
    features: str = "mel",
    hubert_path: Path | None = None,
    progress: Progress | None = None,
    rmvpe_path: Path | None = None,
    embedder_layer: int | None = None,
    device: str = AUTO_DEVICE,
) -> PreprocessResult:
    """Preprocess `dataset_dir` (or the generated demo voice) into `run_dir/data`; finished files are kept.
    `device` runs the neural analysers (hubert, rmvpe, crepe): auto, cpu, cuda or cuda:N."""
    if features == "mel" and cfg.data.feature_dim != 80 and cfg.name != "tiny":
        logger.info("mel features with %d dims for config %s", cfg.data.feature_dim, cfg.name)
    # HuBERT features of any width the config asks for: 768 (v2, the last layer) or 256 (v1, layer 9
    # through ContentVec's final_proj); the extractor says, before any file is read, when the folder
    # has neither width.
    if dataset_dir is None:
        demo_dir = cache_dir() / f"demo-voice-{cfg.data.sampling_rate}"
        logger.info("no dataset given: using the embedded demo voice (%s)", demo_dir)
        generate_demo_voice(demo_dir, seconds=DEMO_SECONDS, sr=cfg.data.sampling_rate)
        dataset_dir = demo_dir
    return preprocess(
        dataset_dir,
        RunFolder(run_dir).data,
        cfg.data.sampling_rate,
        f0_method,
        features=features,
        feature_dim=cfg.data.feature_dim,
        hubert_path=hubert_path,
        progress=progress,
        rmvpe_path=rmvpe_path,
        embedder_layer=embedder_layer,
        device=device,
    )
