"""Generator/discriminator: RVC state-dict layout, shapes, determinism, weight-norm folding.

The fixtures list every state-dict key and shape (in order) of RVC's
``SynthesizerTrnMs768NSFsid`` / ``MultiPeriodDiscriminatorV2`` (v2) and ``SynthesizerTrnMs256NSFsid`` /
``MultiPeriodDiscriminator`` (v1), dumped by instantiating RVC's own model code
(RVC-Project/Retrieval-based-Voice-Conversion-WebUI, infer/module/models.py).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from arvc.config import load_config
from arvc.model import (
    MultiPeriodDiscriminator,
    Synthesizer,
    count_parameters,
    rand_slice_segments,
    slice_segments,
)
from arvc.model.attentions import _band_to_full, _full_to_band
from arvc.model.nsf import SineGen
from arvc.train.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss, kl_loss

FIXTURES = Path(__file__).parent / "fixtures"
V2 = ["v2-32k", "v2-40k", "v2-48k"]
RVC_PRESETS = [*V2, "v1-32k", "v1-40k", "v1-48k"]  # fixtures dumped from RVC's own model classes


def _fixture(name: str, tag: str) -> dict:
    return json.loads((FIXTURES / f"{name}_{tag}_keys.json").read_text())


def _meta_models(name: str) -> tuple[Synthesizer, MultiPeriodDiscriminator]:
    cfg = load_config(name)
    with torch.device("meta"):
        return Synthesizer(cfg), MultiPeriodDiscriminator(cfg)


def _batch(cfg, batch: int = 2, frames: int = 48):
    d = cfg.data
    lengths = torch.tensor([frames] + [frames - 5] * (batch - 1))
    pitchf = torch.rand(batch, frames) * 250 + 80
    pitchf[:, 3:7] = 0  # an unvoiced stretch
    return dict(
        phone=torch.randn(batch, frames, d.feature_dim),
        phone_lengths=lengths,
        pitch=torch.randint(1, 256, (batch, frames)),
        pitchf=pitchf,
        spec=torch.rand(batch, cfg.spec_channels, frames),
        spec_lengths=lengths,
        sid=torch.arange(batch),
    )


@pytest.mark.parametrize("name", RVC_PRESETS)
@pytest.mark.parametrize("tag", ["G", "D"])
def test_state_dict_layout_equals_rvc(name, tag):
    g, d = _meta_models(name)
    model = g if tag == "G" else d
    mine = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    expected = [[k, s] for k, s in _fixture(name, tag)["keys"].items()]
    assert {k for k, _ in mine} == {k for k, _ in expected}
    assert mine == expected  # same shapes and same order (so RVC optimizer states line up too)


@pytest.mark.parametrize("name", RVC_PRESETS)
def test_strict_load_of_rvc_layout(name):
    g, d = _meta_models(name)
    for model, tag in ((g, "G"), (d, "D")):
        state = {k: torch.randn(s) * 0.01 for k, s in _fixture(name, tag)["keys"].items()}
        result = model.load_state_dict(state, strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert all(p.device.type == "cpu" for p in model.parameters())


def test_parameter_counts_match_rvc_40k():
    g, d = _meta_models("v2-40k")
    fix = _fixture("v2-40k", "G")
    assert count_parameters(g) == fix["num_params"]
    assert abs(count_parameters(g) / 36.46e6 - 1) < 0.01
    assert abs(count_parameters(d) / 71.41e6 - 1) < 0.01
    without_q = count_parameters(g) - count_parameters(g.enc_q)
    assert without_q == fix["num_params_without_enc_q"] and abs(without_q / 27.54e6 - 1) < 0.01
    assert count_parameters(d) == _fixture("v2-40k", "D")["num_params"]


def test_real_v2_40k_inference_shape():
    cfg = load_config("v2-40k")
    g = Synthesizer(cfg).eval()
    b = _batch(cfg, batch=1, frames=6)
    audio = g.infer(b["phone"], b["phone_lengths"], b["pitch"], b["pitchf"], b["sid"])
    assert audio.shape == (1, 1, 6 * cfg.data.hop_length) and torch.isfinite(audio).all()


def test_tiny_forward_backward():
    cfg = load_config("tiny")
    g, d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    b = _batch(cfg, batch=2, frames=48)
    audio, ids, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q) = g(**b)
    seg, hop, c = cfg.segment_frames, cfg.data.hop_length, cfg.model.inter_channels
    assert audio.shape == (2, 1, seg * hop)
    assert ids.shape == (2,) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and all(
        int(i) + seg <= int(n) for i, n in zip(ids, b["spec_lengths"], strict=True)
    )
    assert x_mask.shape == z_mask.shape == (2, 1, 48)
    assert x_mask[1, 0, 43:].sum() == 0 and x_mask[1, 0, :43].all()
    for t in (z, z_p, m_p, logs_p, m_q, logs_q):
        assert t.shape == (2, c, 48) and torch.isfinite(t).all()
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1

    y = torch.randn_like(audio) * 0.1
    y_d_r, y_d_g, fmap_r, fmap_g = d(y, audio)
    assert len(y_d_r) == len(y_d_g) == 1 + len(cfg.model.disc_periods)
    loss = (
        generator_adversarial_loss(y_d_g)[0]
        + 2 * feature_matching_loss(fmap_r, fmap_g)
        + kl_loss(z_p, logs_q, m_p, logs_p, z_mask)
        + (audio - y).abs().mean()
    )
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in g.named_parameters() if p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in g.parameters())
    d_loss = discriminator_loss(*d(y, audio.detach())[:2])[0]
    d.zero_grad()
    d_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())


def test_seeded_forward_is_reproducible():
    cfg = load_config("tiny")
    torch.manual_seed(1)
    g = Synthesizer(cfg)
    b = _batch(cfg, batch=3, frames=40)

    def run(seed):
        torch.manual_seed(seed)
        out = g(**b)
        return out[0], out[1], out[4][0]

    a1, i1, z1 = run(7)
    a2, i2, z2 = run(7)
    assert torch.equal(a1, a2) and torch.equal(i1, i2) and torch.equal(z1, z2)
    a3, _, z3 = run(8)
    assert not torch.equal(z1, z3) and not torch.equal(a1, a3)


def test_infer_shape_and_weight_norm_removal():
    cfg = load_config("tiny")
    g = Synthesizer(cfg).eval()
    b = _batch(cfg, batch=2, frames=30)
    args = (b["phone"], b["phone_lengths"], b["pitch"], b["pitchf"], b["sid"])
    torch.manual_seed(3)
    before = g.infer(*args)
    assert before.shape == (2, 1, 30 * cfg.data.hop_length)
    assert any(k.endswith("weight_g") for k in g.state_dict())
    g.remove_weight_norm()
    keys = list(g.state_dict())
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys)
    assert "dec.ups.0.weight" in keys and "flow.flows.0.enc.in_layers.0.weight" in keys
    torch.manual_seed(3)
    after = g.infer(*args)
    assert torch.allclose(before, after, atol=1e-5, rtol=0)


def test_models_deepcopy_after_training_forward():
    """A forward with a graph caches nothing on the modules (weight norm computes its weight inside forward;
    the legacy hook's cached non-leaf weight makes deepcopy raise): the models still copy, into equal models
    that own their parameters and compute what the originals do (training tests step on such copies)."""
    cfg = load_config("tiny")
    g, d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    batch = _batch(cfg)
    audio = g(**batch)[0]
    d(audio.detach(), audio)
    g_copy, d_copy = copy.deepcopy(g), copy.deepcopy(d)
    for model, twin in ((g, g_copy), (d, d_copy)):
        ours, theirs = model.state_dict(), twin.state_dict()
        assert list(theirs) == list(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
        shared = {p.data_ptr() for p in model.parameters()} & {p.data_ptr() for p in twin.parameters()}
        assert not shared, "the copy owns its parameters"
    outputs = []
    for generator, discriminator in ((g, d), (g_copy, d_copy)):
        torch.manual_seed(5)  # the posterior sample and the NSF noise
        fake = generator(**batch)[0]
        outputs.append([fake, *discriminator(audio.detach(), fake)[1]])
    assert all(torch.equal(a, b) for a, b in zip(*outputs, strict=True))


def test_discriminator_joint_pass_equals_separate_passes():
    cfg = load_config("tiny")
    d = MultiPeriodDiscriminator(cfg)
    y, y_hat = torch.randn(2, 1, 1000), torch.randn(2, 1, 1000)
    joint = d(y, y_hat)
    for i, disc in enumerate(d.discriminators):
        r, fr = disc(y)
        f, ff = disc(y_hat)
        assert torch.allclose(joint[0][i], r, atol=1e-6) and torch.allclose(joint[1][i], f, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(joint[2][i], fr, strict=True))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(joint[3][i], ff, strict=True))


def test_generator_phase_scores_the_real_wave_without_a_graph():
    """G's phase (D frozen): the real wave scored under no_grad in its own pass gives the same losses and
    the same gradient for the generated wave as the joint pass, without the real half in the graph.
    Tolerance: convolutions over a batch of B and of 2B may sum in another order (FMA-sized, 1e-6)."""
    from arvc.train.losses import feature_matching_loss, generator_adversarial_loss

    cfg = load_config("tiny")
    torch.manual_seed(0)
    d = MultiPeriodDiscriminator(cfg).requires_grad_(False)
    y = torch.randn(2, 1, 4000)

    def phase(real_graph):
        y_hat = torch.randn(2, 1, 4000, generator=torch.Generator().manual_seed(1)).requires_grad_()
        _, fake, fmap_real, fmap_fake = d(y, y_hat, real_graph=real_graph)
        loss = generator_adversarial_loss(fake)[0] + feature_matching_loss(fmap_real, fmap_fake)
        loss.backward()
        return loss.detach(), y_hat.grad, fmap_real

    loss_joint, grad_joint, fmap_joint = phase(True)
    loss_split, grad_split, fmap_split = phase(False)
    assert torch.allclose(loss_split, loss_joint, rtol=1e-6)
    assert torch.allclose(grad_split, grad_joint, rtol=1e-5, atol=1e-6 * grad_joint.abs().max().item())
    assert any(f.requires_grad for fmaps in fmap_joint for f in fmaps), (
        "the joint pass keeps real in the graph"
    )
    assert not any(f.requires_grad for fmaps in fmap_split for f in fmaps)


def test_relative_position_skews_match_brute_force():
    length, window = 7, 3
    rel = torch.randn(2, length, 2 * window + 1)
    full = _band_to_full(rel, window)
    p = torch.randn(2, length, length)
    band = _full_to_band(p, window)
    for i in range(length):
        for j in range(length):
            r = j - i + window
            assert (
                full[:, i, j].tolist() == (rel[:, i, r] if 0 <= r <= 2 * window else torch.zeros(2)).tolist()
            )
        for r in range(2 * window + 1):
            j = i + r - window
            assert band[:, i, r].tolist() == (p[:, i, j] if 0 <= j < length else torch.zeros(2)).tolist()
    # A window wider than the sequence (short utterances) also works.
    assert _band_to_full(torch.randn(1, 2, 21), 10).shape == (1, 2, 2)
    assert _full_to_band(torch.randn(1, 2, 2), 10).shape == (1, 2, 21)


def test_sine_source_is_the_expected_sine():
    sr, upp, f0 = 16000, 160, 200.0
    gen = SineGen(sr, noise_std=0.0)
    f0s = torch.full((1, 4), f0)
    f0s[0, 3] = 0.0
    sine, uv, _ = gen(f0s, upp)
    n = torch.arange(1, 3 * upp + 1, dtype=torch.float64)
    expected = 0.1 * torch.sin(2 * math.pi * f0 * n / sr)
    assert sine.shape == (1, 4 * upp, 1)
    assert torch.allclose(sine[0, : 3 * upp, 0].double(), expected, atol=1e-5)
    assert uv[0, :, 0].tolist() == [1.0] * (3 * upp) + [0.0] * upp
    assert 0.01 < float(sine[0, 3 * upp :].std()) < 0.06  # unvoiced: noise of std sine_amp / 3


def test_slicing_helpers():
    x = torch.arange(2 * 3 * 10).view(2, 3, 10)
    starts = torch.tensor([1, 6])
    out = slice_segments(x, starts, 4)
    assert torch.equal(out[0], x[0, :, 1:5]) and torch.equal(out[1], x[1, :, 6:10])
    assert torch.equal(slice_segments(x[:, 0], starts, 4), out[:, 0])
    torch.manual_seed(0)
    segs, ids = rand_slice_segments(x.float(), torch.tensor([10, 5]), 4)
    assert 0 <= int(ids[0]) <= 6 and 0 <= int(ids[1]) <= 1
    assert torch.equal(segs, slice_segments(x.float(), ids, 4))
    _, ids = rand_slice_segments(x.float(), torch.tensor([2, 3]), 4)  # too short: start at 0
    assert ids.tolist() == [0, 0]


def test_count_parameters_trainable_only():
    cfg = load_config("tiny")
    g = Synthesizer(cfg)
    total = count_parameters(g)
    for p in g.enc_q.parameters():
        p.requires_grad_(False)
    assert count_parameters(g, trainable_only=True) == total - count_parameters(g.enc_q)


def test_training_noise_is_per_item_whatever_the_batch_split():
    """Under per_item_noise an item gets the same window, posterior sample and NSF noise in a batch of 4
    as in a batch of 2 with less padding (what makes a 2-process run match a 1-process run)."""
    from arvc.model.noise import per_item_noise

    cfg = load_config("tiny")
    torch.manual_seed(1)
    g = Synthesizer(cfg)
    b = _batch(cfg, batch=4, frames=48)  # lengths 48, 43, 43, 43
    b["sid"] = torch.zeros(4, dtype=torch.long)
    ids = [10, 11, 12, 13]

    def run(rows, frames):
        part = {k: v[rows] for k, v in b.items()}
        for k in ("phone", "pitch", "pitchf"):
            part[k] = part[k][:, :frames]
        part["spec"] = part["spec"][..., :frames]
        with per_item_noise(1234, 7, [ids[r] for r in rows]):
            audio, slice_ids, _, z_mask, (z, *_) = g(**part)
        return audio, slice_ids, z * z_mask

    whole = run([0, 1, 2, 3], 48)
    half = run([2, 3], 43)  # padded to 43 frames instead of 48
    assert torch.equal(whole[1][2:], half[1])
    assert torch.allclose(whole[2][2:, :, :43], half[2], atol=1e-5)
    assert torch.allclose(whole[0][2:], half[0], atol=1e-5)
    with per_item_noise(1234, 8, ids):  # another step: other noise
        assert not torch.allclose(g(**b)[0], whole[0], atol=1e-3)
