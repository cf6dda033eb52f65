"""Run configuration: plain dataclasses, built-in presets and validated overrides.

The ``data`` and ``model`` sections of the built-in ``v2-32k``/``v2-40k``/``v2-48k`` presets
are exactly RVC's ``configs/v2/32k.json``, ``configs/v1/40k.json`` (RVC trains v2 40k models
with the v1 40k file) and ``configs/v2/48k.json``, so models built from them share RVC's
state-dict layout and pretrained weights; ``v1-32k``/``v1-40k``/``v1-48k`` are RVC's ``configs/v1`` files
(256-d content features, the 6-period discriminator).  ``tiny`` keeps the architecture but shrinks
every width so a training step runs in well under a second on a laptop CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "BETTER",
    "BUILTIN_CONFIGS",
    "CHECKPOINTING",
    "DEMO_EPOCHS",
    "PRECISIONS",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_rvc_list",
    "load_config",
    "optimizer_value_errors",
    "rvc_config_list",
]

BUILTIN_CONFIGS = ("tiny", "v2-32k", "v2-40k", "v2-48k", "v1-32k", "v1-40k", "v1-48k")
PRECISIONS = ("fp32", "bf16", "fp16")  # what a run trains in; "auto" picks one (arvc.train.precision)
#: Which way is better, for every number that can choose a run's best model (`arvc train --select`,
#: train.select): the held-out mel L1 and MR-STFT loss of validation (arvc.train.validation), then the
#: scores of arvc.audio.score. Here, below the CLI and the scores, so that `--select`'s help lists them.
BETTER = {
    "mel_l1": "lower",
    "stft": "lower",
    "f0_rmse_cents": "lower",
    "f0_corr": "higher",
    "vuv_error": "lower",
    "mcd_db": "lower",
    "pesq_wb": "higher",
    "stoi": "higher",
    "speaker_sim": "higher",
}
DEMO_EPOCHS = 60  # a new run on the demo voice (no dataset) without epochs given: ~10 min on a 2-core CPU

# RVC's export code (process_ckpt.savee / extract_small_model) always writes 32 as the second
# entry of an inference file's "config" list; inference passes it as ``segment_size`` but never
# uses it. We write the same constant so our files are indistinguishable from RVC's.
RVC_CONFIG_SEGMENT_ENTRY = 32


@dataclass
class DataConfig:
    """Audio framing shared by preprocessing, the spectrogram losses and the model."""

    sampling_rate: int = 40000
    filter_length: int = 2048
    hop_length: int = 400
    win_length: int = 2048
    n_mel_channels: int = 125
    mel_fmin: float = 0.0
    mel_fmax: float | None = None
    # Size of one content-feature vector: 768 for RVC v2 (HuBERT layer 12), 256 for v1.
    feature_dim: int = 768
    # Training slice length in samples (RVC's train.segment_size); a multiple of hop_length.
    segment_size: int = 12800


@dataclass
class ModelConfig:
    """Generator hyperparameters exactly as RVC stores them, plus discriminator settings."""

    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.0
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    )
    upsample_rates: list[int] = field(default_factory=lambda: [10, 10, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 4, 4])
    spk_embed_dim: int = 109
    gin_channels: int = 256
    use_spectral_norm: bool = False
    # MultiPeriodDiscriminatorV2 periods; v1 used [2, 3, 5, 7, 11, 17].
    disc_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11, 17, 23, 37])
    # Divides every discriminator width (and group count); 1 is RVC's discriminator.
    disc_channel_div: int = 1


@dataclass
class TrainConfig:
    """Optimisation settings; RVC's values where RVC fixes them."""

    epochs: int = 300
    batch_size: int = 8
    learning_rate: float | None = None  # None: the training loop picks one for the optimizer
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    weight_decay: float = 0.01  # RVC's: torch AdamW's default, which RVC leaves as is (decoupled everywhere)
    lr_decay: float = 0.999875  # per-epoch exponential decay (RVC's ExponentialLR gamma)
    c_mel: float = 45.0
    c_kl: float = 1.0
    c_fm: float = 2.0  # RVC bakes this factor into feature_loss
    seed: int = 1234
    grad_clip: float | None = None  # None: no clipping (RVC only measures the norm)
    # Gradient accumulation: micro-batches of `batch_size` per optimizer step, for D and for G; a step then
    # trains `batch_size * accumulate` items (the effective batch) with the memory of one micro-batch.
    accumulate: int = 1
    # Activation checkpointing of the largest blocks (the decoder's resblocks, each sub-discriminator):
    # "on", "off", or "auto" (on when the memory estimate says the batch does not fit otherwise). Recorded
    # as the choice made ("on"/"off") in the run's config.
    checkpointing: str = "auto"
    log_interval: int = 200  # steps
    save_every: int = 5  # epochs
    keep_last: int = 3  # checkpoints kept; 0 keeps all
    # The lr schedule (arvc.optim.schedulers): "auto" = the optimizer's pairing in the registry (AdaBelief
    # cosine, AdaBeliefV2 inverse_sqrt, the schedule-free ones constant, others RVC's exponential), or one
    # of cosine, inverse_sqrt, exponential, constant.
    scheduler: str = "auto"
    # Warm-up of inverse_sqrt, in epochs; None: clamp(epochs // 10, 1, 10) (schedulers.default_warmup_epochs)
    warmup_epochs: int | None = None
    # Held-out validation (arvc.data.split, arvc.train.validation): the fraction of pieces never trained on
    # (at least 2, at most 20; 0: no validation), evaluated every `val_every` epochs. `early_stop`: stop
    # after that many evaluations without an improvement of held-out mel L1 by more than `min_delta`
    # (None: never stop early).
    val_fraction: float = 0.1
    val_every: int = 1
    early_stop: int | None = None
    min_delta: float = 0.0
    # EMA of the generator's weights (arvc.train.weights): the decay, in (0, 1) (e.g. 0.999), or None (off).
    # Validation, listening samples and the exports use the averaged weights; checkpoints hold both.
    ema: float | None = None
    # What chooses the best model (export/best): held-out "mel_l1" (lower is better), or another held-out
    # metric of BETTER (`arvc train --select`); fixed for a run (a resume keeps it).
    select: str = "mel_l1"

    @property
    def step_batch(self) -> int:
        """Items per optimizer step (the effective batch): `batch_size` micro-batches times `accumulate`."""
        return self.batch_size * self.accumulate


CHECKPOINTING = ("auto", "on", "off")


@dataclass
class RunConfig:
    """Everything needed to build and train one model."""

    name: str = "v2-40k"
    version: str = "v2"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def spec_channels(self) -> int:
        """Linear-spectrogram bins fed to the posterior encoder."""
        return self.data.filter_length // 2 + 1

    @property
    def segment_frames(self) -> int:
        """Training slice length in frames (what RVC passes to the synthesizer as segment_size)."""
        return self.data.segment_size // self.data.hop_length

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; missing keys keep defaults, unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        cfg = cls()
        flat: dict[str, Any] = {}
        for key, value in d.items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ValueError(f"config section {key!r} must be an object")
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return apply_overrides(cfg, flat, parse_strings=False)

    def validate(self) -> None:
        """Reject inconsistent settings early, with a message naming the offending fields."""
        d, m = self.data, self.model
        errors = _size_errors(d, m, self.train)
        if errors:  # the checks below divide by these and build lists of them
            raise ValueError("invalid config: " + "; ".join(errors))
        if self.version not in ("v1", "v2"):
            errors.append(f"version must be 'v1' or 'v2', got {self.version!r}")
        if d.segment_size % d.hop_length:
            errors.append(f"data.segment_size ({d.segment_size}) must be a multiple of hop_length")
        if d.win_length > d.filter_length:
            errors.append(
                f"data.win_length ({d.win_length}) must not exceed data.filter_length ({d.filter_length})"
            )
        if not (_finite(d.mel_fmin) and 0 <= d.mel_fmin < d.sampling_rate / 2):
            errors.append(
                f"data.mel_fmin = {d.mel_fmin!r} must be >= 0 and below half the sampling rate "
                f"({d.sampling_rate / 2:g} Hz)"
            )
        elif d.mel_fmax is not None and not (
            _finite(d.mel_fmax) and d.mel_fmin < d.mel_fmax <= d.sampling_rate / 2
        ):
            errors.append(
                f"data.mel_fmax = {d.mel_fmax!r} must be above data.mel_fmin ({d.mel_fmin:g}) and at most "
                f"half the sampling rate ({d.sampling_rate / 2:g} Hz), or null (half the sampling rate)"
            )
        if not (_finite(m.p_dropout) and 0 <= m.p_dropout < 1):
            errors.append(f"model.p_dropout = {m.p_dropout!r} must be in [0, 1) (RVC's 0)")
        if math.prod(m.upsample_rates) != d.hop_length:
            errors.append(
                f"prod(model.upsample_rates) = {math.prod(m.upsample_rates)} must equal "
                f"data.hop_length = {d.hop_length} (the decoder turns one frame into one hop)"
            )
        if len(m.upsample_rates) != len(m.upsample_kernel_sizes):
            errors.append("model.upsample_rates and model.upsample_kernel_sizes differ in length")
        for u, k in zip(m.upsample_rates, m.upsample_kernel_sizes, strict=False):
            if k < u or (k - u) % 2:
                errors.append(f"upsample kernel {k} for rate {u}: need k >= u and k - u even")
        for i in range(1, len(m.upsample_rates)):
            stride = math.prod(m.upsample_rates[i:])
            if stride > 1 and stride % 2:
                errors.append(f"NSF noise conv stride {stride} must be even (product of later rates)")
        if m.upsample_initial_channel % (2 ** len(m.upsample_rates)):
            errors.append("model.upsample_initial_channel must be divisible by 2**len(upsample_rates)")
        if len(m.resblock_kernel_sizes) != len(m.resblock_dilation_sizes):
            errors.append("model.resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if m.resblock not in ("1", "2"):
            errors.append(f"model.resblock must be '1' or '2', got {m.resblock!r}")
        need = 3 if m.resblock == "1" else 2
        if any(len(ds) != need for ds in m.resblock_dilation_sizes):
            errors.append(f"resblock {m.resblock} needs {need} dilations per kernel")
        if m.hidden_channels % m.n_heads:
            errors.append(
                f"model.hidden_channels ({m.hidden_channels}) must be divisible by "
                f"model.n_heads ({m.n_heads})"
            )
        if m.inter_channels % 2:
            errors.append(
                f"model.inter_channels = {m.inter_channels} must be even (the flow splits it in halves)"
            )
        div = m.disc_channel_div
        if div < 1 or div & (div - 1) or div > 16:
            errors.append("model.disc_channel_div must be a power of two between 1 and 16")
        if not m.disc_periods or any(p < 1 for p in m.disc_periods):
            errors.append("model.disc_periods must be a non-empty list of positive periods")
        errors += _schedule_errors(self.train) + _train_errors(self.train)
        if errors:
            raise ValueError("invalid config: " + "; ".join(errors))


def _size_errors(d: DataConfig, m: ModelConfig, t: TrainConfig) -> list[str]:
    """Every size and count of the data, model and train sections out of its range, one message per value."""
    at_least = {
        "data.sampling_rate": (d.sampling_rate, 1),
        "data.filter_length": (d.filter_length, 1),
        "data.hop_length": (d.hop_length, 1),
        "data.win_length": (d.win_length, 1),
        "data.n_mel_channels": (d.n_mel_channels, 1),
        "data.feature_dim": (d.feature_dim, 1),
        "data.segment_size": (d.segment_size, 1),
        "model.inter_channels": (m.inter_channels, 2),  # the flow splits it in halves
        "model.hidden_channels": (m.hidden_channels, 1),
        "model.filter_channels": (m.filter_channels, 1),
        "model.n_heads": (m.n_heads, 1),
        "model.n_layers": (m.n_layers, 0),  # 0: the text encoder is its projections only
        "model.kernel_size": (m.kernel_size, 1),
        "model.upsample_initial_channel": (m.upsample_initial_channel, 1),
        "model.spk_embed_dim": (m.spk_embed_dim, 1),
        "model.gin_channels": (m.gin_channels, 1),
        "train.epochs": (t.epochs, 1),
        "train.batch_size": (t.batch_size, 1),
    }
    errors = [
        f"{key} = {value!r} must be an integer >= {low}"
        for key, (value, low) in at_least.items()
        if value < low
    ]
    lists = {  # key: (its value, the numbers in it)
        "model.resblock_kernel_sizes": (m.resblock_kernel_sizes, m.resblock_kernel_sizes),
        "model.upsample_rates": (m.upsample_rates, m.upsample_rates),
        "model.upsample_kernel_sizes": (m.upsample_kernel_sizes, m.upsample_kernel_sizes),
        "model.resblock_dilation_sizes": (
            m.resblock_dilation_sizes,
            [v for ds in m.resblock_dilation_sizes for v in ds] if all(m.resblock_dilation_sizes) else [],
        ),
    }
    errors += [
        f"{key} = {value!r} must be a non-empty list of integers >= 1"
        + (" (of lists)" if "dilation" in key else "")
        for key, (value, numbers) in lists.items()
        if not numbers or any(v < 1 for v in numbers)
    ]
    return errors


def _schedule_errors(t: TrainConfig) -> list[str]:
    from arvc.optim.schedulers import SCHEDULERS

    errors = []
    if t.scheduler not in SCHEDULERS:
        errors.append(f"train.scheduler must be one of {', '.join(SCHEDULERS)}, got {t.scheduler!r}")
    if t.warmup_epochs is not None and t.warmup_epochs < 1:
        errors.append(
            f"train.warmup_epochs must be at least 1 (or null for the default), got {t.warmup_epochs}"
        )
    return errors


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def optimizer_value_errors(
    *,
    lr: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
    names: dict[str, str] | None = None,
) -> list[str]:
    """What is wrong with these optimizer settings (None: not given), one message per value.

    The ranges every optimizer of the registry needs: lr > 0, each beta in [0, 1), eps > 0 (AdaBelief and
    Adam divide by sqrt(v) + eps; eps = 0 turns a zero gradient into 0/0 = NaN weights), weight decay >= 0;
    all finite. `names` says how the caller spells each value (``{"lr": "--lr"}``).
    """
    names = {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay", **(names or {})}
    betas_name = names["betas"]
    names = {k: v if v.startswith("-") else f"{v} =" for k, v in names.items()}  # "--lr -1", "lr = -1"
    errors = []
    if lr is not None and not (_finite(lr) and lr > 0):
        errors.append(f"{names['lr']} {lr!r} must be a finite number > 0 (RVC trains with 1e-4 to 1e-3)")
    if betas is not None:
        for index, beta in enumerate(betas):
            if not (_finite(beta) and 0 <= beta < 1):
                errors.append(
                    f"{betas_name}: beta{index + 1} = {beta!r} must be in [0, 1) (RVC's are 0.8,0.99)"
                )
    if eps is not None and not (_finite(eps) and eps > 0):
        errors.append(f"{names['eps']} {eps!r} must be a finite number > 0 (Adam's usual 1e-8; RVC's 1e-9)")
    if weight_decay is not None and not (_finite(weight_decay) and weight_decay >= 0):
        errors.append(f"{names['weight_decay']} {weight_decay!r} must be a finite number >= 0 (0: none)")
    return errors


def _train_errors(t: TrainConfig) -> list[str]:
    """The valid range of every numeric train.* setting, one message per value out of it."""
    errors = optimizer_value_errors(
        lr=t.learning_rate,
        betas=t.betas,
        eps=t.eps,
        weight_decay=t.weight_decay,
        names={
            "lr": "train.learning_rate",
            "betas": "train.betas",
            "eps": "train.eps",
            "weight_decay": "train.weight_decay",
        },
    )
    at_least_one = {  # (epochs and batch_size are checked first, with the sizes the checks divide by)
        "train.log_interval": t.log_interval,
        "train.save_every": t.save_every,
        "train.val_every": t.val_every,
        "train.accumulate": t.accumulate,
    }
    errors += [
        f"{key} = {value!r} must be an integer >= 1" for key, value in at_least_one.items() if value < 1
    ]
    if not (_finite(t.val_fraction) and 0 <= t.val_fraction <= 0.5):
        errors.append(f"train.val_fraction = {t.val_fraction!r} must be between 0 (no validation) and 0.5")
    if t.early_stop is not None and t.early_stop < 1:
        errors.append(f"train.early_stop = {t.early_stop!r} must be an integer >= 1 (evaluations), or null")
    if not (_finite(t.min_delta) and t.min_delta >= 0):
        errors.append(f"train.min_delta = {t.min_delta!r} must be a finite number >= 0")
    if t.early_stop is not None and t.val_fraction == 0:
        errors.append("train.early_stop needs held-out validation: train.val_fraction must be > 0")
    if t.ema is not None and not (_finite(t.ema) and 0 < t.ema < 1):
        errors.append(f"train.ema = {t.ema!r} must be a decay between 0 and 1, e.g. 0.999, or null (no EMA)")
    if t.keep_last < 0:
        errors.append(f"train.keep_last = {t.keep_last!r} must be >= 0 (0 keeps every checkpoint)")
    if not (_finite(t.lr_decay) and 0 < t.lr_decay <= 1):
        errors.append(f"train.lr_decay = {t.lr_decay!r} must be in (0, 1] (RVC's 0.999875; 1: no decay)")
    for key in ("c_mel", "c_kl", "c_fm"):
        value = getattr(t, key)
        if not (_finite(value) and value >= 0):
            errors.append(f"train.{key} = {value!r} must be a finite number >= 0")
    if t.grad_clip is not None and not (_finite(t.grad_clip) and t.grad_clip > 0):
        errors.append(f"train.grad_clip = {t.grad_clip!r} must be a finite number > 0, or null (no clipping)")
    if t.checkpointing not in CHECKPOINTING:
        errors.append(f"train.checkpointing = {t.checkpointing!r} must be one of {', '.join(CHECKPOINTING)}")
    if not 0 <= t.seed < 2**64:
        errors.append(f"train.seed = {t.seed!r} must be in [0, 2**64)")
    return errors


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _field_types() -> dict[str, Any]:
    """Map every dotted key (``train.epochs``) and top-level scalar to its annotated type."""
    types_: dict[str, Any] = {}
    top = typing.get_type_hints(RunConfig)
    for name, tp in top.items():
        if name not in _SECTIONS:
            types_[name] = tp
    for section, klass in _SECTIONS.items():
        for name, tp in typing.get_type_hints(klass).items():
            types_[f"{section}.{name}"] = tp
    return types_


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against ``tp`` (int/float/bool/str, Optional, list, tuple), converting
    losslessly where JSON cannot express the type (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(
                _coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
    name = getattr(tp, "__name__", None) or str(tp)
    raise ValueError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], parse_strings: bool = True) -> RunConfig:
    """Return a validated copy of ``cfg`` with dotted keys replaced, e.g. ``{"train.epochs": 5}``.

    Unknown keys raise ValueError naming them and listing the valid ones.  With
    ``parse_strings`` (the default, for command-line values) a string given for a non-string
    field is parsed as JSON first, so ``"5"``, ``"[10, 10, 2, 2]"`` and ``"null"`` work.
    """
    known = _field_types()
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(known)}"
        )
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        tp = known[key]
        if parse_strings and isinstance(value, str) and tp is not str:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"{key}: cannot parse {value!r} as JSON") from err
        value = _coerce(key, value, tp)
        target = out
        *path, leaf = key.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, leaf, value)
    out.validate()
    return out


def load_config(name_or_path: str | Path) -> RunConfig:
    """Load a built-in preset (``tiny``, ``v2-32k``/``40k``/``48k``, ``v1-32k``/``40k``/``48k``) or a JSON
    file written by :meth:`RunConfig.to_dict`."""
    text: str
    if str(name_or_path) in BUILTIN_CONFIGS:
        text = (resources.files("arvc") / "configs" / f"{name_or_path}.json").read_text()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(
                f"{str(name_or_path)!r} is neither a built-in config "
                f"({', '.join(BUILTIN_CONFIGS)}) nor a file"
            )
        text = path.read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name_or_path}: invalid JSON ({err})") from err
    return RunConfig.from_dict(raw)


def rvc_config_list(cfg: RunConfig) -> list:
    """The 18-entry ``config`` list RVC stores in inference ``.pth`` files, in RVC's order.

    It is the positional argument list of RVC's ``SynthesizerTrnMs768NSFsid``; the second
    entry is always 32 in RVC-written files (see ``RVC_CONFIG_SEGMENT_ENTRY``).
    """
    m = cfg.model
    return [
        cfg.spec_channels,
        RVC_CONFIG_SEGMENT_ENTRY,
        m.inter_channels,
        m.hidden_channels,
        m.filter_channels,
        m.n_heads,
        m.n_layers,
        m.kernel_size,
        m.p_dropout,
        m.resblock,
        list(m.resblock_kernel_sizes),
        [list(d) for d in m.resblock_dilation_sizes],
        list(m.upsample_rates),
        m.upsample_initial_channel,
        list(m.upsample_kernel_sizes),
        m.spk_embed_dim,
        m.gin_channels,
        cfg.data.sampling_rate,
    ]


_RVC_SR_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}


def config_from_rvc_list(values: list, version: str = "v2", feature_dim: int | None = None) -> RunConfig:
    """Rebuild a :class:`RunConfig` from an RVC inference file's ``config`` list.

    The list lacks the mel, segment and discriminator settings, so those come from the
    built-in preset with the same sample rate (``v2-40k`` if none matches, with
    ``hop_length = sr // 100`` as RVC always uses).  ``feature_dim`` defaults to 768 for v2
    and 256 for v1; pass the width of ``enc_p.emb_phone.weight`` for anything else.
    """
    if len(values) != 18:
        raise ValueError(f"an RVC config list has 18 entries, got {len(values)}")
    sr = values[17]
    sr = _RVC_SR_NAMES.get(sr, sr) if isinstance(sr, str) else int(sr)
    preset = {32000: "v2-32k", 40000: "v2-40k", 48000: "v2-48k"}.get(sr, "v2-40k")
    base = load_config(preset)
    spec_channels = int(values[0])
    keys = [
        "model.inter_channels",
        "model.hidden_channels",
        "model.filter_channels",
        "model.n_heads",
        "model.n_layers",
        "model.kernel_size",
        "model.p_dropout",
        "model.resblock",
        "model.resblock_kernel_sizes",
        "model.resblock_dilation_sizes",
        "model.upsample_rates",
        "model.upsample_initial_channel",
        "model.upsample_kernel_sizes",
        "model.spk_embed_dim",
        "model.gin_channels",
    ]
    overrides: dict[str, Any] = dict(zip(keys, values[2:17], strict=True))
    hop = math.prod(values[12])
    overrides.update(
        {
            "name": f"rvc-{version}-{sr // 1000}k",
            "version": version,
            "data.sampling_rate": sr,
            "data.filter_length": (spec_channels - 1) * 2,
            "data.win_length": (spec_channels - 1) * 2,
            "data.hop_length": hop,
            "data.feature_dim": feature_dim or (768 if version == "v2" else 256),
            "data.segment_size": base.data.segment_size // base.data.hop_length * hop,
        }
    )
    if version == "v1":
        overrides["model.disc_periods"] = [2, 3, 5, 7, 11, 17]
    return apply_overrides(base, overrides, parse_strings=False)
