"""One RVC training step: generator forward, discriminator update, generator update.

RVC's order and loss weights: LSGAN adversarial + feature matching ×2 + mel L1 ×45 + KL ×1. An update
whose loss or gradient norm is not finite is skipped for that optimizer (its state stays untouched) and
reported, so one bad batch cannot poison Adam's moments.

Under DistributedDataParallel every rank runs this on its share of the global batch: the models' random
draws are per item (`model.noise`), the KL term is normalised by the global batch's frame count, the
logged losses are averaged over ranks and the decision to skip an update is taken by all ranks together,
so the step equals the one-process step on the whole batch up to float summation order.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from arvc.audio.mel import spec_to_mel_of, wave_to_mel_of
from arvc.config import RunConfig
from arvc.data.dataset import Batch
from arvc.model import slice_segments
from arvc.model.noise import per_item_noise
from arvc.train.distributed import Ranks
from arvc.train.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss, kl_loss

__all__ = ["GanStep", "StepResult", "autocast"]


@dataclass
class StepResult:
    losses: dict[str, float]
    grad_norm_g: float
    grad_norm_d: float
    skipped: list[
        str
    ]  # "generator" / "discriminator" when that update was skipped (non-finite, fp16 overflow)
    mel_real: torch.Tensor  # one slice, for the TensorBoard image
    mel_fake: torch.Tensor


def autocast(precision: str, device_type: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(
        device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16
    )


@contextlib.contextmanager
def _frozen(module: torch.nn.Module):
    """D's parameters need no gradient in G's phase: same losses, less work (RVC computes and discards)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _grad_norm(module: torch.nn.Module, clip: float | None) -> float:
    """Total gradient norm (logged as RVC does); clipped to `clip` when given. Without a clip the norm is
    only measured (clip_grad_norm_ with an infinite clip would also multiply every gradient by 1)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if clip is None:
        return float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    return float(torch.nn.utils.clip_grad_norm_(params, clip))


class GanStep:
    """Holds what every step needs; `__call__(batch, step)` performs one D update and one G update.

    `g_forward`/`d_forward` are the models as called for an update (DDP-wrapped and/or compiled);
    `d_frozen` is the discriminator as called in G's phase, where its parameters take no gradient (a
    DDP wrapper there would wait for gradients that never come). `ranks` is the run's
    `distributed.Ranks` (one process: every collective is the identity).
    """

    def __init__(
        self,
        cfg: RunConfig,
        net_g,
        net_d,
        g_forward,
        d_forward,
        optim_g,
        optim_d,
        scaler,
        precision,
        d_frozen=None,
        ranks=None,
    ):
        self.cfg, self.net_g, self.net_d = cfg, net_g, net_d
        self.g_forward, self.d_forward = g_forward, d_forward
        self.d_frozen = d_frozen if d_frozen is not None else d_forward
        self.optim_g, self.optim_d, self.scaler, self.precision = optim_g, optim_d, scaler, precision
        self.ranks = ranks if ranks is not None else Ranks()

    def _update(self, loss: torch.Tensor, optimizer, module) -> tuple[float, bool]:
        """Backward, unscale, measure; step only if loss and gradients are finite. Returns (norm, stepped)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        norm = _grad_norm(module, self.cfg.train.grad_clip)  # gradients are all-reduced: same on all ranks
        if not self.ranks.all_true(math.isfinite(loss.item())) or not math.isfinite(norm):
            # Skipped, and reported so. fp16: unscale_ saw the overflow, so scaler.update() lowers the
            # scale (scaler.step would not have stepped either: that is no update either).
            return norm, False
        self.scaler.step(optimizer)
        return norm, True

    def __call__(self, batch: Batch, step: int) -> StepResult:
        """Train on `batch` as step number `step` (1-based; with the seed it keys the per-item noise)."""
        cfg, d, device_type = self.cfg, self.cfg.data, batch.wave.device.type
        noise = per_item_noise(cfg.train.seed, step, batch.index.tolist())
        with autocast(self.precision, device_type), noise:
            y_hat, ids_slice, _, z_mask, (_, z_p, m_p, logs_p, _, logs_q) = self.g_forward(
                batch.phone,
                batch.phone_lengths,
                batch.pitch,
                batch.pitchf,
                batch.spec,
                batch.spec_lengths,
                batch.sid,
            )
        wave = slice_segments(batch.wave, ids_slice * d.hop_length, d.segment_size).to(y_hat.dtype)
        y_mel = slice_segments(spec_to_mel_of(batch.spec.float(), d), ids_slice, cfg.segment_frames)
        y_hat_mel = wave_to_mel_of(y_hat.float().squeeze(1), d)[..., : y_mel.shape[-1]]

        # Discriminator: real vs detached fake.
        with autocast(self.precision, device_type):
            real_out, fake_out, _, _ = self.d_forward(wave, y_hat.detach())
            loss_d, _, _ = discriminator_loss(real_out, fake_out)
        grad_norm_d, stepped_d = self._update(loss_d, self.optim_d, self.net_d)

        # Generator: fool the (frozen) discriminator, match its features, the mel and the prior.
        frames = self.ranks.mean(z_mask.float().sum())  # KL per frame of the global batch, times ranks
        with autocast(self.precision, device_type), _frozen(self.net_d):
            _, fake_out, fmap_real, fmap_fake = self.d_frozen(wave, y_hat, real_graph=False)
            loss_adv, _ = generator_adversarial_loss(fake_out)
            loss_fm = feature_matching_loss(fmap_real, fmap_fake) * cfg.train.c_fm
            loss_mel = F.l1_loss(y_mel, y_hat_mel) * cfg.train.c_mel
            loss_kl = (
                kl_loss(z_p.float(), logs_q.float(), m_p.float(), logs_p.float(), z_mask, frames)
                * cfg.train.c_kl
            )
            loss_g = loss_adv + loss_fm + loss_mel + loss_kl
        grad_norm_g, stepped_g = self._update(loss_g, self.optim_g, self.net_g)
        self.scaler.update()

        names = ("loss_d", "loss_g", "loss_mel", "loss_kl", "loss_fm", "loss_adv")
        values = torch.stack([loss_d, loss_g, loss_mel, loss_kl, loss_fm, loss_adv]).detach().float()
        losses = dict(zip(names, self.ranks.mean(values).tolist(), strict=True))
        skipped = [name for name, ok in (("discriminator", stepped_d), ("generator", stepped_g)) if not ok]
        return StepResult(losses, grad_norm_g, grad_norm_d, skipped, y_mel[0].detach(), y_hat_mel[0].detach())
