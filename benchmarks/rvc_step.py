"""arvc's training step beside RVC's own, on the same machine, interleaved in one process.

RVC's step is RVC WebUI's own networks and losses (its ``infer/module`` and ``train`` packages, from a
checkout you point to with ``--rvc``; nothing of it is part of arvc), driven in the order RVC's
``train.py`` runs them: G forward, D on real and detached fake, D update, D on real and fake, G losses,
G update, with ``torch.optim.AdamW`` as RVC builds it. arvc's step is ``arvc.train.step.GanStep`` with the
registry's AdamW. Both train the v2-40k architecture in fp32 on the same synthetic batch, and the two steps
alternate round by round so that both see the same machine; the result is the ratio of median step times.

librosa, which RVC imports only for its mel filterbank, is replaced by arvc's filterbank (the same Slaney
triangles) when it is not installed. Usage:

    python benchmarks/rvc_step.py --rvc ~/Retrieval-based-Voice-Conversion-WebUI --batch-sizes 1,4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from arvc.config import apply_overrides, load_config
from arvc.data.dataset import Batch
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.optim import build_optimizer
from arvc.train.step import GanStep


def _librosa_stub() -> None:
    """`from librosa.filters import mel` for RVC's mel_processing, without librosa."""
    try:
        import librosa  # noqa: F401

        return
    except ImportError:
        pass
    from arvc.audio.mel import mel_filterbank

    filters = types.ModuleType("librosa.filters")
    filters.mel = lambda sr, n_fft, n_mels, fmin, fmax: mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    librosa = types.ModuleType("librosa")
    librosa.filters = filters
    sys.modules.update({"librosa": librosa, "librosa.filters": filters})


def _batch(cfg, batch_size: int, frames: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    return Batch(
        phone=torch.randn(batch_size, frames, d.feature_dim, generator=g),
        phone_lengths=torch.full((batch_size,), frames),
        pitch=torch.randint(1, 255, (batch_size, frames), generator=g),
        pitchf=torch.rand(batch_size, frames, generator=g) * 200 + 100,
        spec=torch.rand(batch_size, d.filter_length // 2 + 1, frames, generator=g),
        spec_lengths=torch.full((batch_size,), frames),
        wave=torch.randn(batch_size, 1, frames * d.hop_length, generator=g) * 0.1,
        wave_lengths=torch.full((batch_size,), frames * d.hop_length),
        sid=torch.zeros(batch_size, dtype=torch.long),
        index=torch.arange(batch_size),
    )


class RVCStep:
    """RVC's training step (train.py's order), on RVC's own classes."""

    def __init__(self, rvc: Path, cfg) -> None:
        sys.path.insert(0, str(rvc))
        _librosa_stub()
        from infer.module import commons
        from infer.module.models import MultiPeriodDiscriminatorV2, SynthesizerTrnMs768NSFsid

        from train import losses, mel_processing

        self.commons, self.losses, self.mel = commons, losses, mel_processing
        hps = json.loads((rvc / "configs" / "v1" / "40k.json").read_text())  # RVC's v2 40k uses v1/40k.json
        self.data, self.train = hps["data"], hps["train"]
        torch.manual_seed(cfg.train.seed)
        self.net_g = SynthesizerTrnMs768NSFsid(
            self.data["filter_length"] // 2 + 1,
            self.train["segment_size"] // self.data["hop_length"],
            **hps["model"],
            is_half=False,
            sr=40000,
        )
        self.net_d = MultiPeriodDiscriminatorV2(hps["model"]["use_spectral_norm"])
        lr, betas, eps = cfg.train.learning_rate or 1e-3, tuple(self.train["betas"]), self.train["eps"]
        self.optim_g = torch.optim.AdamW(self.net_g.parameters(), lr, betas=betas, eps=eps)
        self.optim_d = torch.optim.AdamW(self.net_d.parameters(), lr, betas=betas, eps=eps)

    def __call__(self, b: Batch) -> float:
        d, t, L = self.data, self.train, self.losses
        y_hat, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q) = self.net_g(
            b.phone, b.phone_lengths, b.pitch, b.pitchf, b.spec, b.spec_lengths, b.sid
        )
        mel = self.mel.spec_to_mel_torch(
            b.spec, d["filter_length"], d["n_mel_channels"], d["sampling_rate"], d["mel_fmin"], d["mel_fmax"]
        )
        y_mel = self.commons.slice_segments(mel, ids_slice, t["segment_size"] // d["hop_length"])
        y_hat_mel = self.mel.mel_spectrogram_torch(
            y_hat.float().squeeze(1), d["filter_length"], d["n_mel_channels"], d["sampling_rate"],
            d["hop_length"], d["win_length"], d["mel_fmin"], d["mel_fmax"],
        )  # fmt: skip
        wave = self.commons.slice_segments(b.wave, ids_slice * d["hop_length"], t["segment_size"])
        real, fake, _, _ = self.net_d(wave, y_hat.detach())
        loss_disc, _, _ = L.discriminator_loss(real, fake)
        self.optim_d.zero_grad()
        loss_disc.backward()
        self.commons.clip_grad_value_(self.net_d.parameters(), None)
        self.optim_d.step()
        real, fake, fmap_r, fmap_g = self.net_d(wave, y_hat)
        loss_mel = torch.nn.functional.l1_loss(y_mel, y_hat_mel) * t["c_mel"]
        loss_kl = L.kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * t["c_kl"]
        loss_gen_all = L.generator_loss(fake)[0] + L.feature_loss(fmap_r, fmap_g) + loss_mel + loss_kl
        self.optim_g.zero_grad()
        loss_gen_all.backward()
        self.commons.clip_grad_value_(self.net_g.parameters(), None)
        self.optim_g.step()
        return float(loss_gen_all.detach())


def arvc_step(cfg):
    torch.manual_seed(cfg.train.seed)
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    hp = {"lr": cfg.train.learning_rate or 1e-3, "betas": tuple(cfg.train.betas), "eps": cfg.train.eps}
    optim_g = build_optimizer("AdamW", net_g.parameters(), weight_decay=cfg.train.weight_decay, **hp)
    optim_d = build_optimizer("AdamW", net_d.parameters(), weight_decay=cfg.train.weight_decay, **hp)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = GanStep(
        cfg=cfg, net_g=net_g, net_d=net_d, optim_g=optim_g, optim_d=optim_d, scaler=scaler, precision="fp32"
    )
    counter = iter(range(1, 1 << 30))
    return lambda b: step(b, next(counter)).losses["loss_g"]


def count_flops(step, batch: Batch) -> dict[str, int]:
    """Floating-point operations of one step, by ATen op (torch's FlopCounterMode: matmuls and convolutions,
    forward and backward; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as mode:
        step(batch)
    return {str(op): int(n) for op, n in mode.get_flop_counts()["Global"].items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rvc", type=Path, required=True, help="a checkout of RVC WebUI")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--frames", type=int, default=300, help="frames per item (100 per second)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--flops", action="store_true", help="also count each step's FLOPs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = apply_overrides(load_config("v2-40k"), {"train.learning_rate": 1e-3})
    rvc, arvc = RVCStep(args.rvc.expanduser(), cfg), arvc_step(cfg)
    results = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        batch = _batch(cfg, batch_size, args.frames)
        times = {"rvc": [], "arvc": []}
        for step in (rvc, arvc):  # warm-up: first-call allocations, kernel caches
            step(batch)
        for _ in range(args.rounds):
            for name, step in (("rvc", rvc), ("arvc", arvc)):
                start = time.perf_counter()
                step(batch)
                times[name].append(time.perf_counter() - start)
        medians = {k: statistics.median(v) for k, v in times.items()}
        ratio = medians["arvc"] / medians["rvc"]
        results[batch_size] = {"median_s": medians, "ratio_arvc_over_rvc": ratio, "times": times}
        print(f"batch {batch_size}: RVC {medians['rvc']:.2f} s, arvc {medians['arvc']:.2f} s -> {ratio:.2f}x")
        if args.flops:
            flops = {name: count_flops(step, batch) for name, step in (("rvc", rvc), ("arvc", arvc))}
            total = {name: sum(ops.values()) for name, ops in flops.items()}
            results[batch_size]["flops"] = flops
            print(
                f"  GFLOP per step: RVC {total['rvc'] / 1e9:.0f}, arvc {total['arvc'] / 1e9:.0f}"
                f" -> {total['arvc'] / total['rvc']:.2f}x; time per FLOP arvc / RVC"
                f" {ratio * total['rvc'] / total['arvc']:.2f}"
            )
    if args.out:
        meta = {"threads": args.threads, "frames": args.frames, "rounds": args.rounds, "config": "v2-40k"}
        args.out.write_text(json.dumps({**meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
