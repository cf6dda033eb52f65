"""benchmarks/gather_compare.py: a comparison split over two processes (each its own --name and a share of the
contestants), gathered, is the comparison one `arvc compare` of them all makes, figures included; the
gathered folder continues as a comparison (its runs skipped); another setup is refused with nothing
written."""

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


def _approx(record):
    """A number, or a dict of them, within float rounding of a training run's: relative 1e-5."""
    if isinstance(record, dict):
        return {k: _approx(v) for k, v in record.items()}
    return pytest.approx(record, rel=1e-5)


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
    # the training-loss figure is the one call's, drawn from the runs' metrics.csv (it was drawn empty
    # when only result.json was gathered); the others plot wall times, which differ between the calls
    for name, seed in _outcomes(dest):
        run = f"runs/{name}/seed-{seed}/metrics.csv"
        assert (dest / run).read_bytes() == (root / ("a" if name == "AdamW" else "b") / run).read_bytes()
    assert (dest / "loss_curves.png").read_bytes() == (root / "whole" / "loss_curves.png").read_bytes()
    assert "training-loss figure" not in (dest / "report.md").read_text()


def test_results_gathered_without_their_losses_get_them_later_and_are_said_to_lack_them(halves, tmp_path):
    """A folder gathered before metrics.csv was (only result.json) draws no loss figure, says which runs it
    lacks, and gets them from a later gather of the same runs."""
    from arvc.compare.report import write_report

    root, _ = halves
    dest = tmp_path / "kept"
    _script().gather(dest, [root / "a", root / "b"])
    for metrics in dest.glob("runs/*/seed-*/metrics.csv"):
        metrics.unlink()
    (dest / "runs" / "RAdam" / "seed-1234" / "metrics.csv").write_bytes(
        (root / "b" / "runs" / "RAdam" / "seed-1234" / "metrics.csv").read_bytes()
    )
    write_report(dest, collect_results(dest))
    report = (dest / "report.md").read_text()
    assert "(their metrics.csv is not in this folder), with the other seeds of their contestant: " in report
    assert "AdamW seed 1234, AdamW seed 1235, RAdam seed 1235." in report
    assert not (dest / "loss_curves.png").exists() and "loss_curves.png" not in report
    assert (dest / "mel_vs_time.png").is_file()

    assert _script().gather(dest, [root / "a", root / "b"]) == []  # no new run, but their losses
    assert len(list(dest.glob("runs/*/seed-*/metrics.csv"))) == 4
    write_report(dest, collect_results(dest))
    assert (dest / "loss_curves.png").read_bytes() == (root / "whole" / "loss_curves.png").read_bytes()


def test_every_contestant_keeps_one_line_style_in_every_figure():
    """Eleven contestants (`--optimizers all`) drew two with tab10's one blue; a contestant missing from
    one figure (a score it lacks) shifted the colours of the others there."""
    from arvc.compare.report import line_styles

    names = [f"c{i}" for i in range(14)]
    styles = line_styles(names)
    looks = {(style["color"], style["linestyle"]) for style in styles.values()}
    assert len(looks) == len(names)
    assert line_styles(names[:3]) == {name: styles[name] for name in names[:3]}


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
    # The same runs, to float rounding: bit for bit with torch's default threads; with one thread
    # (OMP_NUM_THREADS=1) a run trained late in a long-lived process (here, after ten others) has differed
    # in the last bits (2e-7 relative in a loss), as a CPU kernel's summation can depend on memory layout,
    # and the held-out scores built on them more (F0 and voicing decisions, PESQ): those are left out.
    continued, whole = _outcomes(dest), _outcomes(root / "whole")
    assert continued.keys() == whole.keys()
    for key, outcome in whole.items():
        for part in ("final_losses", "final_heldout_mel_l1", "best_heldout_mel_l1"):
            assert continued[key][part] == _approx(outcome[part]), (key, part)
    assert _script().gather(dest, [root / "a"]) == []  # all there already: nothing copied


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
