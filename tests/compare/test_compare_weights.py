"""`arvc compare` scores each contestant on the weights its run evaluates (issue #33): AdamW+EMA on its
EMA, a schedule-free optimizer on its average x."""

import json

import pytest

from arvc.compare import run_compare
from arvc.compare.runner import run_folder
from arvc.config import load_config
from arvc.data.demo import generate_demo_voice
from arvc.data.split import SPLIT_FILE, read_split
from arvc.model import Synthesizer
from arvc.train.checkpoint import latest_checkpoint, load_checkpoint
from arvc.train.validation import Validator


def test_each_contestant_is_scored_on_its_evaluation_weights(tmp_path):
    generate_demo_voice(tmp_path / "voice", seconds=20, sr=16000, seed=1)
    out = tmp_path / "compare"
    names = ["AdamW+EMA", "AdamWScheduleFree"]
    result = run_compare(
        tmp_path / "voice", out, names, epochs=1, seeds=1, max_steps=2, overrides={"train.batch_size": 2}
    )
    assert result.ranked == names
    for name in names:
        run = run_folder(out, name, 1234)
        checkpoint = load_checkpoint(latest_checkpoint(run))
        averaged = checkpoint["averaged"]
        assert averaged["kind"] == ("ema" if name == "AdamW+EMA" else "schedule-free")
        cfg = load_config("tiny")
        net = Synthesizer(cfg)
        net.load_state_dict(averaged["generator"])
        records = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
        evaluator = Validator(cfg, out / "data", read_split(out / SPLIT_FILE).held, seed=1234)
        assert records[-1]["heldout_mel_l1"] == pytest.approx(evaluator(net.parameters()).mel_l1, rel=1e-6)
        summary = json.loads((run / "result.json").read_text())
        assert summary["ema"] == (0.99 if name == "AdamW+EMA" else None)
