"""Content features: what was said, 50 frames per second of 16 kHz audio (RVC's hop of 320).

Two extractors plug in behind one call signature, ``extractor(wave16k) -> [T, feature_dim]``:

* ``mel`` - built in, no weights, deterministic: a per-utterance normalised log-mel
  spectrogram. It carries the speaker's timbre as well as the content, so it is only good for
  smoke tests, demos and the ``tiny`` config; real voice conversion needs ``hubert``.
* ``hubert`` - a HuBERT/ContentVec model in Hugging Face format, loaded from a local directory
  the user provides (``transformers`` is the optional ``arvc[hubert]`` extra). Nothing is
  downloaded. Like RVC it takes the last transformer layer for v2 models (768 dims for a base model) and
  layer 9 through ContentVec's ``final_proj`` for v1 models (256 dims).
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


V1_LAYER = 9  # RVC v1: the 9th transformer layer's output through final_proj (256-d for a base model)


class HubertFeatures:
    """HuBERT / ContentVec content features from a local Hugging Face model directory.

    The directory holds ``config.json`` and the weights (``model.safetensors`` or ``pytorch_model.bin``), in
    either layout users have: a plain ``HubertModel``, or one with ContentVec's ``final_proj`` linear layer
    beside it (RVC's converted ``assets/hubert_base``, Applio's contentvec folder). The layer follows the
    model the features are for, as RVC does: ``feature_dim`` equal to the model's width (768 for a base
    model, RVC v2) takes the last transformer layer; equal to ``final_proj``'s output (256, RVC v1) takes
    layer 9 through ``final_proj``. ``layer`` overrides which transformer layer (1 = the first). A fairseq
    checkpoint file (RVC WebUI's classic ``hubert_base.pt``) is converted to such a folder once, in arvc's
    cache, without fairseq and without running code from its pickle (arvc.audio.fairseq_hubert).
    """

    name = "hubert"

    def __init__(
        self,
        path: str | os.PathLike,
        feature_dim: int = 768,
        device: str | torch.device = "cpu",
        layer: int | None = None,
    ):
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"HuBERT model not found at {path}; pass the local directory of a Hugging Face "
                "HubertModel (config.json + weights). arvc never downloads it."
            )
        HubertModel = _import_hubert()
        if path.is_file():  # RVC WebUI's classic hubert_base.pt: a fairseq checkpoint, converted once
            from arvc._files import cache_dir
            from arvc.audio.fairseq_hubert import convert_fairseq_hubert

            path = convert_fairseq_hubert(path, cache_dir() / "hubert")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json) nor a fairseq HuBERT "
                "checkpoint file (RVC WebUI's hubert_base.pt)"
            )
        self.device = torch.device(device)
        model = _load_quietly(HubertModel, path)
        hidden, layers = int(model.config.hidden_size), int(model.config.num_hidden_layers)
        projection = _final_proj(path)
        if feature_dim == hidden:
            self.proj = None
            default = layers
        elif projection is not None and projection[0].shape[0] == feature_dim:
            self.proj = tuple(t.to(self.device) for t in projection)
            default = V1_LAYER
        else:
            sizes = f"{hidden}" + (
                f" or {projection[0].shape[0]} (final_proj)" if projection is not None else ""
            )
            raise ValueError(
                f"the HuBERT model at {path} outputs {sizes}-dim features but the config expects "
                f"feature_dim={feature_dim}"
                + (
                    "; v1 (256-d) models need a folder with ContentVec's final_proj layer"
                    if feature_dim == 256 and projection is None
                    else ""
                )
            )
        self.layer = default if layer is None else int(layer)
        if not 1 <= self.layer <= layers:
            raise ValueError(
                f"--embedder-layer {self.layer}: the HuBERT model at {path} has layers 1..{layers}"
            )
        self.model = model.eval().to(self.device)
        self.feature_dim = int(feature_dim)
        self.normalize = _wants_normalized_input(path)
        log.info(
            "loaded HuBERT features from %s (layer %d of %d%s, %d dims, normalize=%s)",
            path, self.layer, layers, " through final_proj" if self.proj else "", feature_dim, self.normalize,
        )  # fmt: skip

    def __call__(self, wave16k: np.ndarray) -> np.ndarray:
        wave = torch.from_numpy(np.asarray(wave16k, dtype=np.float32).reshape(1, -1))
        if wave.size(1) < 400:  # shorter than the conv front end's receptive field
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        if self.normalize:
            wave = torch.nn.functional.layer_norm(wave, wave.shape[1:])
        with torch.inference_mode():
            hidden = self.model(wave.to(self.device), output_hidden_states=True).hidden_states[self.layer]
            if self.proj is not None:
                hidden = torch.nn.functional.linear(hidden, *self.proj)
        feats = hidden[0].float().cpu().numpy()
        if not np.isfinite(feats).all():
            raise FloatingPointError("HuBERT produced NaN/inf features")
        return feats


def _load_quietly(HubertModel, path: Path):
    """`from_pretrained` without transformers' load report and progress bar, but strict: weights the
    network needs and the folder lacks are an error (never a randomly initialised layer); keys beyond
    the network other than ContentVec's final_proj get one warning."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = HubertModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"the HuBERT folder {path} lacks {len(missing)} weights of its network (first: "
            f"{', '.join(missing[:3])}); it is damaged or not a HuBERT/ContentVec model"
        )
    extra = sorted(k for k in info.get("unexpected_keys") or [] if not k.startswith("final_proj."))
    if extra:
        log.warning(
            "%s holds %d weights HuBERT does not use (first: %s)", path, len(extra), ", ".join(extra[:3])
        )
    return model


def _final_proj(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """ContentVec's ``final_proj`` (weight, bias) from the folder's weights, or None where it has none."""
    names = ("final_proj.weight", "final_proj.bias")
    safetensors = path / "model.safetensors"
    if safetensors.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors), framework="pt") as handle:
            if all(n in handle.keys() for n in names):
                return tuple(handle.get_tensor(n).float() for n in names)
        return None
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        state = torch.load(binary, map_location="cpu", weights_only=True, mmap=True)
        if all(n in state for n in names):
            return tuple(state[n].float() for n in names)
    return None


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
    layer: int | None = None,
) -> FeatureExtractor:
    """Build the named content-feature extractor (see the module docstring for the choices)."""
    if name == "mel":
        return MelFeatures(feature_dim)
    if name == "hubert":
        if hubert_path is None:
            raise ValueError(
                "content features 'hubert' need hubert_path: a local Hugging Face HuBERT/ContentVec directory"
            )
        return HubertFeatures(hubert_path, feature_dim, device=device, layer=layer)
    raise ValueError(f"unknown content features {name!r}; valid: {', '.join(FEATURE_EXTRACTORS)}")
