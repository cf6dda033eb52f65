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
from typing import NamedTuple

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

    Every argument is by keyword. `net_g`/`net_d` are the models themselves (their parameters, clipped and
    checked); `g_forward`/`d_forward` the models as called for an update (DDP-wrapped and/or compiled;
    default: the models); `d_frozen` the discriminator as called in G's phase, where its parameters take no
    gradient (a DDP wrapper there would wait for gradients that never come; default: `d_forward`).
    `precision` is fp32, bf16 or fp16 (autocast; fp16 with the `scaler` enabled). `ranks` is the run's
    `distributed.Ranks` (default: one process, where every collective is the identity).
    """

    def __init__(
        self,
        *,
        cfg: RunConfig,
        net_g: torch.nn.Module,
        net_d: torch.nn.Module,
        optim_g: torch.optim.Optimizer,
        optim_d: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        precision: str,
        g_forward=None,
        d_forward=None,
        d_frozen=None,
        ranks: Ranks | None = None,
    ):
        self.cfg, self.net_g, self.net_d = cfg, net_g, net_d
        self.g_forward = g_forward if g_forward is not None else net_g
        self.d_forward = d_forward if d_forward is not None else net_d
        self.d_frozen = d_frozen if d_frozen is not None else self.d_forward
        self.optim_g, self.optim_d, self.scaler, self.precision = optim_g, optim_d, scaler, precision
        self.ranks = ranks if ranks is not None else Ranks()

    def _update(self, loss: torch.Tensor, optimizer, module) -> tuple[float, bool]:
        """Once the micro-batches' gradients are in: unscale, measure (and clip), step only if the loss and
        the gradients are finite. Returns (norm, stepped)."""
        self.scaler.unscale_(optimizer)
        norm = _grad_norm(module, self.cfg.train.grad_clip)  # gradients are all-reduced: same on all ranks
        if not self.ranks.all_true(math.isfinite(loss.item())) or not math.isfinite(norm):
            # Skipped, and reported so. fp16: unscale_ saw the overflow, so scaler.update() lowers the
            # scale (scaler.step would not have stepped either: that is no update either).
            return norm, False
        self.scaler.step(optimizer)
        return norm, True

    def _backward(self, loss: torch.Tensor, parts: int) -> None:
        """Add this micro-batch's share: the batch's mean gradient is the mean of `parts` equal ones."""
        self.scaler.scale(loss / parts if parts > 1 else loss).backward()

    def _generate(self, part: Batch, step: int) -> _Fake:
        """G's forward on one (micro-)batch; its random draws are keyed per item, as RVC's are per batch."""
        d, device_type = self.cfg.data, part.wave.device.type
        noise = per_item_noise(self.cfg.train.seed, step, part.index.tolist())
        with autocast(self.precision, device_type), noise:
            y_hat, ids_slice, _, z_mask, (_, z_p, m_p, logs_p, _, logs_q) = self.g_forward(
                part.phone,
                part.phone_lengths,
                part.pitch,
                part.pitchf,
                part.spec,
                part.spec_lengths,
                part.sid,
            )
        wave = slice_segments(part.wave, ids_slice * d.hop_length, d.segment_size).to(y_hat.dtype)
        return _Fake(y_hat, wave, ids_slice, z_mask, z_p, m_p, logs_p, logs_q)

    def __call__(self, batch: Batch, step: int) -> StepResult:
        """Train on `batch` as optimizer step `step` (1-based; with the seed it keys the per-item noise).

        With `train.accumulate` N the batch is cut into N micro-batches (`Batch.split`): D's N backward
        passes and one D step, then G's N passes and one G step, each loss divided by N so that the
        gradients are the whole batch's mean; clipping, the finite check and the loss scale act once per
        step. Only one micro-batch's graph is alive at a time: D's phase runs G without a graph and G's
        phase runs it again with one, from the same RNG state and per-item noise (the same fakes, bit for
        bit on a CPU) -- one extra G forward per micro-batch instead of N graphs of G kept in memory.
        """
        cfg, d, n, device = self.cfg, self.cfg.data, self.cfg.train.accumulate, batch.wave.device
        parts = batch.split(n)
        keep = n == 1  # one micro-batch: the graph of D's phase serves G's phase (no second forward)

        # Discriminator: real vs detached fake, every micro-batch; then one update.
        self.optim_d.zero_grad(set_to_none=True)
        kept, rng, d_losses, frames = [], [], [], 0
        for i, part in enumerate(parts):
            rng.append(None if keep else _rng_state(device))
            with _sync(self.d_forward, i == n - 1):
                with contextlib.nullcontext() if keep else torch.no_grad():
                    fake = self._generate(part, step)
                with autocast(self.precision, device.type):
                    real_out, fake_out, _, _ = self.d_forward(fake.wave, fake.y_hat.detach())
                    loss_d, _, _ = discriminator_loss(real_out, fake_out)
                self._backward(loss_d, n)
            d_losses.append(loss_d.detach())
            frames = frames + fake.z_mask.float().sum()
            kept.append(fake if keep else None)
            del fake, real_out, fake_out
        loss_d = torch.stack(d_losses).mean()
        grad_norm_d, stepped_d = self._update(loss_d, self.optim_d, self.net_d)

        # Generator: fool the (frozen, updated) discriminator, match its features, the mel and the prior.
        # KL per frame of the whole global batch: each micro-batch's term is N times its share (the 1/N of
        # _backward and of the logged mean undo it), as under DDP it is `world size` times its rank's share.
        per_part = self.ranks.mean(frames) / n if n > 1 else self.ranks.mean(frames)
        self.optim_g.zero_grad(set_to_none=True)
        g_losses, mels = [], None
        for i, (part, fake, state) in enumerate(zip(parts, kept, rng, strict=True)):
            # D stays frozen through backward too: a checkpointed D block recomputes as it ran.
            with _sync(self.g_forward, i == n - 1), _frozen(self.net_d):
                if fake is None:
                    _set_rng_state(state, device)  # the draws of D's phase again (dropout, if any)
                    fake = self._generate(part, step)
                y_mel = slice_segments(
                    spec_to_mel_of(part.spec.float(), d), fake.ids_slice, cfg.segment_frames
                )
                y_hat_mel = wave_to_mel_of(fake.y_hat.float().squeeze(1), d)[..., : y_mel.shape[-1]]
                with autocast(self.precision, device.type):
                    _, fake_out, fmap_real, fmap_fake = self.d_frozen(fake.wave, fake.y_hat, real_graph=False)
                    loss_adv, _ = generator_adversarial_loss(fake_out)
                    loss_fm = feature_matching_loss(fmap_real, fmap_fake) * cfg.train.c_fm
                    loss_mel = F.l1_loss(y_mel, y_hat_mel) * cfg.train.c_mel
                    prior = fake.z_p.float(), fake.logs_q.float(), fake.m_p.float(), fake.logs_p.float()
                    loss_kl = kl_loss(*prior, fake.z_mask, per_part) * cfg.train.c_kl
                    loss_g = loss_adv + loss_fm + loss_mel + loss_kl
                self._backward(loss_g, n)
            g_losses.append(torch.stack([loss_g, loss_mel, loss_kl, loss_fm, loss_adv]).detach().float())
            if mels is None:  # the first item of the batch, for the TensorBoard image
                mels = y_mel[0].detach(), y_hat_mel[0].detach()
            del fake, prior  # this micro-batch's graph is gone after its backward
        loss_g, loss_mel, loss_kl, loss_fm, loss_adv = torch.stack(g_losses).mean(0)
        grad_norm_g, stepped_g = self._update(loss_g, self.optim_g, self.net_g)
        self.scaler.update()

        names = ("loss_d", "loss_g", "loss_mel", "loss_kl", "loss_fm", "loss_adv")
        values = torch.stack([loss_d, loss_g, loss_mel, loss_kl, loss_fm, loss_adv]).detach().float()
        losses = dict(zip(names, self.ranks.mean(values).tolist(), strict=True))
        skipped = [name for name, ok in (("discriminator", stepped_d), ("generator", stepped_g)) if not ok]
        return StepResult(losses, grad_norm_g, grad_norm_d, skipped, *mels)


class _Fake(NamedTuple):
    """What G's forward gives a step: the fake and real slices, and the terms of the KL loss."""

    y_hat: torch.Tensor
    wave: torch.Tensor  # the real slice y_hat stands for
    ids_slice: torch.Tensor
    z_mask: torch.Tensor
    z_p: torch.Tensor
    m_p: torch.Tensor
    logs_p: torch.Tensor
    logs_q: torch.Tensor


def _sync(module, last: bool):
    """DDP: all-reduce the gradients with the last micro-batch's backward only (`no_sync` before it: the
    sum of the micro-batches' gradients is reduced once). One process, or the last: nothing to do."""
    no_sync = getattr(module, "no_sync", None)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def _rng_state(device: torch.device):
    """The global RNG state (CPU, and the GPU's), to replay a forward's draws."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    cpu, gpu = state
    torch.set_rng_state(cpu)
    if gpu is not None:
        torch.cuda.set_rng_state(gpu, device)
