"""RVC WebUI's classic ``hubert_base.pt`` (a fairseq checkpoint), read without fairseq and without running
code from its pickle, converted once to the Hugging Face folder the ``hubert`` features load.

A fairseq checkpoint is a pickle of plain containers and tensors plus a few configuration objects
(``argparse.Namespace``, fairseq's string enums, omegaconf containers). Those are the only globals
allowed beyond torch's own: each becomes plain data (a dict, or its value), through
``torch.load(weights_only=True)`` with placeholder classes registered under their names. A pickle that
names anything else — a function to call, a class from another package, or a name under one of those
modules that is not a class of it (``argparse._os.system``) — is refused before it is read.

The weights are renamed to ``transformers.HubertModel``'s layout (plus ContentVec's ``final_proj``), the
config built from the checkpoint's model settings, and the result saved with ``save_pretrained`` (as
safetensors) in arvc's cache, keyed by the file's size and modification time.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
from pathlib import Path

import torch

__all__ = ["FairseqError", "convert_fairseq_hubert", "fairseq_to_hf_state", "read_fairseq_checkpoint"]

log = logging.getLogger(__name__)

CONFIG_MODULES = ("argparse.", "fairseq.", "omegaconf.", "enum.")


def _is_config_class(name: str) -> bool:
    """A global the pickle may name: a class (CapWords, as Namespace, ChoiceEnum, DictConfig, AnyNode) of
    a configuration module, reached through no private name. `argparse._os.system` is under argparse's
    name, but it is os.system, a function: refused with every name that is not such a class."""
    parts = name.split(".")
    return (
        name.startswith(CONFIG_MODULES)
        and len(parts) >= 2
        and all(part.isidentifier() and not part.startswith("_") for part in parts)
        and parts[-1][0].isupper()
    )


class FairseqError(ValueError):
    """The file is not a fairseq HuBERT checkpoint arvc can read; the message says why."""


class _Record:
    """Placeholder for a configuration object of the pickle: keeps its constructor arguments and state."""

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        record._args, record._state = args, {}
        return record

    def __setstate__(self, state) -> None:
        self._state = state


def _plain(value):
    """Placeholders to plain data: omegaconf nodes to their content, enums to values, objects to dicts."""
    if isinstance(value, _Record):
        state = value._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
        if isinstance(state, dict) and "_content" in state:  # omegaconf DictConfig / ListConfig
            return _plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:  # omegaconf value node
            return _plain(state["_val"])
        if isinstance(state, dict) and state:
            return {k: _plain(v) for k, v in state.items() if not str(k).startswith("_")}
        if len(value._args) == 1:  # an enum: its value
            return _plain(value._args[0])
        return [_plain(a) for a in value._args] if value._args else {}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def read_fairseq_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint as plain data (see the module doc); FairseqError for a pickle that needs code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FairseqError(f"HuBERT checkpoint {path} does not exist")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:
        raise FairseqError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {error})"
        ) from error
    refused = [name for name in names if not _is_config_class(name)]
    if refused:
        under = [name for name in refused if name.startswith(CONFIG_MODULES)]
        why = f"; {', '.join(under[:3])} is not a configuration class" if under else ""
        raise FairseqError(
            f"{path} would need code to load ({', '.join(refused[:3])}){why}; arvc only reads fairseq "
            "checkpoints made of tensors and configuration objects, and never runs code from a pickle"
        )
    try:
        with torch.serialization.safe_globals([(_Record, name) for name in names]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise FairseqError(f"{path} could not be read as a fairseq checkpoint ({error})") from error
    state = _plain(state)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        looks = ""
        if isinstance(state, dict) and any(str(k).startswith("unet.") for k in state):
            looks = " (it looks like an RMVPE pitch model: pass it as --rmvpe)"
        elif isinstance(state, dict) and "weight" in state:
            looks = " (it looks like an RVC voice model)"
        raise FairseqError(f"{path} is not a fairseq HuBERT checkpoint (no 'model' weights){looks}")
    return state


_LAYER_NAMES = {
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}


def fairseq_to_hf_state(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq HuBERT weight names to transformers' HubertModel names (+ final_proj); training-only
    tensors (label embeddings) are left out. An unknown name is an error: nothing is dropped silently."""
    out = {}
    for key, tensor in model.items():
        if key.startswith("label_embs") or key == "final_proj_label":
            continue
        if key == "mask_emb":
            name = "masked_spec_embed"
        elif m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", key):
            name = f"feature_extractor.conv_layers.{m[1]}.conv.{m[2]}"
        elif m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)", key):
            name = f"feature_extractor.conv_layers.{m[1]}.layer_norm.{m[2]}"
        elif m := re.fullmatch(r"post_extract_proj\.(weight|bias)", key):
            name = f"feature_projection.projection.{m[1]}"
        elif m := re.fullmatch(r"layer_norm\.(weight|bias)", key):
            name = f"feature_projection.layer_norm.{m[1]}"
        elif key == "encoder.pos_conv.0.bias":
            name = "encoder.pos_conv_embed.conv.bias"
        elif key == "encoder.pos_conv.0.weight_g":
            name = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
        elif key == "encoder.pos_conv.0.weight_v":
            name = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"
        elif m := re.fullmatch(r"encoder\.layer_norm\.(weight|bias)", key):
            name = f"encoder.layer_norm.{m[1]}"
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            if m[2] not in _LAYER_NAMES:
                raise FairseqError(f"unknown fairseq HuBERT weight {key}")
            name = f"encoder.layers.{m[1]}.{_LAYER_NAMES[m[2]]}.{m[3]}"
        elif m := re.fullmatch(r"final_proj\.(weight|bias)", key):
            name = key
        else:
            raise FairseqError(f"unknown fairseq HuBERT weight {key}")
        out[name] = tensor.float()
    return out


def _conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's conv_feature_layers string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", evaluated safely:
    only lists and tuples of integers joined by + and *."""

    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise FairseqError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")

    layers = value(ast.parse(spec, mode="eval"))
    return [tuple(layer) for layer in layers]


def hf_config(model_cfg: dict):
    """transformers.HubertConfig from a fairseq checkpoint's model settings (base-model defaults)."""
    from transformers import HubertConfig

    conv = _conv_layers(
        model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    )
    return HubertConfig(
        hidden_size=int(model_cfg.get("encoder_embed_dim", 768)),
        num_hidden_layers=int(model_cfg.get("encoder_layers", 12)),
        num_attention_heads=int(model_cfg.get("encoder_attention_heads", 12)),
        intermediate_size=int(model_cfg.get("encoder_ffn_embed_dim", 3072)),
        hidden_act=str(model_cfg.get("activation_fn", "gelu")),
        conv_dim=tuple(c[0] for c in conv),
        conv_kernel=tuple(c[1] for c in conv),
        conv_stride=tuple(c[2] for c in conv),
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        feat_extract_norm="group" if model_cfg.get("extractor_mode", "default") == "default" else "layer",
        do_stable_layer_norm=bool(model_cfg.get("layer_norm_first", False)),
        num_conv_pos_embeddings=int(model_cfg.get("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(model_cfg.get("conv_pos_groups", 16)),
        classifier_proj_size=int(model_cfg.get("final_dim", 256)),
        feat_proj_layer_norm=True,
    )


def _model_settings(state: dict) -> dict:
    cfg = state.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"]
    args = state.get("args")
    return args if isinstance(args, dict) else {}


def convert_fairseq_hubert(path: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """The Hugging Face folder of fairseq checkpoint `path` under `cache` (converted on first use)."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = Path(cache) / f"{path.stem}-{key}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    state = read_fairseq_checkpoint(path)
    weights = fairseq_to_hf_state(state["model"])
    config = hf_config(_model_settings(state))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    config.save_pretrained(folder)  # config.json last: a folder with it is complete
    log.info("converted the fairseq HuBERT checkpoint %s to %s", path, folder)
    return folder
