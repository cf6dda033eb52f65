"""Run configuration: presets equal RVC's, overrides are validated, round trips are lossless."""

from __future__ import annotations

import json

import pytest

from arvc.config import (
    BUILTIN_CONFIGS,
    RunConfig,
    apply_overrides,
    config_from_rvc_list,
    load_config,
    rvc_config_list,
)

# Values from RVC's configs/v2/32k.json, configs/v1/40k.json (RVC's v2 40k file) and
# configs/v2/48k.json; segment_size is RVC's train.segment_size.
_RVC_MODEL_COMMON = {
    "inter_channels": 192,
    "hidden_channels": 192,
    "filter_channels": 768,
    "n_heads": 2,
    "n_layers": 6,
    "kernel_size": 3,
    "p_dropout": 0,
    "resblock": "1",
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "upsample_initial_channel": 512,
    "use_spectral_norm": False,
    "gin_channels": 256,
    "spk_embed_dim": 109,
}
RVC = {
    "v2-32k": (
        dict(
            sampling_rate=32000,
            filter_length=1024,
            hop_length=320,
            win_length=1024,
            n_mel_channels=80,
            mel_fmin=0.0,
            mel_fmax=None,
            segment_size=12800,
        ),
        dict(_RVC_MODEL_COMMON, upsample_rates=[10, 8, 2, 2], upsample_kernel_sizes=[20, 16, 4, 4]),
    ),
    "v2-40k": (
        dict(
            sampling_rate=40000,
            filter_length=2048,
            hop_length=400,
            win_length=2048,
            n_mel_channels=125,
            mel_fmin=0.0,
            mel_fmax=None,
            segment_size=12800,
        ),
        dict(_RVC_MODEL_COMMON, upsample_rates=[10, 10, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4]),
    ),
    "v2-48k": (
        dict(
            sampling_rate=48000,
            filter_length=2048,
            hop_length=480,
            win_length=2048,
            n_mel_channels=128,
            mel_fmin=0.0,
            mel_fmax=None,
            segment_size=17280,
        ),
        dict(_RVC_MODEL_COMMON, upsample_rates=[12, 10, 2, 2], upsample_kernel_sizes=[24, 20, 4, 4]),
    ),
}

# The "config" lists RVC's train/process_ckpt.py (extract_small_model) writes for v2 models.
_RVC_LIST_TAIL = [192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]]]
RVC_LISTS = {
    "v2-32k": [513, 32, *_RVC_LIST_TAIL, [10, 8, 2, 2], 512, [20, 16, 4, 4], 109, 256, 32000],
    "v2-40k": [1025, 32, *_RVC_LIST_TAIL, [10, 10, 2, 2], 512, [16, 16, 4, 4], 109, 256, 40000],
    "v2-48k": [1025, 32, *_RVC_LIST_TAIL, [12, 10, 2, 2], 512, [24, 20, 4, 4], 109, 256, 48000],
}


@pytest.mark.parametrize("name", BUILTIN_CONFIGS)
def test_builtins_load_and_validate(name):
    cfg = load_config(name)
    assert cfg.name == name and cfg.version == ("v1" if name.startswith("v1") else "v2")
    cfg.validate()
    assert cfg.segment_frames * cfg.data.hop_length == cfg.data.segment_size


@pytest.mark.parametrize("name", sorted(RVC))
def test_v2_presets_equal_rvc(name):
    cfg = load_config(name)
    data, model = RVC[name]
    for key, value in data.items():
        assert getattr(cfg.data, key) == value, key
    for key, value in model.items():
        assert getattr(cfg.model, key) == value, key
    assert cfg.data.feature_dim == 768
    assert cfg.model.disc_periods == [2, 3, 5, 7, 11, 17, 23, 37] and cfg.model.disc_channel_div == 1
    t = cfg.train
    assert (t.betas, t.eps, t.lr_decay, t.c_mel, t.c_kl, t.c_fm, t.seed) == (
        (0.8, 0.99),
        1e-9,
        0.999875,
        45,
        1.0,
        2.0,
        1234,
    )


def test_tiny_is_small_and_consistent():
    cfg = load_config("tiny")
    assert cfg.data.hop_length * 100 == cfg.data.sampling_rate  # RVC's 100 f0 frames per second
    assert cfg.data.feature_dim == 80 and cfg.model.n_layers == 2 and cfg.model.disc_channel_div > 1


def test_overrides_apply_to_a_copy():
    cfg = load_config("v2-40k")
    new = apply_overrides(cfg, {"train.epochs": 5, "model.hidden_channels": 96, "train.learning_rate": 2e-4})
    assert (new.train.epochs, new.model.hidden_channels, new.train.learning_rate) == (5, 96, 2e-4)
    assert (cfg.train.epochs, cfg.model.hidden_channels, cfg.train.learning_rate) == (300, 192, None)


def test_overrides_parse_command_line_strings():
    cfg = apply_overrides(
        load_config("tiny"),
        {
            "train.epochs": "7",
            "train.grad_clip": "1.5",
            "data.mel_fmax": "null",
            "train.betas": "[0.5, 0.9]",
            "model.resblock": "2",
            "model.resblock_dilation_sizes": "[[1, 3], [1, 3], [1, 3]]",
            "name": "mine",
        },
    )
    assert cfg.train.epochs == 7 and cfg.train.grad_clip == 1.5 and cfg.data.mel_fmax is None
    assert cfg.train.betas == (0.5, 0.9) and cfg.model.resblock == "2" and cfg.name == "mine"


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match="train.epoch'") as err:
        apply_overrides(load_config("tiny"), {"train.epoch": 3})
    assert "train.epochs" in str(err.value) and "model.hidden_channels" in str(err.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("train.epochs", 2.5),
        ("train.epochs", True),
        ("train.epochs", "abc"),
        ("train.learning_rate", "fast"),
        ("model.upsample_rates", [10, "x"]),
        ("train.betas", [0.9]),
        ("model.resblock", 1),
        ("model.use_spectral_norm", 1),
    ],
)
def test_overrides_reject_wrong_types(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        apply_overrides(load_config("tiny"), {key: value}, parse_strings=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.hop_length": 200}, "upsample_rates"),
        ({"data.hop_length": 0}, "data.hop_length = 0 must be an integer >= 1"),
        ({"data.segment_size": 5000}, "segment_size"),
        ({"model.n_heads": 3}, "n_heads"),
        ({"model.disc_channel_div": 3}, "disc_channel_div"),
        ({"model.upsample_kernel_sizes": [21, 8, 4, 4]}, "upsample kernel"),
    ],
)
def test_inconsistent_settings_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(load_config("tiny"), overrides)


@pytest.mark.parametrize("name", BUILTIN_CONFIGS)
def test_dict_round_trip(name, tmp_path):
    cfg = load_config(name)
    d = cfg.to_dict()
    assert RunConfig.from_dict(json.loads(json.dumps(d))) == cfg
    path = tmp_path / "run.json"
    path.write_text(json.dumps(d))
    assert load_config(path) == cfg
    assert load_config(str(path)) == cfg


def test_from_dict_rejects_unknown_sections_and_fields():
    with pytest.raises(ValueError, match="'optim'"):
        RunConfig.from_dict({"optim": {"lr": 1}})
    with pytest.raises(ValueError, match="data.max_wav_value"):
        RunConfig.from_dict({"data": {"max_wav_value": 32768.0}})


def test_load_config_unknown_name():
    with pytest.raises(ValueError, match="v2-40k"):
        load_config("v3-40k")


@pytest.mark.parametrize("name", sorted(RVC_LISTS))
def test_rvc_list_matches_rvc_export(name):
    assert rvc_config_list(load_config(name)) == RVC_LISTS[name]


@pytest.mark.parametrize("name", sorted(RVC_LISTS))
def test_rvc_list_round_trip(name):
    cfg = load_config(name)
    back = config_from_rvc_list(rvc_config_list(cfg))
    assert back.data == cfg.data and back.model == cfg.model
    assert rvc_config_list(back) == RVC_LISTS[name]


def test_rvc_list_round_trip_custom_model():
    cfg = load_config("tiny")
    back = config_from_rvc_list(rvc_config_list(cfg), feature_dim=cfg.data.feature_dim)
    for key in ("sampling_rate", "filter_length", "hop_length", "win_length", "feature_dim"):
        assert getattr(back.data, key) == getattr(cfg.data, key), key
    skip = {"disc_channel_div"}  # not stored by RVC
    for key, value in vars(cfg.model).items():
        if key not in skip:
            assert getattr(back.model, key) == value, key
    assert rvc_config_list(back) == rvc_config_list(cfg)


def test_rvc_list_accepts_sample_rate_names_and_v1():
    values = list(RVC_LISTS["v2-40k"])
    values[-1] = "40k"
    cfg = config_from_rvc_list(values, version="v1")
    assert cfg.data.sampling_rate == 40000 and cfg.data.feature_dim == 256
    assert cfg.model.disc_periods == [2, 3, 5, 7, 11, 17]
    with pytest.raises(ValueError, match="18"):
        config_from_rvc_list(values[:-1])
