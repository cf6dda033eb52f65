"""Read every model file arvc meets — RVC's and its own — and load pretrained weights strictly.

Four kinds: RVC training files (``{"model": state_dict, ...}``: pretrained ``f0G40k.pth``/``f0D40k.pth``,
``G_*.pth``/``D_*.pth`` from RVC's logs, with or without f0), RVC inference files (``{"weight", "config",
"sr", "f0", "version", "info"}``), arvc checkpoints and arvc exports (``model.safetensors`` or its
``model.json``).
Files are opened with ``weights_only=True``: a model is data, and a pickle that needs code is refused.

Loading is strict on purpose: a pretrained file that only half fits (another sample rate, v1
features, a discriminator given as generator) would otherwise train from a silently wrong start.
The one tolerated gap is the posterior encoder ``enc_q``, which inference files leave out.
"""

from __future__ import annotations

import functools
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arvc.config import RunConfig, config_from_rvc_list, load_config
from arvc.modelfile.formats import CHECKPOINT_FORMAT, EXPORT_FORMAT

__all__ = [
    "ModelFile",
    "PretrainedError",
    "check_pretrained",
    "check_state_fits",
    "load_pretrained_discriminator",
    "load_pretrained_generator",
    "load_state_strict",
    "read_model_file",
]

logger = logging.getLogger(__name__)

_SR_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}
_VERSION_BY_FEATURE_DIM = {768: "v2", 256: "v1"}
_VERSION_BY_DISCRIMINATORS = {9: "v2", 7: "v1"}  # DiscriminatorS + 8 (v2) or 6 (v1) period discriminators
_PITCH_KEY = "enc_p.emb_pitch.weight"
_PHONE_KEY = "enc_p.emb_phone.weight"
_SHOWN = 4  # keys named per kind of mismatch in an error


class PretrainedError(ValueError):
    """A model file that cannot be read or does not fit; the message says what it is and what to do."""


@dataclass
class ModelFile:
    """What a model file holds, as far as it can be told from the file alone."""

    kind: str
    path: Path
    generator: dict[str, torch.Tensor] | None = None
    discriminator: dict[str, torch.Tensor] | None = None
    sample_rate: int | None = None
    version: str | None = None
    f0: int | None = None
    n_params: int = 0
    config: RunConfig | None = None
    dtype: str | None = None
    info: str | None = None
    optimizer: str | None = None
    hyperparameters: dict[str, Any] | None = None
    epoch: int | None = None
    step: int | None = None
    features: str | None = None  # content features it was trained on (mel, hubert), where the file says
    extra: dict[str, Any] = field(default_factory=dict)
    # An arvc checkpoint of a run that averages (arvc.train.weights): the generator it evaluates and exports
    # (schedule-free x, the EMA) beside `generator`, the live weights it trains; and which ("ema", ...).
    averaged_generator: dict[str, torch.Tensor] | None = None
    averaged_kind: str | None = None
    averaged_info: dict[str, Any] | None = (
        None  # what `arvc inspect` shows: kind (and an EMA's decay, updates)
    )

    @property
    def content_features(self) -> str | None:
        """What the model converts from: the file's record, else HuBERT for RVC's own files."""
        return self.features or ("hubert" if self.kind.startswith("rvc") else None)

    @property
    def contents(self) -> list[str]:
        return [n for n, sd in (("generator", self.generator), ("discriminator", self.discriminator)) if sd]

    def summary(self) -> str:
        """One line for messages: kind, contents, sample rate, version, f0."""
        sr = f"{self.sample_rate} Hz" if self.sample_rate else "sample rate unknown"
        f0 = "f0 unknown" if self.f0 is None else f"f0={self.f0}"
        what = " + ".join(self.contents) or "no weights"
        return f"{self.kind} ({what}), {sr}, {self.version or 'version unknown'}, {f0}"

    def check_voice_model(self, error: type[Exception], needs: str) -> None:
        """Refuse, as `error`, a file that is no voice model to build from: a discriminator file (`needs`
        says what the caller needs instead, e.g. "merging needs generators (voice models)") or one that does
        not say which configuration it has."""
        if self.generator is None:
            raise error(f"{self.path} is a discriminator file; {needs}")
        if self.config is None:
            raise error(
                f"{self.path} ({self.summary()}) does not say which configuration it has; pass its inference "
                "file (RVC's weights/NAME.pth or an arvc export)"
            )


# --------------------------------------------------------------------------- reading


def read_model_file(path: str | Path) -> ModelFile:
    """Open and classify a model file (or a folder holding ``model.safetensors``, or a run's ``export/``)."""
    path = _resolve(Path(path).expanduser())
    if path.suffix == ".safetensors":
        return _read_export(path, path)
    if path.suffix == ".json":
        return _read_export_json(path)
    data = _torch_load(path)
    if not isinstance(data, dict):
        raise PretrainedError(f"{path} holds a {type(data).__name__}, not a model; {_KNOWN}")
    if data.get("format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(path, data)
    if isinstance(data.get("weight"), dict):
        return _from_rvc_inference(path, data)
    if isinstance(data.get("model"), dict):
        return _from_rvc_train(path, data)
    keys = ", ".join(map(str, list(data)[:8]))
    raise PretrainedError(
        f"{path} is a dict with keys [{keys}], none of the model formats arvc knows; {_KNOWN}"
    )


_KNOWN = (
    "arvc reads RVC training files (f0G40k.pth, G_*.pth, D_*.pth), RVC inference .pth files, "
    "arvc checkpoints (ckpt_*.pt) and arvc exports (model.safetensors / model.json)"
)


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise PretrainedError(f"model file {path} does not exist; check the path")
    if path.is_dir():
        for candidate in (path / "model.safetensors", path / "export" / "model.safetensors"):
            if candidate.is_file():
                return candidate
        raise PretrainedError(f"{path} is a folder without model.safetensors or export/; pass a model file")
    return path


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if "Unsupported global" not in str(error) or found is None:
            raise PretrainedError(
                f"{path} is damaged or not a model file (it does not unpickle as plain data); {_KNOWN}"
            ) from error
        raise PretrainedError(
            f"{path} is a pickle that needs code to load (an object of class {found[1]}). arvc only loads "
            "plain data (tensors, numbers, strings, lists, dicts): unpickling objects can run any code. "
            "If you trust the file, re-save it once as plain data: torch.load(path, weights_only=False), "
            "replace custom objects by plain values (a model by {'model': net.state_dict()}), torch.save."
        ) from error
    except Exception as error:  # truncated zip, text file, random bytes, ...
        raise PretrainedError(
            f"{path} is damaged or not a model file ({type(error).__name__}: {error}); is it complete? "
            f"{_KNOWN}"
        ) from error


def _state_dict(path: Path, value: Any, what: str) -> dict[str, torch.Tensor]:
    tensors = isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values())
    if not tensors:
        raise PretrainedError(f"{path}: {what} is not a state dict of tensors; the file is damaged")
    return dict(value)


def _fill(mf: ModelFile) -> ModelFile:
    """Derive version, f0, parameter count and dtype from the weights themselves."""
    g, d = mf.generator, mf.discriminator
    tensors = [t for sd in (g, d) if sd for t in sd.values()]
    mf.n_params = sum(t.numel() for t in tensors)
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    mf.dtype = str(floats[0]).removeprefix("torch.") if floats else None
    if g is not None:
        if _PHONE_KEY in g:
            mf.version = _VERSION_BY_FEATURE_DIM.get(g[_PHONE_KEY].shape[-1], mf.version)
        mf.f0 = int(_PITCH_KEY in g)
    elif d is not None and mf.version is None:
        n = len({k.split(".")[1] for k in d})
        mf.version = _VERSION_BY_DISCRIMINATORS.get(n)
    return mf


def _from_checkpoint(path: Path, data: dict) -> ModelFile:
    try:
        cfg = RunConfig.from_dict(data.get("config") or {})
    except ValueError as error:
        raise PretrainedError(f"{path}: the checkpoint's config is invalid ({error})") from error
    optim = data.get("optim_g") if isinstance(data.get("optim_g"), dict) else {}
    disc = data.get("discriminator")
    mf = ModelFile(
        kind="arvc-checkpoint",
        path=path,
        generator=_state_dict(path, data.get("generator"), "'generator'"),
        discriminator=None if disc is None else _state_dict(path, disc, "'discriminator'"),
        sample_rate=cfg.data.sampling_rate,
        version=cfg.version,
        config=cfg,
        optimizer=optim.get("name"),
        hyperparameters=optim.get("hyperparameters"),
        epoch=data.get("epoch"),
        step=data.get("step"),
        extra={key: data[key] for key in ("precision", "device", "device_name") if data.get(key)},
    )
    averaged = data.get("averaged")
    if isinstance(averaged, dict):
        mf.averaged_generator = _state_dict(path, averaged.get("generator"), "'averaged' generator")
        mf.averaged_kind = str(averaged.get("kind"))
        mf.averaged_info = {"kind": mf.averaged_kind} | {
            key: averaged[key] for key in ("decay", "updates") if key in averaged
        }
    return _fill(mf)


def _from_rvc_inference(path: Path, data: dict) -> ModelFile:
    weights = _state_dict(path, data["weight"], "'weight'")
    sr = _SR_NAMES.get(data.get("sr"), data.get("sr"))
    sr = int(sr) if isinstance(sr, (int, float)) else None
    mf = _fill(ModelFile(kind="rvc-inference", path=path, generator=weights, sample_rate=sr))
    mf.version = mf.version or str(data.get("version", "v1"))  # v1 files predate the "version" key
    mf.f0, mf.info = int(data.get("f0", mf.f0)), data.get("info")
    values = data.get("config")
    if isinstance(values, (list, tuple)):
        dim = weights[_PHONE_KEY].shape[-1] if _PHONE_KEY in weights else None
        try:
            mf.config = config_from_rvc_list(list(values), version=mf.version or "v2", feature_dim=dim)
        except (ValueError, TypeError) as error:
            raise PretrainedError(f"{path}: the RVC 'config' list is invalid ({error})") from error
        mf.sample_rate = mf.sample_rate or mf.config.data.sampling_rate
    return mf


def _from_rvc_train(path: Path, data: dict) -> ModelFile:
    sd = _state_dict(path, data["model"], "'model'")
    role = "discriminator" if all(k.startswith("discriminators.") for k in sd) else "generator"
    mf = ModelFile(kind="rvc-train", path=path, **{role: sd})
    mf.epoch = data.get("iteration")  # RVC counts epochs as "iteration"
    if "learning_rate" in data:
        mf.hyperparameters = {"lr": data["learning_rate"]}
    mf = _fill(mf)
    if role == "generator":  # RVC training files carry no config: recognise the preset by shape
        mf.config = _match_preset(sd, f0=bool(mf.f0))  # a no-f0 run's G_*.pth: RVC's nono layout
        mf.sample_rate = mf.config.data.sampling_rate if mf.config else None
    return mf


def _read_export(path: Path, weights_path: Path, info: str | None = None) -> ModelFile:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            meta = handle.metadata() or {}
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise PretrainedError(f"{weights_path} is not a readable safetensors file ({error})") from error
    if meta.get("format") != EXPORT_FORMAT:
        raise PretrainedError(
            f"{weights_path} has no arvc metadata (format={meta.get('format')!r}, expected "
            f"{EXPORT_FORMAT!r}); arvc reads the safetensors files it exported itself"
        )
    try:
        cfg = RunConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError) as error:
        raise PretrainedError(f"{weights_path}: the config in its metadata is invalid ({error})") from error
    mf = ModelFile(
        "arvc-export",
        path,
        weights,
        None,
        cfg.data.sampling_rate,
        cfg.version,
        config=cfg,
        info=info or meta.get("info"),
        features=meta.get("features"),
    )
    return _fill(mf)


def _read_export_json(path: Path) -> ModelFile:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PretrainedError(f"{path} is not a readable JSON file ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise PretrainedError(f'{path} is not an arvc model.json (no "format": "{EXPORT_FORMAT}")')
    weights = path.with_suffix(".safetensors")
    if not weights.is_file():
        raise PretrainedError(f"{path}: {weights.name} is missing beside it; export the run again")
    return _read_export(path, weights, info=meta.get("info"))


@functools.lru_cache(maxsize=16)
def _generator_shapes(cfg_json: str, f0: bool = True) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a generator built on the meta device (no memory, no initialisation cost)."""
    from arvc.model import Synthesizer

    with torch.device("meta"):
        net = Synthesizer(RunConfig.from_dict(json.loads(cfg_json)), f0=f0)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _match_preset(sd: dict[str, torch.Tensor], f0: bool = True) -> RunConfig | None:
    """The built-in RVC preset whose generator, with pitch guidance or without (`f0`: RVC's nono models,
    no pitch embedding and no NSF source ``dec.m_source``), has exactly these keys and shapes, if any."""
    if _PHONE_KEY not in sd:
        return None
    dim = sd[_PHONE_KEY].shape[-1]
    have = {k: tuple(v.shape) for k, v in sd.items()}
    for name in ("v2-40k", "v2-32k", "v2-48k", "v1-40k", "v1-32k", "v1-48k"):  # RVC's own presets first
        cfg = load_config(name)
        if cfg.data.feature_dim == dim and _generator_shapes(json.dumps(cfg.to_dict()), f0) == have:
            return cfg
    for name in ("v2-40k", "v2-32k", "v2-48k"):  # another feature size on a v2 body
        cfg = load_config(name)
        cfg.data.feature_dim = dim
        if dim != 768:
            cfg.name, cfg.version, cfg.model.disc_periods = (
                name.replace("v2", "v1"),
                "v1",
                [2, 3, 5, 7, 11, 17],
            )
        if _generator_shapes(json.dumps(cfg.to_dict()), f0) == have:
            return cfg
    return None


# --------------------------------------------------------------------------- loading


def load_pretrained_generator(net_g: nn.Module, path: str | Path, cfg: RunConfig) -> ModelFile:
    """Load a generator from any known model file into ``net_g``, strictly (enc_q may be absent); from an
    averaging run's checkpoint (schedule-free, --ema) its averaged weights, as `arvc export` and `arvc
    infer` take them."""
    mf = read_model_file(path)
    state = _pretrained_generator_state(mf)
    if mf.averaged_generator is not None:  # an averaging run's checkpoint: what it evaluated and exported
        logger.info(
            "--pretrained-g %s: starting from the run's %s weights (the ones it evaluated and exported, as "
            "`arvc export` takes them), not its live weights",
            mf.path,
            mf.averaged_kind,
        )
    load_state_strict(net_g, state, source=mf, cfg=cfg, part="generator", optional=_GENERATOR_OPTIONAL)
    return mf


def load_pretrained_discriminator(net_d: nn.Module, path: str | Path, cfg: RunConfig) -> ModelFile:
    """Load a multi-period discriminator from an RVC D file or an arvc checkpoint into ``net_d``, strictly."""
    mf = read_model_file(path)
    load_state_strict(net_d, _pretrained_discriminator_state(mf), source=mf, cfg=cfg, part="discriminator")
    return mf


def check_pretrained(cfg: RunConfig, pretrained_g: Path | None, pretrained_d: Path | None) -> None:
    """Refuse (PretrainedError), before any work, a pretrained file that would not load into a run of
    `cfg`: the checks `load_pretrained_generator`/`_discriminator` make, on models built on the meta
    device (shapes only: no memory, no initialisation)."""
    from arvc.model import MultiPeriodDiscriminator, Synthesizer

    if pretrained_g is not None:
        mf = read_model_file(pretrained_g)  # the file is read as anywhere else; only the model is on meta
        state = _pretrained_generator_state(mf)
        with torch.device("meta"):
            net_g = Synthesizer(cfg)
        check_state_fits(net_g, state, mf, cfg, "generator", _GENERATOR_OPTIONAL)
    if pretrained_d is not None:
        mf = read_model_file(pretrained_d)
        state = _pretrained_discriminator_state(mf)
        with torch.device("meta"):
            net_d = MultiPeriodDiscriminator(cfg)
        check_state_fits(net_d, state, mf, cfg, "discriminator")


_GENERATOR_OPTIONAL = ("enc_q.",)  # inference files leave the posterior encoder out


def _pretrained_generator_state(mf: ModelFile) -> dict[str, torch.Tensor]:
    """The generator weights a run starts from: a pitch-guided generator's (an averaging run's averaged
    ones); a PretrainedError saying which file to pass instead otherwise."""
    if mf.generator is None:
        raise PretrainedError(
            f"{mf.path} is a discriminator (D) file, not a generator: pass it as --pretrained-d, and the "
            "matching generator file (e.g. f0G40k.pth) as --pretrained-g"
        )
    if _PITCH_KEY not in mf.generator:
        raise PretrainedError(
            f"{mf.path} is a model without pitch guidance (f0=0, e.g. G40k.pth); arvc trains pitch-guided "
            "models: use the f0 variant of the pretrained file (e.g. f0G40k.pth)"
        )
    return mf.averaged_generator if mf.averaged_generator is not None else mf.generator


def _pretrained_discriminator_state(mf: ModelFile) -> dict[str, torch.Tensor]:
    if mf.discriminator is None:
        if mf.kind == "rvc-train":
            hint = "pass it as --pretrained-g, and the matching D file (e.g. f0D40k.pth) as --pretrained-d"
        else:
            hint = "it has no discriminator; use RVC's pretrained D (e.g. f0D40k.pth) or an arvc checkpoint"
        raise PretrainedError(f"{mf.path} is a generator-only {mf.kind} file: {hint}")
    return mf.discriminator


def load_state_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: ModelFile | str | Path,
    cfg: RunConfig | None = None,
    part: str = "generator",
    optional: tuple[str, ...] = (),
    absent_level: int = logging.INFO,
) -> None:
    """Copy ``state`` into ``module`` (dtypes converted to the module's) only if every key and shape fits
    and, when both are known, the file's sample rate is the config's (`check_state_fits`).

    Keys under an ``optional`` prefix may be missing as a whole group (an inference file's enc_q);
    they keep their fresh initialisation, logged at ``absent_level``. Anything else raises PretrainedError.
    """
    absent_groups = check_state_fits(module, state, source, cfg, part, optional)
    own = module.state_dict()
    converted = {k: v.to(dtype=own[k].dtype) for k, v in state.items()}
    module.load_state_dict(converted, strict=False)  # keys checked above; only absent groups stay fresh
    where = getattr(source, "path", source)
    for group in (p.rstrip(".") for p in absent_groups):
        note = "%s has no %s weights (inference files omit it): %s keeps its fresh initialisation"
        logger.log(absent_level, note, where, group, group)
    logger.info("loaded %s weights from %s", part, where)


def check_state_fits(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: ModelFile | str | Path,
    cfg: RunConfig | None = None,
    part: str = "generator",
    optional: tuple[str, ...] = (),
) -> list[str]:
    """Raise PretrainedError unless `state` fits `module` key for key and shape for shape (and the file's
    sample rate, when known, is the config's); the `optional` groups `state` leaves out as a whole."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    absent_groups = [p for p in optional if not any(k.startswith(p) for k in state)]
    missing = [k for k in missing if not any(k.startswith(p) for p in absent_groups)]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    file_sr = getattr(source, "sample_rate", None)
    other_sr = bool(cfg and file_sr and file_sr != cfg.data.sampling_rate)
    if missing or unexpected or shapes or other_sr:
        # the generator's own pitch guidance (Synthesizer.f0); None for a module without one
        f0 = getattr(module, "f0", None)
        message = _mismatch_message(source, cfg, part, state, own, missing, unexpected, shapes, f0)
        raise PretrainedError(message)
    return absent_groups


def _mismatch_message(source, cfg, part, state, own, missing, unexpected, shapes, f0=None) -> str:
    def listing(keys: list[str], sd: dict) -> str:
        return f"{len(keys)}, e.g. " + "; ".join(f"{k} {list(sd[k].shape)}" for k in keys[:_SHOWN])

    lines = [
        f"{getattr(source, 'path', source)} does not fit the {part} of config '{getattr(cfg, 'name', '?')}'"
    ]
    if isinstance(source, ModelFile):
        lines.append(f"  file: {source.summary()}, {source.n_params:,} parameters")
    if cfg is not None:
        d = cfg.data
        pitch = "" if f0 is None else f", f0={int(f0)}"  # the model's own (a discriminator has none)
        lines.append(f"  config: {d.sampling_rate} Hz, {cfg.version}, {d.feature_dim}-d features{pitch}")
    file_f0 = getattr(source, "f0", None)
    if f0 is not None and file_f0 is not None and file_f0 != int(f0):
        lines.append(
            f"  the file is f0={file_f0} ({'with' if file_f0 else 'without'} pitch guidance), the model "
            f"f0={int(f0)}: a model {'with' if f0 else 'without'} pitch guidance needs a file like it"
        )
    if shapes:
        shown = "; ".join(
            f"{k} file {list(state[k].shape)} vs model {list(own[k].shape)}" for k in shapes[:_SHOWN]
        )
        lines.append(f"  keys with other shapes: {len(shapes)}, e.g. {shown}")
    if missing:
        lines.append(f"  keys missing from the file: {listing(missing, own)}")
    if unexpected:
        lines.append(f"  unexpected keys in the file: {listing(unexpected, state)}")
    file_sr = getattr(source, "sample_rate", None)
    if cfg is not None and file_sr and file_sr != cfg.data.sampling_rate:
        preset = {32000: "v2-32k", 40000: "v2-40k", 48000: "v2-48k"}.get(file_sr, "a config")
        lines.append(
            f"  the file is {file_sr} Hz, not {cfg.data.sampling_rate} Hz: a {file_sr} Hz file needs {preset}"
        )
    lines.append(
        "Nothing was loaded. Use the pretrained file that matches the config (same sample rate, version "
        "and sizes), or choose the config that matches the file."
    )
    return "\n".join(lines)
