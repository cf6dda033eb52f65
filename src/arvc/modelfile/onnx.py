"""ONNX for w-okada's realtime voice changer (VC Client): the generator with the client's interface.

The client (w-okada/voice-changer, ``server/voice_changer/RVC``) runs RVC ONNX files through onnxruntime
and reads them like this, so arvc writes exactly that:

- inputs ``feats`` float ``[1, T, C]`` (HuBERT/ContentVec features, C = 256 for v1, 768 for v2),
  ``p_len`` int64 ``[1]``, ``pitch`` int64 ``[1, T]`` (coarse bins), ``pitchf`` float ``[1, T]`` (Hz),
  ``sid`` int64 ``[1]``; axis 1 of ``feats``/``pitch``/``pitchf`` is dynamic (one name, ``T``);
- output ``audio`` float ``[T * hop]``: the generator's waveform clipped to [-1, 1] inside the graph
  (the client's metadata version "2.1" means exactly that: it takes the output as it is);
- the prior noise is drawn inside the graph, ``randn_like(m_p) * 0.66666``, as
  :meth:`arvc.model.Synthesizer.infer` does (and the decoder's NSF excitation noise too);
- opset 17, no constant folding (as the client's own exporter);
- a model property ``metadata``: JSON ``{application: "VC_CLIENT", version: "2.1", modelType,
  samplingRate, f0, embChannels, embedder, embOutputLayer, useFinalProj}``. Without it the client treats
  the file as deprecated and assumes 48 kHz and 256-d features.

A model without pitch guidance (RVC's f0=0 "nono" files, :class:`arvc.model.Synthesizer` with
``f0=False``) gets the client's no-f0 interface: inputs ``feats``, ``p_len``, ``sid``, metadata ``f0``
false and the client's nono model types. arvc itself converts pitch-guided models only.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it is still in
torch 2.11-2.13 (deprecated, with a warning), traces this model as the client's own exporter does and
needs nothing beyond ``onnx``. The default torch.export-based exporter needs ``onnxscript`` and would
have to prove the masks' data-dependent lengths symbolic; it is not used.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from arvc._files import write_bytes
from arvc.config import RunConfig, load_config
from arvc.model.generator import DEFAULT_NOISE_SCALE, Synthesizer
from arvc.modelfile.export import ExportError, check_finite, inference_state_dict
from arvc.modelfile.read import _PITCH_KEY, load_state_strict, read_model_file

__all__ = [
    "F0_INPUTS",
    "NO_F0_INPUTS",
    "ONNX_FILE",
    "ONNX_HALF_FILE",
    "ONNX_NEEDED",
    "OPSET",
    "OUTPUT",
    "OnnxVoice",
    "client_metadata",
    "export_onnx",
    "export_model_file_onnx",
    "onnx_path_for",
    "load_onnx_voice",
    "require_onnx",
]

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
# --onnx-half: the weights, feats and audio in float16, pitchf float32 (the client's files for a GPU).
ONNX_HALF_FILE = "model_fp16.onnx"
OPSET = 17
F0_INPUTS = ("feats", "p_len", "pitch", "pitchf", "sid")
NO_F0_INPUTS = ("feats", "p_len", "sid")  # the client's interface for models without pitch guidance
OUTPUT = "audio"
LENGTH_AXIS = "T"
SAMPLES = "samples"  # T * hop
DYNAMIC_AXES = {"feats": {1: LENGTH_AXIS}, "pitch": {1: LENGTH_AXIS}, "pitchf": {1: LENGTH_AXIS}}
DYNAMIC_AXES[OUTPUT] = {0: SAMPLES}
METADATA_KEY = "metadata"
# arvc's own record (config, features), so `arvc infer` runs the file; the client ignores it.
ARVC_KEY = "arvc"
CLIENT_VERSION = "2.1"  # the client's "clip inside the graph" ONNX version
# The client's model types (its EnumInferenceTypes) for RVC's pitch-guided v1 / v2 generators.
MODEL_TYPES = {"v1": "pyTorchRVC", "v2": "pyTorchRVCv2"}
NO_F0_MODEL_TYPES = {"v1": "pyTorchRVCNono", "v2": "pyTorchRVCv2Nono"}  # f0=0 ("nono") models
# What the client assumes for RVC's official v1 / v2 models: the HuBERT layer and final_proj use.
OFFICIAL_EMBEDDER = {256: (9, True), 768: (12, False)}
EXAMPLE_FRAMES = 64  # the traced example's length; the length axis stays dynamic
ONNX_NEEDED = "ONNX export needs onnx and onnxruntime, which are not installed: pip install 'arvc[onnx]'"


def require_onnx():
    """The ``onnx`` module, or an ImportError naming the extra to install."""
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the export checks the file in it)
    except ImportError as error:
        raise ImportError(ONNX_NEEDED) from error
    return onnx


def client_metadata(cfg: RunConfig, embedder_layer: int | None = None, f0: bool = True) -> dict:
    """The VC Client's ``metadata`` JSON for a generator of config `cfg` (`f0`: with pitch guidance).

    `embedder_layer` is the HuBERT layer the model was trained on (None: the default, 12 for 768-d
    features and 9 through final_proj for 256-d, as RVC and the client use)."""
    dim = cfg.data.feature_dim
    layer, final_proj = OFFICIAL_EMBEDDER.get(dim, (12, False))
    return {
        "application": "VC_CLIENT",
        "version": CLIENT_VERSION,
        "modelType": (MODEL_TYPES if f0 else NO_F0_MODEL_TYPES).get(cfg.version, MODEL_TYPES["v2"]),
        "samplingRate": cfg.data.sampling_rate,
        "f0": bool(f0),
        "embChannels": dim,
        "embedder": "hubert_base",
        "embOutputLayer": layer if embedder_layer is None else int(embedder_layer),
        "useFinalProj": final_proj,
    }


class ClientGraph(nn.Module):
    """The generator behind the client's inputs: ``Synthesizer.infer`` for speaker `sid`, clipped to [-1, 1]
    and flattened to ``[T * hop]``."""

    def __init__(self, generator: nn.Module, noise_scale: float = DEFAULT_NOISE_SCALE) -> None:
        super().__init__()
        self.generator = generator
        self.noise_scale = noise_scale

    def forward(self, feats, p_len, pitch, pitchf, sid):  # the argument names are the graph's inputs
        audio = self.generator.infer(feats, p_len, pitch, pitchf, sid, noise_scale=self.noise_scale)
        return torch.clamp(audio[0, 0], -1.0, 1.0)


class NoF0ClientGraph(ClientGraph):
    """The client's interface of a model without pitch guidance: ``feats, p_len, sid``."""

    def forward(self, feats, p_len, sid):  # the argument names are the graph's inputs
        audio = self.generator.infer(feats, p_len, None, None, sid, noise_scale=self.noise_scale)
        return torch.clamp(audio[0, 0], -1.0, 1.0)


def _inference_copy(generator: nn.Module) -> nn.Module:
    """A float32 CPU copy in eval mode with weight norm folded; the caller's generator is left as it was."""
    net = copy.deepcopy(generator).float().cpu().eval()
    net.remove_weight_norm()
    return net


def export_onnx(
    generator: nn.Module,
    cfg: RunConfig,
    path: str | os.PathLike,
    *,
    embedder_layer: int | None = None,
    features: str | None = None,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    half: bool = False,
) -> Path:
    """Write `generator` (an :class:`arvc.model.Synthesizer` of `cfg`) as a VC Client ONNX file at `path`.

    Refused before anything is written: a missing onnx/onnxruntime (ImportError naming the extra),
    NaN/inf weights. A generator without pitch guidance gets the client's no-f0 interface
    (:data:`NO_F0_INPUTS`). The graph is built in memory, loaded into
    onnxruntime and run once, then written atomically (an existing file is kept on any failure).
    `noise_scale` is the prior's temperature (the client's 0.66666; tests export 0 to compare exactly).
    `features` (mel, hubert) is what the model was trained on: a mel model exports, for arvc only, with
    a warning (the client feeds HuBERT features). `half` writes the weights, ``feats`` and ``audio`` in
    float16 (``pitchf`` stays float32), as the client's exporter does for GPUs; the client tells the two
    apart by ``feats``' type."""
    onnx = require_onnx()
    path = Path(path)
    check_finite(inference_state_dict(generator), path.parent)
    f0 = hasattr(getattr(generator, "enc_p", None), "emb_pitch")
    inputs = F0_INPUTS if f0 else NO_F0_INPUTS
    if features == "mel" or cfg.data.feature_dim not in OFFICIAL_EMBEDDER:
        logger.warning(
            "%s takes %d-d %s features; the VC Client feeds 256/768-d HuBERT/ContentVec features, so only "
            "arvc can run it",
            path.name,
            cfg.data.feature_dim,
            features or "content",
        )
    dtype = torch.float16 if half else torch.float32
    net = (ClientGraph if f0 else NoF0ClientGraph)(_inference_copy(generator).to(dtype), noise_scale)
    frames, dim = EXAMPLE_FRAMES, cfg.data.feature_dim
    values = {
        "feats": torch.zeros(1, frames, dim, dtype=dtype),
        "p_len": torch.tensor([frames], dtype=torch.int64),
        "pitch": torch.ones(1, frames, dtype=torch.int64),
        "pitchf": torch.full((1, frames), 100.0),
        "sid": torch.zeros(1, dtype=torch.int64),
    }
    example = tuple(values[name] for name in inputs)
    metadata = client_metadata(cfg, embedder_layer, f0=f0)
    # Built and checked in memory, then written in one atomic step: an export or check that fails leaves
    # nothing behind (and is not mistaken for a failed write).
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice and tracer notes (the masks' Python bools are constant
        # for every length: checked by the dynamic-length tests).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            example,
            buffer,
            dynamo=False,
            input_names=list(inputs),
            output_names=[OUTPUT],
            dynamic_axes={name: axes for name, axes in DYNAMIC_AXES.items() if name in (*inputs, OUTPUT)},
            opset_version=OPSET,
            do_constant_folding=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    own = {"config": cfg.to_dict(), **({"features": features} if features else {})}
    for key, value in ((METADATA_KEY, json.dumps(metadata)), (ARVC_KEY, json.dumps(own))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    _check_runs(data, dict(zip(inputs, example, strict=True)), cfg.data.hop_length)
    write_bytes(path, data)
    logger.info("wrote %s (VC Client ONNX, %s, %s)", path, "fp16" if half else "fp32", json.dumps(metadata))
    return path


def onnx_path_for(model: Path, half: bool = False) -> Path:
    """Where `arvc export MODEL --onnx` writes by default: beside the model, ``model.onnx`` for an arvc
    export (``model_fp16.onnx`` for fp16), else the file's own name with ``.onnx`` (``_fp16.onnx``)."""
    if model.name in ("model.safetensors", "model.json"):
        return model.with_name(ONNX_HALF_FILE if half else ONNX_FILE)
    return model.with_name(model.stem + ("_fp16" if half else "") + ".onnx")


def export_model_file_onnx(
    model: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    half: bool = False,
    overwrite: bool = False,
    embedder_layer: int | None = None,
) -> Path:
    """Export the generator in a model file (an arvc export or its folder, an RVC inference ``.pth``, an
    arvc checkpoint or an RVC ``G_*.pth`` of a preset's shape) as a VC Client ONNX file at `out` (default
    :func:`onnx_path_for`). Everything that would refuse the export is checked before anything is written:
    a missing extra (ImportError), an unreadable or unfitting file (PretrainedError), a model without a
    configuration, an output that exists without `overwrite` or is not an ``.onnx`` file (ExportError). An
    RVC file without pitch guidance (f0=0) gets the client's no-f0 interface. The content features are
    the file's record, else HuBERT for RVC's own files."""
    require_onnx()
    model = Path(model)
    if model.is_dir() and (model / "model.safetensors").is_file():  # an export folder: its model
        model = model / "model.safetensors"
    if model.suffix.lower() == ".onnx":
        raise ExportError(f"{model} is already an ONNX file; pass the model it was exported from")
    target = Path(out) if out is not None else onnx_path_for(model, half)
    if target.is_dir():
        raise ExportError(f"-o {target} is a folder; name the .onnx file to write, e.g. {target / ONNX_FILE}")
    if target.suffix.lower() != ".onnx":
        raise ExportError(f"-o {target} must name an .onnx file (e.g. {target.with_suffix('.onnx')})")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; replace it (--overwrite) or write another .onnx path (-o)")
    mf = read_model_file(model)  # PretrainedError names a bad file
    mf.check_voice_model(ExportError, "ONNX export needs a generator (voice model)")
    net = Synthesizer(mf.config, f0=_PITCH_KEY in mf.generator)  # an RVC f0=0 file: the client's no-f0 graph
    quiet = logging.DEBUG  # inference files have no enc_q, which the ONNX graph does not use
    load_state_strict(net, mf.generator, mf, mf.config, optional=("enc_q.",), absent_level=quiet)
    features = mf.content_features
    return export_onnx(net, mf.config, target, embedder_layer=embedder_layer, features=features, half=half)


def _check_runs(data: bytes, example: dict[str, torch.Tensor], hop: int) -> None:
    """Load the file into onnxruntime and run it once: a file that does not run is not written."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {name: value.numpy() for name, value in example.items()}
    (audio,) = session.run([OUTPUT], feeds)
    expected = example["feats"].shape[1] * hop
    if audio.shape != (expected,) or not bool(torch.isfinite(torch.from_numpy(audio)).all()):
        raise ExportError(
            f"the exported graph gave audio of shape {audio.shape} (finite: "
            f"{bool(torch.isfinite(torch.from_numpy(audio)).all())}), not ({expected},): not written"
        )


class OnnxVoice(nn.Module):
    """A VC Client ONNX file run by onnxruntime behind :meth:`Synthesizer.infer`'s signature, so
    :func:`arvc.infer.convert.convert` runs it with its whole pipeline. Batch 1 (the client's interface);
    the noise is the graph's own (onnxruntime's, not seeded by torch)."""

    def __init__(self, session, features: str | None) -> None:
        super().__init__()
        self.session = session
        self.trained_features = features
        half = session.get_inputs()[0].type == "tensor(float16)"  # as the client tells fp16 files apart
        self.feats_dtype = torch.float16 if half else torch.float32
        # convert() asks the model where it runs: onnxruntime's CPU provider.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @torch.no_grad()
    def infer(
        self, phone, phone_lengths, pitch, nsff0, sid, noise_scale: float | None = None
    ) -> torch.Tensor:
        if noise_scale is not None and noise_scale != DEFAULT_NOISE_SCALE:
            raise ValueError(f"an ONNX model's noise scale is fixed in its graph ({DEFAULT_NOISE_SCALE})")
        values = (phone.to(self.feats_dtype), phone_lengths.long(), pitch.long(), nsff0.float(), sid.long())
        feeds = {name: value.cpu().numpy() for name, value in zip(F0_INPUTS, values, strict=True)}
        (audio,) = self.session.run([OUTPUT], feeds)
        return torch.from_numpy(audio).float()[None, None]


def _client_config(meta: dict, path: Path) -> RunConfig:
    """The RVC preset a VC Client file made by another tool stands for (its sample rate and feature size)."""
    version = {256: "v1", 768: "v2"}.get(meta.get("embChannels"))
    name = f"{version}-{int(meta.get('samplingRate', 0)) // 1000}k"
    try:
        return load_config(name)
    except (ValueError, OSError, FileNotFoundError) as error:
        raise ValueError(
            f"{path}: its VC Client metadata (embChannels {meta.get('embChannels')}, samplingRate "
            f"{meta.get('samplingRate')}) matches no RVC configuration arvc knows ({error})"
        ) from error


def load_onnx_voice(path: str | os.PathLike) -> tuple[OnnxVoice, RunConfig]:
    """An ONNX file with the VC Client's f0 interface, ready for `convert`, and its configuration (arvc's
    record where arvc wrote the file, else the RVC preset its client metadata names). ValueError naming
    what is wrong; ImportError naming the extra when onnxruntime is missing."""
    require_onnx()
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model {path} does not exist")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph classes
        raise ValueError(f"{path} is not an ONNX model onnxruntime can load: {error}") from error
    names = tuple(i.name for i in session.get_inputs())
    if names == NO_F0_INPUTS:
        raise ValueError(
            f"{path} is a model without pitch guidance (the VC Client's no-f0 interface {list(names)}): the "
            "client runs it, arvc converts pitch-guided models only"
        )
    if names != F0_INPUTS or [o.name for o in session.get_outputs()] != [OUTPUT]:
        raise ValueError(
            f"{path} has inputs {list(names)} and outputs {[o.name for o in session.get_outputs()]}; arvc "
            f"runs the VC Client's pitch-guided interface ({', '.join(F0_INPUTS)} -> {OUTPUT}): export it "
            "again with arvc export --onnx, or the VC Client's own exporter"
        )
    props = session.get_modelmeta().custom_metadata_map
    try:
        if ARVC_KEY in props:
            own = json.loads(props[ARVC_KEY])
            return OnnxVoice(session, own.get("features")), RunConfig.from_dict(own["config"])
        if METADATA_KEY in props:
            meta = json.loads(props[METADATA_KEY])
            return OnnxVoice(session, "hubert"), _client_config(meta, path)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: its metadata cannot be read ({error})") from error
    raise ValueError(
        f"{path} has no VC Client metadata (no 'metadata' property): its sample rate and feature size are "
        "not known; export it again with arvc export --onnx"
    )
