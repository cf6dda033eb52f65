"""Convert a recording into the trained voice: content features + pitch in, the model's voice out.

The pipeline is RVC's: 16 kHz input, 48 Hz high-pass, pitch on the whole (reflect-padded) input,
content features at 50 frames/s repeated to the model's 100 frames/s, optional retrieval from the
voice's index, then ``Synthesizer.infer`` with speaker 0. Unlike RVC, the output is high-passed at
48 Hz as well, which removes the DC offset generators emit (training hardly constrains it).

Long inputs are converted in chunks of about ``chunk_seconds`` so memory stays bounded. Seams are
made inaudible in three ways: each chunk is cut at the quietest point near its nominal end (as
RVC does) and converted with one second of real audio as context on both sides; the start of each
chunk's window is nudged (by up to a quarter second) so the decoder's sine excitation is in phase
with the previous chunk's, so overlapping outputs add up instead of cancelling; and neighbouring
chunks are crossfaded over 50 ms around the seam. Conversion is seeded, so the same call gives
the same audio.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from arvc.audio.f0 import F0_METHODS, RMVPE_NEEDED, coarse_f0, extract_f0, rmvpe_model
from arvc.audio.features import FEATURE_SR, get_extractor
from arvc.audio.io import AudioLoadError, highpass, load_audio, output_format, write_audio
from arvc.config import RunConfig
from arvc.data.preprocess import unused_analysis_flags
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import resolve_device
from arvc.infer.index import FeatureIndex, blend_features, load_index
from arvc.model import Synthesizer
from arvc.modelfile.read import PretrainedError, load_state_strict, read_model_file

__all__ = ["CHUNK_SECONDS", "ConvertError", "check_output", "convert", "load_voice_model"]

logger = logging.getLogger(__name__)

FRAME = 160  # 16 kHz samples per model frame: RVC models run at 100 frames/s
FRAMES_PER_SECOND = FEATURE_SR // FRAME
CHUNK_SECONDS = 10.0
CONTEXT_FRAMES = 100  # 1 s each side (RVC's x_pad); even, so windows stay on feature-frame boundaries
SEARCH_FRAMES = 100  # a seam may move up to 1 s to the quietest point
PHASE_FRAMES = 24  # how far back a window start may move to line up the sine phase
CROSSFADE_SECONDS = 0.05
MIN_SECONDS = 0.1
PEAK = 0.99
RVC_FEATURE_DIMS = (256, 768)  # HuBERT sizes of RVC v1 / v2 models

Progress = Callable[[int, int], None]


class ConvertError(ValueError):
    """The conversion cannot run as asked; the message names the value and what to do."""


def load_voice_model(path: str | os.PathLike, device: str = AUTO_DEVICE) -> tuple[Synthesizer, RunConfig]:
    """A ready-to-run generator (eval mode, weight norm folded) on `device` and its config; `convert`
    runs where the model is (auto: the GPU when there is one, see :mod:`arvc.device`).

    Reads arvc exports (``model.safetensors``/``model.json`` or their folder), arvc checkpoints,
    RVC inference ``.pth`` files (config rebuilt from their 18-value list) and VC Client ``.onnx`` files
    (run by onnxruntime on the CPU; not seeded by ``convert``'s seed). The generator's
    ``trained_features`` says what content features it was trained on where the file records it (arvc
    exports: mel or hubert), else None; `convert` uses it as its default and holds conversions to it.
    """
    where = resolve_device(device)  # a bad device fails before the file is read
    if Path(path).suffix.lower() == ".onnx":
        return _load_onnx(path, device)
    mf = read_model_file(path)
    if mf.generator is None:
        raise PretrainedError(f"{mf.path} is a discriminator file; conversion needs a generator/voice model")
    if mf.f0 == 0 or "enc_p.emb_pitch.weight" not in mf.generator:
        raise PretrainedError(
            f"{mf.path} is a model without pitch guidance (f0=0); arvc converts f0 models only"
        )
    if mf.config is None:
        raise PretrainedError(
            f"{mf.path} ({mf.summary()}) does not say which configuration it has; export it as an inference "
            "model (arvc export runs/NAME, or RVC's ckpt processing) and pass that file"
        )
    cfg = mf.config
    if cfg.data.sampling_rate != cfg.data.hop_length * FRAMES_PER_SECOND:
        raise PretrainedError(
            f"{mf.path}: hop {cfg.data.hop_length} at {cfg.data.sampling_rate} Hz is not 100 frames/s, "
            "which conversion needs (content features and pitch run at 50 and 100 frames/s)"
        )
    net = Synthesizer(cfg)
    # A checkpoint of a run that averages converts with the weights the run evaluates and exports
    # (schedule-free x, the EMA: arvc.train.weights), as its export would.
    weights = mf.averaged_generator if mf.averaged_generator is not None else mf.generator
    # enc_q (training only) is absent from inference files: not worth more than a debug line here.
    load_state_strict(net, weights, mf, cfg, optional=("enc_q.",), absent_level=logging.DEBUG)
    net.remove_weight_norm()
    net.trained_features = mf.features
    logger.info("converting on %s", where.describe())
    return net.eval().to(where.device), cfg


def _load_onnx(path: str | os.PathLike, device: str):
    """A VC Client ONNX file, run by onnxruntime on the CPU (see :mod:`arvc.modelfile.onnx`)."""
    from arvc.modelfile.onnx import load_onnx_voice

    if device not in (AUTO_DEVICE, "cpu"):
        raise ConvertError(
            f"--device {device}: arvc runs ONNX models with onnxruntime's CPU provider; drop --device or "
            "pass cpu (or convert from the model's .safetensors/.pth on the GPU)"
        )
    net, cfg = load_onnx_voice(path)
    logger.info("converting with onnxruntime (CPU): %s", path)
    return net.eval(), cfg


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written as asked: a format the extension does not
    name, a folder, an existing file without `overwrite`, a place whose nearest existing folder is a file
    or not writable (a read-only mount refuses root too). Missing folders are made when it is written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConvertError(f"output {path} is a folder; name a file in it, e.g. {path / 'converted.wav'}")
    try:
        output_format(path)
    except ValueError as error:
        raise ConvertError(str(error)) from error
    if path.exists() and not overwrite:
        raise ConvertError(
            f"output {path} exists; pass --overwrite to replace it, or choose another name (nothing was "
            "converted)"
        )
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConvertError(f"{existing} is a file, not a folder: output {path} cannot be written there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConvertError(
            f"{existing} is not writable (read-only, or no permission): choose another place for {path}"
        )
    return path


def _check_options(
    cfg: RunConfig, pitch: float, f0_method: str, index_rate: float, features: str, trained: str | None
) -> None:
    if not math.isfinite(pitch) or abs(pitch) > 48:
        raise ConvertError(f"pitch {pitch} semitones is out of range; use -48..48 (12 = one octave up)")
    if f0_method not in F0_METHODS:
        raise ConvertError(f"unknown f0 method {f0_method!r}; valid methods: {', '.join(F0_METHODS)}")
    if not 0.0 <= index_rate <= 1.0:
        raise ConvertError(f"index rate {index_rate} must be between 0 (no retrieval) and 1 (all retrieval)")
    dim = cfg.data.feature_dim
    if trained is not None:  # the model file says what it was trained on
        if features != trained:
            raise ConvertError(
                f"the model was trained on {dim}-d {trained} features, not {features}: "
                f"pass --features {trained}"
                + (" --hubert PATH with the HuBERT model it was trained with" if trained == "hubert" else "")
            )
    elif features == "mel" and dim in RVC_FEATURE_DIMS:
        raise ConvertError(
            f"the model uses {dim}-d HuBERT/ContentVec features (RVC layout), not mel: pass "
            "--features hubert --hubert PATH with the HuBERT model it was trained with"
        )
    if features == "hubert" and dim < min(RVC_FEATURE_DIMS):
        raise ConvertError(f"the model uses {dim}-d mel features (arvc's built-in ones): pass --features mel")


def _plan(wave: np.ndarray, n_frames: int, chunk_frames: int) -> list[int]:
    """Chunk boundaries (model frames), each moved to the quietest 50 ms near its nominal place."""
    n_chunks = max(1, math.ceil(n_frames / chunk_frames))
    if n_chunks == 1:
        return [0, n_frames]
    padded = np.pad(wave.astype(np.float64), (0, n_frames * FRAME - len(wave)))
    energy = np.square(padded).reshape(n_frames, FRAME).mean(axis=1)
    energy = np.convolve(energy, np.ones(5) / 5, mode="same")
    step = n_frames / n_chunks
    radius = min(SEARCH_FRAMES, int(step) // 4)
    bounds = [0]
    for i in range(1, n_chunks):
        target = int(round(i * step))
        lo, hi = target - radius, target + radius + 1
        bounds.append(lo + int(np.argmin(energy[lo:hi])))
    return [*bounds, n_frames]


def _aligned_start(nominal: int, previous: int, cycles: np.ndarray) -> int:
    """Even window start in ``[nominal - PHASE_FRAMES, nominal]`` whose sine phase matches ``previous``'s.

    ``cycles[k]`` is the sine phase (in cycles) accumulated over frames ``[0, k)``; the decoder's
    sine starts at phase 0 in every window, so windows starting where the accumulated phase differs
    by a whole number of cycles produce the same excitation where they overlap.
    """
    candidates = np.arange(max(previous + 2, nominal - PHASE_FRAMES), nominal + 1)
    candidates = candidates[candidates % 2 == 0]
    if len(candidates) == 0:
        return nominal - nominal % 2
    drift = cycles[candidates] - cycles[previous]
    off = np.abs(drift - np.round(drift))
    return int(candidates[np.flatnonzero(off <= off.min() + 1e-3)[-1]])  # ties: least extra context


def _fit(features: np.ndarray, n: int) -> np.ndarray:
    """Repeat 50 frames/s features to 100 frames/s and fit to exactly ``n`` frames (edge repeated)."""
    doubled = np.repeat(features, 2, axis=0)[:n]
    if len(doubled) == 0:
        raise ConvertError(
            "the content-feature extractor returned no frames for a chunk; is the input silent?"
        )
    return np.concatenate([doubled, np.repeat(doubled[-1:], n - len(doubled), axis=0)])


def convert(
    model: Synthesizer,
    cfg: RunConfig,
    input_wav: str | os.PathLike,
    output_wav: str | os.PathLike,
    pitch: float = 0,
    f0_method: str = "pm",
    index: str | os.PathLike | FeatureIndex | None = None,
    index_rate: float = 0.0,
    features: str | None = None,
    hubert_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    *,
    rmvpe_path: str | os.PathLike | None = None,
    embedder_layer: int | None = None,
    chunk_seconds: float = CHUNK_SECONDS,
    seed: int = 0,
    overwrite: bool = True,
) -> Path:
    """Convert ``input_wav`` into the model's voice and write ``output_wav`` at the model's sample rate.

    ``features`` (mel, hubert) defaults to what the model was trained on where its file says, else mel.
    ``pitch`` transposes by semitones; ``index``/``index_rate`` enable retrieval (0 = off);
    ``progress(done, total)`` is called with chunk counts. The output has exactly
    ``round(seconds * sample_rate)`` samples and is scaled down if it would clip (as RVC does).
    The output's format follows its extension (`arvc.audio.io.OUTPUT_FORMATS`: 16-bit WAV or FLAC,
    Ogg Vorbis, MP3 where libsndfile writes it); with ``overwrite=False`` an existing output is refused.
    Every check is done before any work. Returns the output path.
    """
    trained = getattr(model, "trained_features", None)
    features = features or trained or "mel"
    _check_options(cfg, pitch, f0_method, index_rate, features, trained)
    unused = unused_analysis_flags(
        f0_method, features, rmvpe=rmvpe_path, hubert=hubert_path, embedder_layer=embedder_layer
    )
    if unused:
        raise ConvertError("; ".join(unused))
    if f0_method == "rmvpe":
        if rmvpe_path is None:
            raise ConvertError(RMVPE_NEEDED)
        rmvpe_model(rmvpe_path, next(model.parameters()).device)  # a wrong file fails before any work
    if chunk_seconds < 0.5:
        raise ConvertError(f"chunk_seconds {chunk_seconds} is too short; use at least 0.5 (default 10)")
    input_wav, output_wav = Path(input_wav).expanduser(), check_output(output_wav, overwrite)
    if not input_wav.is_file():
        raise ConvertError(f"input audio {input_wav} does not exist")
    if isinstance(index, (str, os.PathLike)):
        index = load_index(index, cfg.data.feature_dim, cfg.data.sampling_rate)
    if index_rate > 0 and index is None:
        raise ConvertError(f"index rate {index_rate} needs an index (--index FILE); or set the rate to 0")
    try:
        wave = load_audio(input_wav, FEATURE_SR)
    except AudioLoadError as error:
        raise ConvertError(f"cannot read the input audio: {error}") from error
    if len(wave) < MIN_SECONDS * FEATURE_SR:
        raise ConvertError(
            f"{input_wav} is {len(wave) / FEATURE_SR:.3f} s long; need at least {MIN_SECONDS} s"
        )
    device = next(model.parameters()).device
    extractor = get_extractor(
        features, cfg.data.feature_dim, hubert_path, device=device, layer=embedder_layer
    )
    wave = highpass(wave, FEATURE_SR)

    sr, hop = cfg.data.sampling_rate, cfg.data.hop_length
    n_frames = math.ceil(len(wave) / FRAME)
    ctx = CONTEXT_FRAMES
    padded = np.pad(wave, (ctx * FRAME, ctx * FRAME + n_frames * FRAME - len(wave)), mode="reflect")
    f0 = extract_f0(padded, f0_method, device=device, rmvpe_path=rmvpe_path)[: n_frames + 2 * ctx]
    f0 = f0 * 2.0 ** (pitch / 12.0)
    f0 = f0.astype(np.float32)
    coarse = coarse_f0(f0)
    # Sine phase (cycles) the decoder accumulates per frame, as SineGen computes it.
    cycles = np.concatenate([[0.0], np.cumsum(hop * np.mod(f0.astype(np.float64) / sr, 1.0))])

    bounds = _plan(wave, n_frames, max(1, int(chunk_seconds * FRAMES_PER_SECOND)))
    total = len(bounds) - 1
    fade = min(int(CROSSFADE_SECONDS * sr), 2 * ctx * hop) // 2 * 2
    out = np.zeros(n_frames * hop, dtype=np.float64)
    if progress:
        progress(0, total)
    start = 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(total):
            lo, hi = bounds[i], bounds[i + 1]  # this chunk's frames; padded frame p = frame + ctx
            if i > 0:
                start = _aligned_start(lo, start, cycles)
            end = hi + 2 * ctx
            feats = extractor(padded[start * FRAME : end * FRAME])
            if index is not None and index_rate > 0:
                feats = blend_features(feats, index, index_rate)
            n = end - start
            audio = (
                model.infer(
                    torch.from_numpy(_fit(feats, n))[None].to(device),
                    torch.tensor([n], device=device),
                    torch.from_numpy(coarse[start:end])[None].to(device),
                    torch.from_numpy(f0[start:end])[None].to(device),
                    torch.zeros(1, dtype=torch.long, device=device),
                )[0, 0]
                .double()
                .cpu()
                .numpy()
            )
            _place(
                out, audio, (ctx - start) * hop, lo * hop, hi * hop, fade, first=i == 0, last=i == total - 1
            )
            if progress:
                progress(i + 1, total)

    # The generator's output carries DC and sub-48 Hz drift that training hardly constrains (the targets
    # are high-passed, the mel loss gives 0 Hz no weight, the discriminators barely look): up to a third of
    # full scale early in training. The training data's own 48 Hz high-pass removes it before the level
    # is checked.
    out = highpass(out[: round(len(wave) / FEATURE_SR * sr)], sr, settle=True).astype(np.float64)
    peak = float(np.abs(out).max()) if len(out) else 0.0
    if peak > PEAK:
        logger.info("output peak %.2f: scaled down to %.2f to avoid clipping", peak, PEAK)
        out *= PEAK / peak
    write_audio(output_wav, out.astype(np.float32), sr)
    logger.info("converted %s -> %s (%d chunks, %.1f s)", input_wav, output_wav, total, len(out) / sr)
    return output_wav


def _place(
    out: np.ndarray, audio: np.ndarray, shift: int, a: int, b: int, fade: int, first: bool, last: bool
):
    """Add ``audio`` (window-local samples; output sample o is audio[o + shift]) over ``[a, b)``.

    Inner seams get complementary raised-cosine ramps ``fade`` samples wide, centred on the seam,
    so the weights of the two chunks sum to one everywhere.
    """
    lo = a if first else a - fade // 2
    hi = min(len(out), b if last else b + fade // 2)
    weight = np.ones(hi - lo)
    ramp = np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / fade) ** 2 if fade else np.zeros(0)
    if not first and fade:
        weight[:fade] = ramp
    if not last and fade:
        weight[len(weight) - fade :] *= ramp[::-1]
    out[lo:hi] += weight * audio[lo + shift : hi + shift]
