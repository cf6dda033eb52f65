"""benchmarks/gather_compare.py: a comparison split over two processes (each its own --name and a share of the
contestants), gathered, is the comparison one `arvc compare` of them all makes; the gathered folder
continues as a comparison (its runs skipped); another setup is refused with nothing written."""

import importlib.util
import json
from pathlib import Path

import pytest

from arvc.compare import run_compare
from arvc.compare.report import collect_results
from arvc.data.demo import generate_demo_voice

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gather_compare.py"
SETUP = {"epochs": 1, "seeds": 2, "max_steps": 2, "overrides": {"train.batch_size": 2}}
OUTCOME = ("final_losses", "final_heldout_mel_l1", "best_heldout_mel_l1", "final_heldout_scores")


def _script():
    spec = importlib.util.spec_from_file_location("gather_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """The same comparison three ways: AdamW alone, RAdam alone, and both in one call."""
    root = tmp_path_factory.mktemp("gather")
    voice = root / "voice"
    generate_demo_voice(voice, seconds=20, sr=16000, seed=1)
    for name, contestants in (("a", ["AdamW"]), ("b", ["RAdam"]), ("whole", ["AdamW", "RAdam"])):
        run_compare(voice, root / name, contestants, **SETUP)
    return root, voice


def _outcomes(folder: Path) -> dict:
    return {
        (name, run["seed"]): {k: run[k] for k in OUTCOME}
        for name, entry in collect_results(folder).items()
        for run in entry["runs"]
    }


def _ranking(report: Path) -> list[str]:
    lines = report.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Ranked by"))
    return lines[start : lines.index("", start + 2)]


def test_two_halves_gathered_are_the_whole_comparison(halves, capsys):
    root, _ = halves
    dest = root / "gathered"
    assert _script().main([str(dest), str(root / "a"), str(root / "b"), "--report"]) == 0
    assert "4 runs gathered" in capsys.readouterr().out
    assert _outcomes(dest) == _outcomes(root / "whole")  # the same runs, bit for bit in what they trained to
    assert len(_outcomes(dest)) == 4
    setup = json.loads((dest / "compare.json").read_text())
    assert setup == json.loads((root / "whole" / "compare.json").read_text())
    assert _ranking(dest / "report.md") == _ranking(root / "whole" / "report.md")
    assert (dest / "report.html").is_file()


def test_the_gathered_folder_continues_as_a_comparison(halves):
    root, voice = halves
    dest = root / "continued"
    _script().gather(dest, [root / "a"])  # half the contestants kept, say in git; the other half still to run
    trained, skipped, running = [], [], []

    def follow(event, **info):
        if event == "run":
            running.append(info["name"])
        elif event == "skip":
            skipped.append(info["name"])
        elif event == "step":
            trained.append(running[-1])

    run_compare(voice, dest, ["AdamW", "RAdam"], progress=follow, **SETUP)
    assert skipped == ["AdamW", "AdamW"]  # seeds 1234 and 1235
    assert trained == ["RAdam"] * 4  # 2 seeds x 2 steps
    assert _outcomes(dest) == _outcomes(root / "whole")
    assert _script().gather(dest, [root / "a", root / "b"]) == []  # all there already: nothing copied


def test_another_setup_or_another_result_is_refused_and_nothing_written(halves, tmp_path):
    root, voice = halves
    other = tmp_path / "other"
    run_compare(voice, other, ["AdamW"], **{**SETUP, "max_steps": 1})
    dest = tmp_path / "dest"
    with pytest.raises(SystemExit, match="another max_steps"):
        _script().gather(dest, [root / "a", other])
    assert not dest.exists()
    # the same setup but a run that trained to something else (here: edited) is not taken as the same run
    edited = tmp_path / "edited"
    _script().gather(edited, [root / "a"])
    result = edited / "runs" / "AdamW" / "seed-1234" / "result.json"
    record = json.loads(result.read_text())
    result.write_text(json.dumps({**record, "final_heldout_mel_l1": record["final_heldout_mel_l1"] + 1}))
    with pytest.raises(SystemExit, match="AdamW seed 1234 differs"):
        _script().gather(dest, [root / "a", edited])
    assert not dest.exists()
