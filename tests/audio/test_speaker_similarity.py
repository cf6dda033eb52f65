"""Speaker similarity (arvc.audio.score.speaker_similarity): the cosine of resemblyzer embeddings, checked
against resemblyzer's own pipeline; and the message naming arvc[score] where resemblyzer is missing."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

from arvc.audio import score as scoring
from arvc.audio.io import resample
from arvc.audio.score import ScoreDependencyError, score, speaker_similarity
from arvc.data.demo import synthesize_speech

SR = 40000
needs_resemblyzer = pytest.mark.skipif(
    importlib.util.find_spec("resemblyzer") is None,
    reason="resemblyzer (the arvc[score] extra) is not installed",
)


@pytest.fixture(scope="module")
def takes():
    """Two takes (different words) of the demo voice at 40 kHz."""
    return [synthesize_speech(3.0, SR, np.random.default_rng(seed)) for seed in (0, 1)]


@needs_resemblyzer
def test_identical_recordings_are_one(takes):
    x = takes[0]
    assert speaker_similarity(x, SR, x, SR) == pytest.approx(1.0, abs=1e-6)
    assert score(x, x, SR, metrics=("speaker",)).speaker_sim == pytest.approx(1.0, abs=1e-6)


@needs_resemblyzer
def test_matches_resemblyzer_own_pipeline(takes):
    resemblyzer = scoring._resemblyzer()  # imported (the webrtcvad stand-in is arvc's only part)
    a, b = takes[0], resample(takes[1], SR, 16000)
    encoder = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
    ea = encoder.embed_utterance(resemblyzer.preprocess_wav(a, source_sr=SR))
    eb = encoder.embed_utterance(resemblyzer.preprocess_wav(b, source_sr=16000))
    expected = float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))
    assert speaker_similarity(a, SR, b, 16000) == pytest.approx(expected, abs=1e-5)


@needs_resemblyzer
def test_other_voices_score_lower_than_the_same_voice(takes):
    x, other_take = takes
    same_voice = speaker_similarity(x, SR, other_take, SR)
    noise = 0.1 * np.random.default_rng(2).standard_normal(len(x)).astype(np.float32)
    # the demo voice read 0.6x slower: pitch and formants 0.6x, a larger, deeper speaker
    deeper = resample(other_take, SR, int(SR / 0.6))
    assert same_voice > 0.8
    assert speaker_similarity(x, SR, noise, SR) < same_voice - 0.2
    assert speaker_similarity(x, SR, deeper, SR) < same_voice - 0.15


@needs_resemblyzer
def test_silence_has_nothing_to_measure(takes):
    assert math.isnan(speaker_similarity(takes[0], SR, np.zeros(SR, np.float32), SR))


@needs_resemblyzer
def test_the_pkg_resources_stand_in_does_not_outlive_the_import(monkeypatch):
    if importlib.util.find_spec("pkg_resources") is not None:
        pytest.skip("this setuptools still has pkg_resources: no stand-in is made")
    for name in ("resemblyzer", "resemblyzer.audio", "resemblyzer.voice_encoder", "webrtcvad"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh, then restored
    assert scoring._resemblyzer().VoiceEncoder
    assert "pkg_resources" not in sys.modules


def test_a_missing_resemblyzer_names_the_extra(monkeypatch, takes):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import now raises ImportError
    with pytest.raises(ScoreDependencyError, match=r"resemblyzer.*arvc\[score\]"):
        score(takes[0], takes[0], SR, metrics=("f0", "speaker"))
    assert "speaker" in scoring.missing_metrics(("speaker",))
