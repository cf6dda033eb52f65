"""Merge voice models as RVC does (`arvc merge`, the web UI's Models tab).

RVC's merge (``train/process_ckpt.py::merge``) averages the generators of two models of one structure:
each tensor (``enc_q`` dropped) becomes ``alpha * a.float() + (1 - alpha) * b.float()``, stored as fp16;
a speaker embedding ``emb_g.weight`` with another number of speakers is cut to the smaller count first; the
config is the first model's. arvc does the same, in the same operations and order so that two models give
RVC's bits exactly, and extends it to a weighted list ``w0 * m0 + w1 * m1 + ...`` (weights in [0, 1] that
sum to 1). One difference: the merged config's speaker count is the merged ``emb_g``'s (RVC keeps the first
model's count, which then no longer fits its weights).

Models without pitch guidance (f0=0, RVC's "nono" models) merge with each other as RVC merges them; the result
is written with ``"f0": 0`` (:func:`arvc.modelfile.export.export_generator`) and exports to the VC Client's
no-f0 ONNX interface. Models that RVC would merge into nonsense are refused before anything is written:
another sample rate, version, pitch guidance (f0 with f0=0), feature width, content features (mel/HuBERT),
or other tensor names/shapes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from arvc.config import RunConfig
from arvc.model import Synthesizer
from arvc.modelfile.export import export_generator, name_some, non_finite_tensors
from arvc.modelfile.onnx import ONNX_FILE, ONNX_HALF_FILE, export_onnx, require_onnx
from arvc.modelfile.read import _PHONE_KEY, _PITCH_KEY, ModelFile, load_state_strict, read_model_file

__all__ = [
    "MergeError",
    "MergeResult",
    "check_mergeable",
    "check_output_folder",
    "merge_models",
    "merge_state_dicts",
    "parse_weights",
]

logger = logging.getLogger(__name__)

SPEAKER_KEY = "emb_g.weight"  # the only tensor whose shape may differ (RVC cuts it to the fewer speakers)
_WEIGHT_TOLERANCE = 1e-6  # how far the weights' sum may be from 1 (decimal input like 0.1,0.2,0.7)
_FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".json", ".onnx")


class MergeError(ValueError):
    """The models cannot be merged as asked; nothing was written, the message says what differs."""


@dataclass
class MergeResult:
    written: dict[str, Path]  # kind (safetensors, config, rvc, onnx) -> file
    sources: list[ModelFile]
    weights: list[float]


def parse_weights(n_models: int, ratio: float | None = None, weights: str | None = None) -> list[float]:
    """The weight of each model: `ratio` (two models: ratio and 1 - ratio, RVC's alpha), a comma-separated
    list (one per model, each in [0, 1], summing to 1), or equal weights when neither is given."""
    if n_models < 2:
        raise MergeError(f"merging needs at least two models, got {n_models}; pass two or more model files")
    if ratio is not None and weights is not None:
        raise MergeError("give --ratio (two models) or --weights (one per model), not both")
    if ratio is not None:
        if n_models != 2:
            raise MergeError(
                f"--ratio is the first model's share of two models; for {n_models} models give --weights "
                f"with {n_models} values, e.g. --weights {','.join(['%.2f' % (1 / n_models)] * n_models)}"
            )
        if not 0.0 <= ratio <= 1.0 or math.isnan(ratio):
            raise MergeError(f"--ratio must be within 0..1 (the first model's share), got {ratio}")
        return [ratio, 1 - ratio]  # exactly RVC's alpha1 and (1 - alpha1)
    if weights is None:
        return [1 / n_models] * n_models
    try:
        values = [float(text) for text in weights.split(",")]
    except ValueError:
        raise MergeError(
            f"--weights {weights!r} is not a comma-separated list of numbers; e.g. --weights 0.5,0.3,0.2"
        ) from None
    if len(values) != n_models:
        raise MergeError(f"--weights gives {len(values)} values for {n_models} models; give one per model")
    bad = [v for v in values if not 0.0 <= v <= 1.0]  # NaN fails too
    if bad:
        raise MergeError(f"--weights must each be within 0..1, got {bad[0]} in {weights!r}")
    if abs(sum(values) - 1.0) > _WEIGHT_TOLERANCE:
        raise MergeError(
            f"--weights must sum to 1 (each is a model's share), got {sum(values):g} from {weights!r}"
        )
    return values


def merge_state_dicts(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """``w0 * s0.float() + w1 * s1.float() + ...`` per tensor, as fp16; ``emb_g`` cut to the fewest
    speakers. With two models this is RVC's expression term for term, so the bits are RVC's."""
    merged = {}
    for key in states[0]:
        tensors = [state[key] for state in states]
        if key == SPEAKER_KEY:
            rows = min(t.shape[0] for t in tensors)
            tensors = [t[:rows] for t in tensors]
        total = weights[0] * tensors[0].float()
        for weight, tensor in zip(weights[1:], tensors[1:], strict=True):
            total = total + weight * tensor.float()
        merged[key] = total.half()
    return merged


def _inference_weights(mf: ModelFile) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mf.generator.items() if "enc_q" not in k}  # RVC's extract(): no enc_q


def _describe(mf: ModelFile) -> str:
    return mf.path.name if mf.path.name not in ("model.safetensors", "model.json") else str(mf.path.parent)


def check_mergeable(models: list[ModelFile]) -> None:
    """Refuse, naming the difference, models whose weights cannot be averaged into a working model."""
    for mf in models:
        mf.check_voice_model(MergeError, "merging needs generators (voice models)")
    first = models[0]
    properties = (
        ("sample rate", lambda m: m.sample_rate, " Hz"),
        ("version", lambda m: m.version, ""),
        ("pitch guidance", lambda m: f"f0={m.f0}", ""),
        (
            "feature width",
            lambda m: m.generator[_PHONE_KEY].shape[-1] if _PHONE_KEY in m.generator else None,
            "-d",
        ),
        ("content features", lambda m: m.content_features, ""),
    )
    for name, value, unit in properties:
        for other in models[1:]:
            a, b = value(first), value(other)
            if a is not None and b is not None and a != b:
                raise MergeError(
                    f"cannot merge models of different {name}: {_describe(first)} is {a}{unit}, "
                    f"{_describe(other)} is {b}{unit}. Merge models of one kind (same sample rate, version, "
                    "f0, features); nothing was written"
                )
    keys = set(_inference_weights(first))
    for other in models[1:]:
        theirs = _inference_weights(other)
        extra, missing = sorted(set(theirs) - keys), sorted(keys - set(theirs))
        if extra or missing:
            listing = ", ".join((extra + missing)[:4])
            raise MergeError(
                f"cannot merge models of different structure: {_describe(first)} and {_describe(other)} "
                f"differ in {len(extra) + len(missing)} tensor names (e.g. {listing}); nothing was written"
            )
        shapes = [
            k for k in keys if k != SPEAKER_KEY and tuple(theirs[k].shape) != tuple(first.generator[k].shape)
        ]
        if shapes:
            k = sorted(shapes)[0]
            raise MergeError(
                f"cannot merge models of different sizes: {k} is {list(first.generator[k].shape)} in "
                f"{_describe(first)}, {list(theirs[k].shape)} in {_describe(other)} ({len(shapes)} tensors "
                "differ); nothing was written"
            )


def check_output_folder(out_dir: Path, overwrite: bool) -> None:
    """OUT is a folder that gets model.safetensors, model.json (and model_rvc.pth); refuse what would lose
    data or cannot be that folder."""
    if out_dir.suffix.lower() in _FILE_SUFFIXES:
        raise MergeError(
            f"-o {out_dir} names a file; pass a folder (it gets model.safetensors, model.json and, for "
            "RVC-sized models, model_rvc.pth)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise MergeError(f"-o {out_dir} is an existing file, not a folder; choose another path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise MergeError(f"{out_dir} exists and is not empty; pass --overwrite to replace its model files")


def merge_models(
    paths: list[str | Path],
    weights: list[float],
    out_dir: str | Path,
    overwrite: bool = False,
    onnx: bool = False,
) -> MergeResult:
    """Merge the models at `paths` with `weights` (see :func:`parse_weights`) into the export folder
    `out_dir`; with `onnx` also ``model.onnx`` for the VC Client (:mod:`arvc.modelfile.onnx`, ImportError
    naming the extra when it is missing). Every check runs before anything is written; files are written
    atomically, the ONNX file (built and run in onnxruntime before it is written) first."""
    out_dir = Path(out_dir)
    if onnx:
        require_onnx()
    if len(weights) != len(paths):
        raise MergeError(f"{len(weights)} weights for {len(paths)} models; give one weight per model")
    check_output_folder(out_dir, overwrite)
    models = [read_model_file(path) for path in paths]  # PretrainedError names a bad file
    check_mergeable(models)
    merged = merge_state_dicts([_inference_weights(m) for m in models], weights)
    overflow = non_finite_tensors(merged)
    if overflow:  # export's own check would blame training
        raise MergeError(
            f"the merged weights are not finite in fp16 (RVC's format) in {len(overflow)} tensors: "
            f"{name_some(overflow)}; a model holds NaN/inf or values beyond fp16's range (65504). Check each "
            "model with arvc inspect and infer; nothing was written"
        )

    cfg = RunConfig.from_dict(models[0].config.to_dict())  # RVC: the first model's config
    cfg.model.spk_embed_dim = merged[SPEAKER_KEY].shape[0]  # unlike RVC: the count the weights have
    net = Synthesizer(cfg, f0=_PITCH_KEY in merged)  # f0=0 models (RVC's "nono"): their own layout
    quiet = logging.DEBUG  # the merged weights have no enc_q, as every inference file
    load_state_strict(net, merged, "the merged weights", cfg, optional=("enc_q.",), absent_level=quiet)
    sources = [
        {"path": str(m.path.resolve()), "kind": m.kind, "weight": w}
        for m, w in zip(models, weights, strict=True)
    ]
    info = "arvc merge: " + " + ".join(
        f"{w:g} x {_describe(m)}" for m, w in zip(models, weights, strict=True)
    )
    features = models[0].content_features
    onnx_file = export_onnx(net, cfg, out_dir / ONNX_FILE, features=features) if onnx else None
    written = export_generator(
        net,
        cfg,
        out_dir,
        info=info,
        features=features,
        extra={"merged_from": sources, "merge_rule": "RVC process_ckpt.merge: sum(w * float(W)) -> fp16"},
    )
    if onnx_file is not None:
        written["onnx"] = onnx_file
    for kind, name in (("rvc", "model_rvc.pth"), ("onnx", ONNX_FILE), ("onnx-fp16", ONNX_HALF_FILE)):
        stale = out_dir / name
        if kind not in written and stale.exists():  # an --overwrite'n folder: its old file is another model
            stale.unlink()
    logger.info("merged %d models into %s", len(models), out_dir)
    return MergeResult(written, models, weights)
