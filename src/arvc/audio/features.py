"""Content features: what was said, 50 frames per second of 16 kHz audio (RVC's hop of 320).

Two extractors plug in behind one call signature, ``extractor(wave16k) -> [T, feature_dim]``:

* ``mel`` - built in, no weights, deterministic: a per-utterance normalised log-mel
  spectrogram. It carries the speaker's timbre as well as the content, so it is only good for
  smoke tests, demos and the ``tiny`` config; real voice conversion needs ``hubert``.
* ``hubert`` - a HuBERT/ContentVec model in Hugging Face format, loaded from a local directory
  the user provides (``transformers`` is the optional ``arvc[hubert]`` extra). Nothing is
  downloaded. Like RVC v2 it takes the last transformer layer (768 dims for a base model).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from arvc.audio.mel import mel_spectrogram

__all__ = [
    "FEATURE_EXTRACTORS",
    "FEATURE_HOP",
    "FEATURE_SR",
    "FeatureExtractor",
    "HubertFeatures",
    "MelFeatures",
    "get_extractor",
]

log = logging.getLogger(__name__)

FEATURE_SR = 16000
FEATURE_HOP = 320  # 20 ms: 50 frames/s, half the f0 / spectrogram frame rate
FEATURE_EXTRACTORS = ("mel", "hubert")


class FeatureExtractor(Protocol):
    """Anything that maps a mono 16 kHz float wave to float32 ``[frames, feature_dim]``."""

    name: str
    feature_dim: int

    def __call__(self, wave16k: np.ndarray) -> np.ndarray: ...


class MelFeatures:
    """Built-in stand-in for HuBERT: log-mel bands, each normalised to zero mean, unit variance per clip.

    Per-clip normalisation removes loudness and channel colouring, which is the closest a
    weight-free feature gets to "content". It does not remove the speaker: models trained on
    it reproduce their input voice, so use ``hubert`` for real voice conversion.
    """

    name = "mel"
    n_fft = 1024

    def __init__(self, feature_dim: int = 80):
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.feature_dim = int(feature_dim)

    def __call__(self, wave16k: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave16k, dtype=np.float32).reshape(-1)
        frames = len(wave) // FEATURE_HOP
        if frames == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        # Reflect padding needs more samples than the pad; very short clips get zeros appended.
        padded = np.pad(wave, (0, max(0, self.n_fft - len(wave))))
        mel = mel_spectrogram(
            torch.from_numpy(padded)[None].double(),
            self.n_fft,
            self.feature_dim,
            FEATURE_SR,
            FEATURE_HOP,
            self.n_fft,
            0.0,
            None,
        )[0, :, :frames].numpy()
        mean = mel.mean(axis=1, keepdims=True)
        std = np.maximum(mel.std(axis=1, keepdims=True), 1e-2)
        return ((mel - mean) / std).T.astype(np.float32)


class HubertFeatures:
    """HuBERT / ContentVec content features from a local Hugging Face model directory.

    The directory must hold ``config.json`` and the weights (``model.safetensors`` or
    ``pytorch_model.bin``), e.g. as written by ``HubertModel.save_pretrained``. fairseq
    ``.pt`` checkpoints (RVC's ``hubert_base.pt``) must be converted first.
    """

    name = "hubert"

    def __init__(self, path: str | os.PathLike, feature_dim: int = 768, device: str | torch.device = "cpu"):
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"HuBERT model not found at {path}; pass the local directory of a Hugging Face "
                "HubertModel (config.json + weights). arvc never downloads it."
            )
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json). fairseq .pt checkpoints "
                "must be converted to Hugging Face format first."
            )
        HubertModel = _import_hubert()
        self.device = torch.device(device)
        self.model = HubertModel.from_pretrained(str(path), local_files_only=True).eval().to(self.device)
        hidden = int(self.model.config.hidden_size)
        if hidden != feature_dim:
            raise ValueError(
                f"the HuBERT model at {path} outputs {hidden}-dim features but the config expects "
                f"feature_dim={feature_dim}"
            )
        self.feature_dim = hidden
        self.normalize = _wants_normalized_input(path)
        log.info("loaded HuBERT features from %s (%d dims, normalize=%s)", path, hidden, self.normalize)

    def __call__(self, wave16k: np.ndarray) -> np.ndarray:
        wave = torch.from_numpy(np.asarray(wave16k, dtype=np.float32).reshape(1, -1))
        if wave.size(1) < 400:  # shorter than the conv front end's receptive field
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        if self.normalize:
            wave = torch.nn.functional.layer_norm(wave, wave.shape[1:])
        with torch.inference_mode():
            hidden = self.model(wave.to(self.device)).last_hidden_state
        feats = hidden[0].float().cpu().numpy()
        if not np.isfinite(feats).all():
            raise FloatingPointError("HuBERT produced NaN/inf features")
        return feats


def _import_hubert():
    try:
        from transformers import HubertModel
    except ImportError as exc:
        raise ImportError(
            "content features 'hubert' need the optional dependency transformers: pip install 'arvc[hubert]'"
        ) from exc
    except OSError as exc:  # transformers imports torchaudio if present; a mismatched wheel fails to load
        raise ImportError(
            f"transformers failed to import ({exc}); a torchaudio built for another torch version is "
            "installed - uninstall it (pip uninstall torchaudio)"
        ) from exc
    return HubertModel


def _wants_normalized_input(path: Path) -> bool:
    """Follow the model's feature-extractor setting; fairseq's hubert_base and ContentVec use raw waves."""
    cfg = path / "preprocessor_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("do_normalize", False))
        except (OSError, ValueError):
            log.warning("could not read %s; feeding raw audio", cfg)
    return False


def get_extractor(
    name: str,
    feature_dim: int,
    hubert_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """Build the named content-feature extractor (see the module docstring for the choices)."""
    if name == "mel":
        return MelFeatures(feature_dim)
    if name == "hubert":
        if hubert_path is None:
            raise ValueError(
                "content features 'hubert' need hubert_path: a local Hugging Face HuBERT/ContentVec directory"
            )
        return HubertFeatures(hubert_path, feature_dim, device=device)
    raise ValueError(f"unknown content features {name!r}; valid: {', '.join(FEATURE_EXTRACTORS)}")
