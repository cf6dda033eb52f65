"""`arvc merge`: RVC's merge bit for bit, weighted lists, and the refusals, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rvcfiles import (
    cli_fails,
    merge_case_config,
    patterned_rvc_file,
    rvc_file,
    small_rvc_config,
    tensor_digest,
)
from safetensors.torch import load_file
from typer.testing import CliRunner

from arvc.cli import app
from arvc.config import load_config, rvc_config_list
from arvc.model import Synthesizer
from arvc.modelfile.export import export_generator
from arvc.modelfile.merge import MergeError, parse_weights

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


def _ok(args):
    result = runner.invoke(app, ["merge", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _fails(args, *texts):
    return cli_fails(["merge", *args], *texts)


def rvc_merge_reference(a: dict, b: dict, alpha1: float) -> dict:
    """RVC's process_ckpt.merge, written from its stated semantics (not arvc's code)."""
    out = {}
    for key in a:
        x, y = a[key], b[key]
        if key == "emb_g.weight" and x.shape != y.shape:
            rows = min(x.shape[0], y.shape[0])
            x, y = x[:rows], y[:rows]
        out[key] = (alpha1 * (x.float()) + (1 - alpha1) * (y.float())).half()
    return out


def _assert_bits(merged: dict, expected: dict) -> None:
    assert merged.keys() == expected.keys()
    for key, tensor in expected.items():
        assert merged[key].dtype == torch.float16, key
        assert torch.equal(merged[key].view(torch.int16), tensor.view(torch.int16)), key


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two RVC .pth voices of one structure, the second with fewer speakers (emb_g 3 vs 4 rows)."""
    folder = tmp_path_factory.mktemp("pair")
    a = rvc_file(folder / "a.pth", small_rvc_config(model__spk_embed_dim=4), seed=1)
    b = rvc_file(folder / "b.pth", small_rvc_config(model__spk_embed_dim=3), seed=2)
    return folder, a, b


def test_two_rvc_files_merge_to_rvcs_bits(pair, tmp_path):
    folder, a, b = pair
    out = tmp_path / "merged"
    result = _ok([folder / "a.pth", folder / "b.pth", "--ratio", "0.3", "-o", out])
    assert "merged 0.3 x" in result.output
    saved = torch.load(out / "model_rvc.pth", weights_only=True)
    expected = rvc_merge_reference(a, b, 0.3)
    _assert_bits(saved["weight"], expected)
    assert saved["weight"]["emb_g.weight"].shape[0] == 3  # cut to the fewer speakers
    assert (saved["sr"], saved["f0"], saved["version"]) == ("32k", 1, "v2")
    first = rvc_config_list(small_rvc_config(model__spk_embed_dim=4))
    assert saved["config"][:15] == first[:15] and saved["config"][16:] == first[16:]  # RVC: the first's
    assert saved["config"][15] == 3  # the speaker count the merged weights have
    # the safetensors file holds the same values (fp32 of the fp16 result), model.json the sources
    _assert_bits({k: v.half() for k, v in load_file(out / "model.safetensors").items()}, expected)
    meta = json.loads((out / "model.json").read_text())
    assert [(s["path"].rsplit("/", 1)[-1], s["weight"]) for s in meta["merged_from"]] == [
        ("a.pth", 0.3),
        ("b.pth", 0.7),
    ]
    assert meta["info"].startswith("arvc merge: 0.3 x a.pth + 0.7 x b.pth")
    assert meta["f0"] == 1  # pitch-guided, as the .pth says


def test_ratio_one_is_the_first_model_in_half_precision(pair, tmp_path):
    folder, a, _ = pair
    torch.manual_seed(5)
    cfg = small_rvc_config(model__spk_embed_dim=4)
    net = Synthesizer(cfg)  # an arvc export in fp32 as the first model
    export_generator(net, cfg, tmp_path / "export", features="hubert")
    _ok([tmp_path / "export", folder / "a.pth", "--ratio", "1", "-o", tmp_path / "out"])
    merged = torch.load(tmp_path / "out" / "model_rvc.pth", weights_only=True)["weight"]
    own = {k: v.half() for k, v in net.state_dict().items() if not k.startswith("enc_q.")}
    _assert_bits(merged, own)


def test_three_models_weighted(pair, tmp_path):
    folder, a, b = pair
    c = rvc_file(tmp_path / "c.pth", small_rvc_config(model__spk_embed_dim=4), seed=3)
    out = tmp_path / "out"
    _ok([folder / "a.pth", folder / "b.pth", tmp_path / "c.pth", "--weights", "0.5,0.3,0.2", "-o", out])
    merged = torch.load(out / "model_rvc.pth", weights_only=True)["weight"]
    expected = {}
    for key in a:
        x, y, z = (t[key][:3] if key == "emb_g.weight" else t[key] for t in (a, b, c))
        expected[key] = (0.5 * x.float() + 0.3 * y.float() + 0.2 * z.float()).half()
    _assert_bits(merged, expected)


def test_merged_mel_model_converts_with_infer(tmp_path):
    """An arvc export with an arvc checkpoint (its enc_q dropped), into a folder an older export used."""
    cfg = load_config("tiny")
    torch.manual_seed(1)
    export_generator(Synthesizer(cfg), cfg, tmp_path / "one", features="mel")
    torch.manual_seed(2)
    checkpoint = {
        "format": "arvc-checkpoint",
        "config": cfg.to_dict(),
        "generator": Synthesizer(cfg).state_dict(),
    }
    torch.save(checkpoint, tmp_path / "two.pt")
    (tmp_path / "out" / "model_rvc.pth").parent.mkdir()
    (tmp_path / "out" / "model_rvc.pth").write_bytes(b"an older export's file")
    _ok([tmp_path / "one", tmp_path / "two.pt", "-o", tmp_path / "out", "--overwrite"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((tmp_path / "out" / "model.json").read_text())["features"] == "mel"
    t = np.arange(8000) / 16000
    sf.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    result = runner.invoke(
        app, ["infer", str(tmp_path / "out"), str(tmp_path / "in.wav"), str(tmp_path / "o.wav")]
    )
    assert result.exit_code == 0, result.output
    audio, sr = sf.read(tmp_path / "o.wav")
    assert sr == 16000 and len(audio) == 8000 and np.isfinite(audio).all()


REFUSALS = [  # (second model's changes, its rvc_file arguments, words of the error)
    ({}, {"sr": "40k"}, ["different sample rate", "32000 Hz", "40000 Hz"]),
    ({"data__feature_dim": 256}, {"version": "v1"}, ["different version", "is v2", "is v1"]),
    ({}, {"f0": 0}, ["different pitch guidance", "f0=1", "f0=0"]),
    ({"data__feature_dim": 512}, {}, ["different feature width", "768-d", "512-d"]),
    ({"model__n_layers": 3}, {}, ["different structure", "enc_p.encoder"]),
    ({"model__hidden_channels": 32}, {}, ["different sizes"]),
]


@pytest.mark.parametrize(("changes", "kwargs", "words"), REFUSALS, ids=lambda v: str(v)[:30])
def test_models_of_another_kind_are_refused_before_writing(pair, tmp_path, changes, kwargs, words):
    folder, _, _ = pair
    rvc_file(tmp_path / "other.pth", small_rvc_config(**changes), seed=4, **kwargs)
    _fails([folder / "a.pth", tmp_path / "other.pth", "-o", tmp_path / "out"], *words, "nothing was written")
    assert not (tmp_path / "out").exists()


def test_models_without_pitch_guidance_merge_as_rvc_merges_them(pair, tmp_path):
    """Two f0=0 ("nono") RVC files merge into RVC's nono layout, recorded as f0=0 in every file; arvc
    inspect reads the result, arvc infer refuses it as it refuses every f0=0 model; f0 with f0=0 stays
    refused in either order."""
    cfg = small_rvc_config(model__spk_embed_dim=4)
    a = rvc_file(tmp_path / "a.pth", cfg, seed=1, f0=0)
    b = rvc_file(tmp_path / "b.pth", cfg, seed=2, f0=0)
    assert "enc_p.emb_pitch.weight" not in a and not any(k.startswith("dec.m_source") for k in a)
    n = sum(t.numel() for t in a.values())
    out = tmp_path / "merged"
    _ok([tmp_path / "a.pth", tmp_path / "b.pth", "--ratio", "0.4", "-o", out])
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors", "model_rvc.pth"]
    saved = torch.load(out / "model_rvc.pth", weights_only=True)
    expected = rvc_merge_reference(a, b, 0.4)
    _assert_bits(saved["weight"], expected)
    assert (saved["sr"], saved["f0"], saved["version"]) == ("32k", 0, "v2")
    _assert_bits({k: v.half() for k, v in load_file(out / "model.safetensors").items()}, expected)
    assert json.loads((out / "model.json").read_text())["f0"] == 0
    for path in (out, out / "model_rvc.pth"):
        result = runner.invoke(app, ["inspect", str(path), "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert (info["f0"], info["version"], info["sample_rate"], info["parameters"]) == (0, "v2", 32000, n)
    t = np.arange(8000) / 16000
    sf.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    result = runner.invoke(app, ["infer", str(out), str(tmp_path / "in.wav"), str(tmp_path / "o.wav")])
    assert result.exit_code == 1 and "without pitch guidance" in " ".join(result.output.split())
    assert not (tmp_path / "o.wav").exists()
    folder, _, _ = pair  # a.pth there has pitch guidance
    for first, second in ((tmp_path / "a.pth", folder / "a.pth"), (folder / "a.pth", tmp_path / "a.pth")):
        _fails([first, second, "-o", tmp_path / "mixed"], "different pitch guidance", "nothing was written")
    assert not (tmp_path / "mixed").exists()


def test_mel_and_hubert_models_are_refused(pair, tmp_path):
    folder, _, _ = pair
    cfg = small_rvc_config(model__spk_embed_dim=4)
    export_generator(Synthesizer(cfg), cfg, tmp_path / "mel", features="mel")
    _fails([tmp_path / "mel", folder / "a.pth", "-o", tmp_path / "out"], "content features", "mel", "hubert")
    assert not (tmp_path / "out").exists()


def test_weights_beyond_fp16_are_refused_not_blamed_on_training(tmp_path):
    cfg = load_config("tiny")
    net = Synthesizer(cfg)
    with torch.no_grad():
        net.emb_g.weight[0, 0] = 1e6  # fine in the fp32 export, inf in RVC's fp16
    export_generator(net, cfg, tmp_path / "big", features="mel")
    export_generator(Synthesizer(cfg), cfg, tmp_path / "small", features="mel")
    flat = _fails(
        [tmp_path / "big", tmp_path / "small", "-o", tmp_path / "out"], "not finite in fp16", "emb_g"
    )
    assert "Training diverged" not in flat and not (tmp_path / "out").exists()


def test_output_and_weight_errors(pair, tmp_path):
    folder, _, _ = pair
    a, b = folder / "a.pth", folder / "b.pth"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    _fails([a, b, "-o", tmp_path / "full"], "exists and is not empty", "--overwrite")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    _fails([a, b, "-o", tmp_path / "merged.pth"], "names a file; pass a folder")
    _fails([a, b, "--ratio", "1.5", "-o", tmp_path / "o"], "--ratio must be within 0..1", "1.5")
    _fails([a, b, "--weights", "0.5,0.6", "-o", tmp_path / "o"], "must sum to 1", "1.1")
    _fails([a, b, "--weights", "0.5", "-o", tmp_path / "o"], "1 values for 2 models")
    _fails([a, b, a, "--ratio", "0.5", "-o", tmp_path / "o"], "for 3 models give --weights")
    _fails([a, "-o", tmp_path / "o"], "at least two models")
    _fails([a, tmp_path / "none.pth", "-o", tmp_path / "o"], "does not exist")
    assert not (tmp_path / "o").exists()


def test_parse_weights_defaults():
    assert parse_weights(2) == [0.5, 0.5]
    assert parse_weights(2, ratio=0.3) == [0.3, 1 - 0.3]
    assert parse_weights(4) == [0.25] * 4
    with pytest.raises(MergeError, match="not both"):
        parse_weights(2, ratio=0.5, weights="0.5,0.5")
    with pytest.raises(MergeError, match="not a comma-separated list"):
        parse_weights(2, weights="half,half")


RVC_MERGE = json.loads((Path(__file__).parent / "fixtures" / "rvc_merge.json").read_text())


@pytest.mark.parametrize("case", RVC_MERGE["cases"], ids=lambda case: case["name"])
def test_arvc_merge_is_rvcs_own_merge_bit_for_bit(case, tmp_path):
    """`arvc merge --ratio` against what RVC's own ``process_ckpt.merge`` wrote for the same two files
    (fixtures/rvc_merge.json, recorded by running RVC's code: fixtures/make_rvc_merge.py): every tensor's
    bytes, in RVC's key order, and the fields RVC writes. RVC's "info" is its user's text, arvc's says what
    was merged; RVC's config keeps the first model's speaker count where arvc's has the merged weights'
    (the one documented difference: cases v2-speakers, v2-nono). Case v2-nono: two models without pitch
    guidance (f0=0), which RVC saves with "f0": 0."""
    paths = []
    for index, (spk, seed) in enumerate(zip(case["spk"], case["seeds"], strict=True)):
        paths.append(tmp_path / f"{index}.pth")
        config = merge_case_config(case, spk)
        patterned_rvc_file(paths[-1], config, seed=seed, version=case["version"], f0=case.get("f0", 1))
    _ok([*paths, "--ratio", case["alpha"], "-o", tmp_path / "out"])
    saved = torch.load(tmp_path / "out" / "model_rvc.pth", map_location="cpu", weights_only=True)
    assert list(saved["weight"]) == list(case["weights"])  # the same tensors in the same order
    assert {key: tensor_digest(value) for key, value in saved["weight"].items()} == case["weights"]
    rvc = case["fields"]
    assert (saved["sr"], saved["f0"], saved["version"]) == (rvc["sr"], rvc["f0"], rvc["version"])
    speakers = 15  # spk_embed_dim's place in RVC's config list
    assert saved["config"][:speakers] + saved["config"][speakers + 1 :] == (
        rvc["config"][:speakers] + rvc["config"][speakers + 1 :]
    )
    assert saved["config"][speakers] == min(case["spk"])
    assert rvc["config"][speakers] == case["spk"][0]
