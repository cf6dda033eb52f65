"""The embedded demo voice: speech-like audio of one synthetic speaker, made offline in seconds.

It lets ``arvc`` train end to end with no dataset and no downloads. A source-filter
synthesizer produces babble with the acoustic structure of speech:

* source: a Rosenberg glottal pulse train whose pitch follows phrase intonation (declination,
  stressed-syllable accents, statement falls / question rises) with vibrato and jitter, plus
  breath noise;
* filter: four formant resonators whose frequencies glide between vowel targets, applied
  frame by frame in the STFT domain (fast and fully vectorised);
* consonants: fricative noise bands, plosive closures with bursts and aspiration, nasals and
  approximants; syllable amplitude envelopes and pauses between phrases.

Output is deterministic: the same arguments give byte-identical 16-bit WAV files, and a
manifest of their hashes lets a second call skip the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from arvc._files import atomic_file, write_text

__all__ = ["DEMO_MANIFEST", "generate_demo_voice", "synthesize_speech"]

log = logging.getLogger(__name__)

DEMO_MANIFEST = "demo_voice.json"
_GENERATOR_VERSION = 1  # bump whenever the synthesis changes, so cached demo files are regenerated
_CONTROL_RATE = 200  # control tracks at 5 ms
_MEDIAN_F0 = 165.0  # the demo speaker's typical pitch, Hz
_FORMANT_SCALE = 1.08  # a slightly shorter vocal tract than the textbook adult male
_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 200.0])
# Fixed higher resonances keep energy above 4 kHz, as in real voices (Klatt's higher-pole correction).
_HIGH_FORMANTS = np.array([[4500.0, 6000.0, 7500.0]])
_HIGH_BANDWIDTHS = np.array([300.0, 500.0, 700.0])

# Vowel formant targets F1..F4 (Hz), after Peterson & Barney's averages.
_VOWELS = {
    "a": (730, 1090, 2440, 3400),
    "i": (270, 2290, 3010, 3700),
    "u": (300, 870, 2240, 3300),
    "e": (530, 1840, 2480, 3500),
    "o": (570, 840, 2410, 3400),
    "ae": (660, 1720, 2410, 3500),
    "er": (490, 1350, 1690, 3300),
}
# Consonants: (kind, noise centre Hz, noise bandwidth Hz, noise level, voicing level, F2 locus Hz).
_CONSONANTS = {
    "s": ("fricative", 6500, 3000, 0.30, 0.0, 1700),
    "sh": ("fricative", 3200, 1800, 0.30, 0.0, 1900),
    "f": ("fricative", 4500, 6000, 0.08, 0.0, 1000),
    "z": ("fricative", 6500, 3000, 0.15, 0.35, 1700),
    "h": ("aspirate", 0, 0, 0.25, 0.0, 0),
    "p": ("plosive", 1200, 1500, 0.60, 0.0, 900),
    "t": ("plosive", 4500, 3000, 0.60, 0.0, 1800),
    "k": ("plosive", 2200, 1200, 0.60, 0.0, 2000),
    "b": ("plosive", 1200, 1500, 0.30, 0.12, 900),
    "d": ("plosive", 4000, 3000, 0.30, 0.12, 1800),
    "g": ("plosive", 2200, 1200, 0.30, 0.12, 2000),
    "m": ("nasal", 0, 0, 0.0, 0.40, 1000),
    "n": ("nasal", 0, 0, 0.0, 0.40, 1600),
    "l": ("approximant", 0, 0, 0.0, 0.65, 1100),
    "r": ("approximant", 0, 0, 0.0, 0.65, 1300),
    "w": ("approximant", 0, 0, 0.0, 0.65, 750),
    "y": ("approximant", 0, 0, 0.0, 0.65, 2200),
}
_ONSETS = list(_CONSONANTS)
_CODAS = ["m", "n", "s", "t", "l", "k", "r"]


class _Tracks:
    """Control parameters sampled every 5 ms; filled segment by segment, smoothed at the end."""

    def __init__(self, n: int):
        self.f0 = np.full(n, _MEDIAN_F0)
        self.voice = np.zeros(n)
        self.breath = np.zeros(n)
        self.noise = np.zeros(n)
        self.noise_centre = np.full(n, 3000.0)
        self.noise_width = np.full(n, 2000.0)
        self.formants = np.tile(np.array(_VOWELS["er"], float) * _FORMANT_SCALE, (n, 1))


def _frames(seconds: float) -> int:
    return max(1, int(round(seconds * _CONTROL_RATE)))


def _syllable(tr: _Tracks, pos: int, rng: np.random.Generator, stress: float, level: float) -> int:
    """Write one consonant-vowel(-consonant) syllable at control frame ``pos``; return the next frame."""
    vowel = np.array(_VOWELS[rng.choice(list(_VOWELS))], float) * _FORMANT_SCALE
    segments = []
    if rng.random() < 0.8:
        segments.append(rng.choice(_ONSETS))
    segments.append("V")
    if rng.random() < 0.3:
        segments.append(rng.choice(_CODAS))
    n = len(tr.f0)
    for seg in segments:
        if pos >= n:
            break
        if seg == "V":
            length = _frames(rng.uniform(0.09, 0.16) * (1.0 + 0.6 * stress))
            span = slice(pos, min(n, pos + length))
            k = span.stop - span.start
            # Fast attack, slower decay: the amplitude shape of a spoken vowel.
            shape = np.minimum(1.0, np.linspace(0.0, 4.0, k)) * np.linspace(1.0, 0.7, k)
            tr.voice[span] = level * (0.7 + 0.3 * stress) * shape
            tr.breath[span] = 0.03
            tr.formants[span] = vowel
            pos += k
            continue
        kind, centre, width, noise, voice, locus = _CONSONANTS[seg]
        target = vowel.copy()
        if locus:
            target[1] = 0.5 * target[1] + 0.5 * locus * _FORMANT_SCALE
        if kind == "plosive":
            closure = _frames(rng.uniform(0.04, 0.07))
            burst = _frames(0.015)
            aspiration = _frames(0.03) if voice == 0.0 else 0
            c = slice(pos, min(n, pos + closure))
            tr.voice[c] = voice * level
            tr.formants[c] = target
            b = slice(c.stop, min(n, c.stop + burst))
            tr.noise[b], tr.noise_centre[b], tr.noise_width[b] = noise * level, centre, width
            tr.formants[b] = target
            a = slice(b.stop, min(n, b.stop + aspiration))
            tr.breath[a] = 0.2 * level
            tr.formants[a] = target
            pos = a.stop
        else:
            length = _frames(rng.uniform(0.06, 0.11) if kind != "approximant" else rng.uniform(0.04, 0.07))
            span = slice(pos, min(n, pos + length))
            if kind == "nasal":
                target = np.array([260.0, target[1] * 0.9, 2300.0, 3400.0]) * _FORMANT_SCALE
            if kind == "aspirate":
                tr.breath[span] = noise * level
            elif kind == "fricative":
                tr.noise[span], tr.noise_centre[span], tr.noise_width[span] = noise * level, centre, width
            tr.voice[span] = voice * level
            tr.formants[span] = target
            pos = span.stop
    return pos


def _phrase(tr: _Tracks, start: int, end: int, rng: np.random.Generator) -> int:
    """Fill a phrase of syllables between control frames ``start`` and ``end`` with its intonation."""
    pos, syllables = start, []
    while pos < end - _frames(0.15):
        stress = 1.0 if rng.random() < 0.35 else 0.0
        level = 1.0 - 0.3 * (pos - start) / max(1, end - start)  # loudness declines over the phrase
        s0 = pos
        pos = _syllable(tr, pos, rng, stress, level)
        syllables.append((s0, pos, stress))
    if pos <= start:
        return start
    # Intonation in semitones: declination, accents on stressed syllables, a final fall or rise.
    t = np.arange(pos - start) / _CONTROL_RATE
    span = max(t[-1], 1e-3)
    semis = np.full_like(t, rng.normal(0.0, 1.0)) + 2.0 - 4.0 * t / span
    for s0, s1, stress in syllables:
        if stress:
            centre, width = (s0 + s1) / 2 - start, (s1 - s0) / 2 + 1
            semis += rng.uniform(2.0, 4.0) * np.exp(-0.5 * ((np.arange(len(t)) - centre) / width) ** 2)
    question = rng.random() < 0.2
    tail = np.clip((t - (span - 0.4)) / 0.4, 0.0, 1.0)
    semis += (5.0 if question else -3.0) * tail**2
    vibrato = 0.3 * np.sin(2 * np.pi * rng.uniform(4.5, 6.0) * t + rng.uniform(0, 2 * np.pi))
    jitter = np.convolve(rng.normal(0.0, 0.25, len(t)), np.ones(5) / 5, mode="same")
    tr.f0[start:pos] = np.clip(_MEDIAN_F0 * 2.0 ** ((semis + vibrato + jitter) / 12.0), 80.0, 400.0)
    return pos


def _smooth(x: np.ndarray, frames: int) -> np.ndarray:
    if frames <= 1:
        return x
    kernel = np.hanning(frames + 2)[1:-1]
    kernel /= kernel.sum()
    pad = [(frames, frames)] + [(0, 0)] * (x.ndim - 1)
    padded = np.pad(x, pad, mode="edge")
    return signal.fftconvolve(padded, kernel.reshape(-1, *([1] * (x.ndim - 1))), mode="same", axes=0)[
        frames:-frames
    ]


def _resonator_gain(formants: np.ndarray, bandwidths: np.ndarray, freqs: np.ndarray, sr: int) -> np.ndarray:
    """|H| of a cascade of unity-DC-gain two-pole resonators (Klatt), ``[frames, bins]``."""
    omega = 2 * np.pi * freqs / sr
    cos1, sin1, cos2, sin2 = np.cos(omega), np.sin(omega), np.cos(2 * omega), np.sin(2 * omega)
    gain = np.ones((formants.shape[0], len(freqs)), dtype=np.float64)
    for k in range(formants.shape[1]):
        r = np.exp(-np.pi * bandwidths[k] / sr)
        c = 2 * r * np.cos(2 * np.pi * formants[:, k : k + 1] / sr)
        re = 1.0 - c * cos1 + r * r * cos2
        im = c * sin1 - r * r * sin2
        gain *= (1.0 - c + r * r) / np.sqrt(re * re + im * im)
    return gain


def synthesize_speech(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One take of demo speech: phrases separated by pauses, float32 in [-1, 1]."""
    n_ctrl = _frames(seconds) + 1
    tr = _Tracks(n_ctrl)
    pos = _frames(rng.uniform(0.2, 0.4))
    while pos < n_ctrl - _frames(1.0):
        end = min(n_ctrl - _frames(0.2), pos + _frames(rng.uniform(1.5, 4.0)))
        pos = _phrase(tr, pos, end, rng) + _frames(rng.uniform(0.3, 0.9))
    voice, breath, noise = _smooth(tr.voice, 4), _smooth(tr.breath, 3), _smooth(tr.noise, 2)
    formants = _smooth(tr.formants, 8)

    n = int(round(seconds * sr))
    t_ctrl = np.arange(n_ctrl) / _CONTROL_RATE
    t = np.arange(n) / sr
    f0 = np.interp(t, t_ctrl, tr.f0)
    frac = np.mod(np.cumsum(f0 / sr), 1.0)
    # Rosenberg glottal flow (opening 40 % of the period, closing 16 %); its derivative excites the tract.
    flow = np.where(
        frac < 0.4,
        0.5 * (1 - np.cos(np.pi * frac / 0.4)),
        np.where(frac < 0.56, np.cos(0.5 * np.pi * (frac - 0.4) / 0.16), 0.0),
    )
    pulses = np.diff(flow, prepend=0.0) * (sr / f0) / 10.0
    shimmer = 1.0 + 0.05 * np.interp(t, t_ctrl, rng.normal(0.0, 1.0, n_ctrl))
    voiced = pulses * np.interp(t, t_ctrl, voice) * shimmer
    voiced += rng.normal(0.0, 1.0, n) * np.interp(t, t_ctrl, breath) * (0.4 + 0.6 * flow) * 0.3
    hiss = rng.normal(0.0, 1.0, n) * np.interp(t, t_ctrl, noise) * 0.3

    nperseg = 1 << int(math.ceil(math.log2(0.025 * sr)))
    hop = nperseg // 4
    freqs, frame_t, voiced_spec = signal.stft(voiced, sr, nperseg=nperseg, noverlap=nperseg - hop)
    _, _, hiss_spec = signal.stft(hiss, sr, nperseg=nperseg, noverlap=nperseg - hop)
    tract = _resonator_gain(
        np.stack([np.interp(frame_t, t_ctrl, formants[:, k]) for k in range(4)], axis=1),
        _BANDWIDTHS,
        freqs,
        sr,
    )
    high = _HIGH_FORMANTS[:, _HIGH_FORMANTS[0] < 0.9 * sr / 2]
    tract *= _resonator_gain(high, _HIGH_BANDWIDTHS[: high.shape[1]], freqs, sr)
    nyq = sr / 2
    centre = np.minimum(np.interp(frame_t, t_ctrl, tr.noise_centre), 0.8 * nyq)[:, None]
    width = np.interp(frame_t, t_ctrl, tr.noise_width)[:, None]
    band = np.exp(-0.5 * ((freqs[None, :] - centre) / (0.5 * width)) ** 2)
    _, out = signal.istft(
        voiced_spec * tract.T + hiss_spec * band.T, sr, nperseg=nperseg, noverlap=nperseg - hop
    )
    out = out[:n]
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("demo synthesis produced non-finite samples")
    out = signal.lfilter(*signal.butter(2, 60.0, btype="high", fs=sr), out)  # no DC or rumble
    out *= 0.7 / max(float(np.abs(out).max()), 1e-9)
    out += rng.normal(0.0, 3e-4, n)  # a quiet room's noise floor (about -70 dBFS), never digital silence
    return out.astype(np.float32)


def _file_lengths(seconds: float) -> list[float]:
    count = max(1, round(seconds / 25.0))
    return [seconds / count] * count


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate_demo_voice(
    out_dir: str | os.PathLike, seconds: float = 150.0, sr: int = 40000, seed: int = 0
) -> list[Path]:
    """Write the demo speaker's recordings (about 25 s each) to ``out_dir``; return their paths.

    Deterministic: the same arguments give byte-identical files. When ``out_dir`` already holds
    them (checked against the hashes in ``demo_voice.json``) nothing is regenerated.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {"version": _GENERATOR_VERSION, "seconds": float(seconds), "sr": int(sr), "seed": int(seed)}
    manifest_path = out / DEMO_MANIFEST
    lengths = _file_lengths(seconds)
    paths = [out / f"demo_{i:02d}.wav" for i in range(len(lengths))]
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == params and all(
            p.is_file() and _sha256(p) == manifest["files"].get(p.name) for p in paths
        ):
            log.info("demo voice already in %s", out)
            return paths
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    hashes = {}
    for i, (path, length) in enumerate(zip(paths, lengths, strict=True)):
        wave = synthesize_speech(length, sr, np.random.default_rng([seed, i]))
        with atomic_file(path) as temporary:
            sf.write(temporary, wave, sr, subtype="PCM_16", format="WAV")
        hashes[path.name] = _sha256(path)
    write_text(manifest_path, json.dumps({"params": params, "files": hashes}, indent=2, sort_keys=True))
    log.info("generated %d demo voice files (%.0f s) in %s", len(paths), seconds, out)
    return paths
