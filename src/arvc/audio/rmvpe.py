"""RMVPE pitch (Wei et al., Interspeech 2023), run on the user's own ``rmvpe.pt``; nothing is downloaded.

The network, arvc's own code in the layout RVC's ``rmvpe.pt`` stores (RVC WebUI ``assets/rmvpe/rmvpe.pt``,
Applio ``rvc/models/predictors/rmvpe.pt``): a deep U-Net over a 128-band log-mel spectrogram of 16 kHz
audio (hop 160: 100 frames/s) — five encoder levels of four residual 3x3 conv blocks with 2x2 average
pooling (16 → 256 channels), four intermediate levels (512), five decoder levels with transposed-conv
upsampling and skip connections — then a 3-channel conv, a bidirectional GRU over time and a linear layer
to 360 sigmoid pitch bins of 20 cents from about 31.7 Hz.

Decoding is RMVPE's: the salience-weighted average of the nine bins around each frame's peak, in cents,
voiced where the peak exceeds ``threshold`` (RVC's pipeline uses 0.03). Long inputs run in chunks with
context on both sides, so memory stays bounded and the seams match a single pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from arvc.audio.mel import mel_filterbank

__all__ = ["RMVPE_HOP", "RMVPEError", "RMVPENet", "decode_salience", "load_rmvpe", "rmvpe_f0", "rmvpe_mel"]

RMVPE_SR = 16000
RMVPE_HOP = 160
N_FFT = 1024
N_MELS = 128
MEL_FMIN, MEL_FMAX = 30.0, 8000.0
N_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191  # bin 0, about 31.7 Hz
THRESHOLD = 0.03  # RVC's voicing threshold for RMVPE
LEVELS = 5  # U-Net levels: frames are padded to a multiple of 2**5
CHUNK_FRAMES = 2048  # about 20 s per network call
CONTEXT_FRAMES = 128  # each side of a chunk (a multiple of 32)


class RMVPEError(ValueError):
    """The file is not an RMVPE state dict of the expected layout; the message says what differs."""


class _ConvRes(nn.Module):
    """Two 3x3 conv + batch-norm + ReLU, plus the input (through a 1x1 conv where the width changes)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout, momentum=0.01),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout, momentum=0.01),
            nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + (self.shortcut(x) if self.shortcut is not None else x)


class _Blocks(nn.Module):
    """`n` residual blocks, the first from `cin` to `cout` (RMVPE's ResEncoderBlock without its pool)."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        self.conv = nn.ModuleList([_ConvRes(cin if i == 0 else cout, cout) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class _Encoder(nn.Module):
    def __init__(self, levels: int, blocks: int, width: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=0.01)
        widths = [1] + [width * 2**i for i in range(levels)]
        self.layers = nn.ModuleList([_Blocks(widths[i], widths[i + 1], blocks) for i in range(levels)])
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        x = self.bn(x)
        for layer in self.layers:
            x = layer(x)
            skips.append(x)
            x = self.pool(x)
        return x, skips


class _Intermediate(nn.Module):
    def __init__(self, cin: int, cout: int, levels: int, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Blocks(cin if i == 0 else cout, cout, blocks) for i in range(levels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _Up(nn.Module):
    """Upsample 2x (transposed conv + batch-norm + ReLU), join the skip, `blocks` residual blocks."""

    def __init__(self, cin: int, cout: int, blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(cout, momentum=0.01),
            nn.ReLU(),
        )
        self.conv2 = nn.ModuleList([_ConvRes(2 * cout if i == 0 else cout, cout) for i in range(blocks)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class _Decoder(nn.Module):
    def __init__(self, cin: int, levels: int, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Up(cin // 2**i, cin // 2 ** (i + 1), blocks) for i in range(levels)])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer, skip in zip(self.layers, reversed(skips), strict=True):
            x = layer(x, skip)
        return x


class _UNet(nn.Module):
    def __init__(self, levels: int = LEVELS, inter: int = 4, blocks: int = 4, width: int = 16) -> None:
        super().__init__()
        deepest = width * 2 ** (levels - 1)
        self.encoder = _Encoder(levels, blocks, width)
        self.intermediate = _Intermediate(deepest, 2 * deepest, inter, blocks)
        self.decoder = _Decoder(2 * deepest, levels, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class _BiGRU(nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=1, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class RMVPENet(nn.Module):
    """Log-mel ``[B, 128, T]`` (T a multiple of 32) to pitch-bin salience ``[B, T, 360]`` in 0..1."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = _UNet()
        self.cnn = nn.Conv2d(16, 3, 3, padding=1)
        self.fc = nn.Sequential(
            _BiGRU(3 * N_MELS, 256), nn.Linear(512, N_BINS), nn.Dropout(0.25), nn.Sigmoid()
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.cnn(self.unet(mel.transpose(1, 2).unsqueeze(1)))  # [B, 3, T, 128]
        return self.fc(x.transpose(1, 2).flatten(2))


def rmvpe_mel(wave: torch.Tensor) -> torch.Tensor:
    """RMVPE's input: natural-log mel magnitudes (128 HTK-scale bands 30-8000 Hz, Slaney-normalised, floor
    1e-5) of 16 kHz audio ``[B, N]``, centred frames every 160 samples: ``[B, 128, N // 160 + 1]``."""
    window = torch.hann_window(N_FFT, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(
        wave, N_FFT, RMVPE_HOP, window=window, center=True, pad_mode="reflect", return_complex=True
    ).abs()
    basis = torch.tensor(
        mel_filterbank(RMVPE_SR, N_FFT, N_MELS, MEL_FMIN, MEL_FMAX, htk=True), dtype=wave.dtype
    ).to(wave.device)
    return torch.log(torch.clamp(basis @ spec, min=1e-5))


def decode_salience(salience: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Hz per frame (0 = unvoiced) from salience ``[T, 360]``: the salience-weighted mean of the nine bins
    around each frame's peak (bins outside the range weigh 0), voiced where the peak exceeds `threshold`."""
    salience = np.asarray(salience, dtype=np.float64)
    peak = salience.argmax(axis=1)
    padded = np.pad(salience, ((0, 0), (4, 4)))
    window = peak[:, None] + np.arange(9)[None, :]  # bins peak-4 .. peak+4 of the padded axis
    weights = np.take_along_axis(padded, window, axis=1)
    cents = CENTS_OFFSET + CENTS_PER_BIN * (window - 4)
    total = weights.sum(axis=1)
    mean = (weights * cents).sum(axis=1) / np.where(total > 0, total, 1.0)
    f0 = 10.0 * 2.0 ** (mean / 1200.0)
    f0[salience.max(axis=1) <= threshold] = 0.0
    return f0


def _expected_layout() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in RMVPENet().state_dict().items()}


def load_rmvpe(path: str | os.PathLike, device: str | torch.device = "cpu") -> RMVPENet:
    """The RMVPE network with the weights of `path` (RVC's ``rmvpe.pt``), strictly: every key and shape
    must match, read with ``weights_only=True`` (a pickle that needs code is refused)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RMVPEError(f"RMVPE model {path} does not exist (RVC WebUI keeps it as assets/rmvpe/rmvpe.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError for code, RuntimeError/EOFError for damage
        raise RMVPEError(
            f"{path} is not a readable RMVPE state dict ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(list(state)[:4]) if isinstance(state, dict) else type(state).__name__
        raise RMVPEError(f"{path} is not an RMVPE state dict (it holds {keys}); pass RVC's rmvpe.pt")
    expected = _expected_layout()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]  # fmt: skip
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} keys missing (first: {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if wrong:
            problems.append(f"{len(wrong)} of another shape (first: {'; '.join(wrong[:2])})")
        raise RMVPEError(f"{path} is not RMVPE's layout: {'; '.join(problems)}")
    net = RMVPENet()
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval().to(device)


@torch.no_grad()
def rmvpe_f0(
    wave16k: np.ndarray,
    net: RMVPENet,
    threshold: float = THRESHOLD,
    chunk_frames: int = CHUNK_FRAMES,
) -> np.ndarray:
    """Hz per 10 ms frame (``len // 160 + 1`` frames, 0 = unvoiced) of 16 kHz audio.

    The mel is computed once; the network runs on chunks of `chunk_frames` with CONTEXT_FRAMES of real
    neighbouring frames on each side, so memory is bounded by the chunk and each chunk sees what a single
    pass would around its edges. The end is padded to a multiple of 32 frames with zeros, as RVC pads it:
    a clip of up to `chunk_frames` frames gets RVC's pitch on every frame."""
    device = next(net.parameters()).device
    wave = torch.as_tensor(np.asarray(wave16k, dtype=np.float32).reshape(1, -1), device=device)
    mel = rmvpe_mel(wave)  # [1, 128, T]
    total = mel.shape[-1]
    step = max(32, chunk_frames // 32 * 32)
    out = []
    for start in range(0, total, step):
        lo, hi = max(0, start - CONTEXT_FRAMES), min(total, start + step + CONTEXT_FRAMES)
        piece = mel[..., lo:hi]
        length = piece.shape[-1]
        # Zeros after the end, as RVC's mel2hidden pads (since RVC PR #1168): only the last piece needs it.
        piece = torch.nn.functional.pad(piece, (0, -length % 2**LEVELS), mode="constant")
        salience = net(piece)[0, :length]
        out.append(salience[start - lo : start - lo + min(step, total - start)].float().cpu().numpy())
    return decode_salience(np.concatenate(out), threshold)
