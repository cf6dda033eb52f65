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


def _same_training(folder: Path, other: Path) -> None:
    """The runs of two folders trained to the same losses and held-out mel L1, to float rounding (relative
    1e-5). They have matched bit for bit in the tests' setting (2 threads, tests/conftest.py); with
    OMP_NUM_THREADS=1 a run trained late in a long-lived process (the continued comparison below, after
    eight others) has differed in the last bits (2e-7 relative in a loss), as a CPU kernel's summation
    can depend on memory layout — and the held-out scores built on them more (F0 and voicing decisions,
    PESQ): left out."""
    ours, theirs = _outcomes(folder), _outcomes(other)
    assert ours.keys() == theirs.keys()
    for key, outcome in theirs.items():
        for part in ("final_losses", "final_heldout_mel_l1", "best_heldout_mel_l1"):
            assert ours[key][part] == _approx(outcome[part]), (key, part)


def _losses_came_with_them(dest: Path, root: Path) -> None:
    """Each run gathered from the halves holds its own metrics.csv, byte for byte."""
    for name, seed in _outcomes(dest):
        run = f"runs/{name}/seed-{seed}/metrics.csv"
        assert (dest / run).read_bytes() == (root / ("a" if name == "AdamW" else "b") / run).read_bytes()


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
    _same_training(dest, root / "whole")
    assert len(_outcomes(dest)) == 4
    setup = json.loads((dest / "compare.json").read_text())
    assert setup == json.loads((root / "whole" / "compare.json").read_text())
    assert _ranking(dest / "report.md") == _ranking(root / "whole" / "report.md")
    assert (dest / "report.html").is_file()
    # each run's losses come with it (the training-loss figure reads them: it was drawn empty when only
    # result.json was gathered; test_every_contestant_... checks what it draws)
    _losses_came_with_them(dest, root)
    assert (dest / "loss_curves.png").is_file()
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
    _losses_came_with_them(dest, root)
    write_report(dest, collect_results(dest))
    assert (dest / "loss_curves.png").is_file()
    assert "training-loss figure" not in (dest / "report.md").read_text()

    # an interrupted attempt's losses in the folder (no result.json) give way to the finished run's
    other = tmp_path / "other"
    stale = other / "runs" / "RAdam" / "seed-1234" / "metrics.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("epoch,step,loss_d,loss_g,loss_mel\n1,1,1,1,1\n")
    assert _script().gather(other, [root / "b"]) == [("RAdam", 1234), ("RAdam", 1235)]
    assert stale.read_bytes() == (root / "b" / "runs" / "RAdam" / "seed-1234" / "metrics.csv").read_bytes()


def test_every_contestant_keeps_one_line_style_in_every_figure(halves, tmp_path, monkeypatch):
    """What the figures draw: every run's losses, and each contestant in one colour and line style in
    every figure — eleven contestants (`--optimizers all`) drew two in tab10's one blue, and a contestant
    missing from one figure (here AdamW, whose held-out scores are removed) shifted the others' colours
    there. Fourteen contestants' styles are all different."""
    import matplotlib.axes

    from arvc.compare.report import write_report

    root, _ = halves
    dest = tmp_path / "kept"
    _script().gather(dest, [root / "a", root / "b"])
    for result in dest.glob("runs/AdamW/seed-*/result.json"):
        record = json.loads(result.read_text())
        for epoch in record["epoch_records"]:
            epoch.pop("heldout_scores", None)
        result.write_text(json.dumps(record))
    drawn = []
    plot = matplotlib.axes.Axes.plot

    def recording(ax, *args, **kwargs):
        lines = plot(ax, *args, **kwargs)
        drawn.extend((id(ax.figure), line.get_label(), line.get_color(), line.get_linestyle(),
                      len(line.get_xdata())) for line in lines)  # fmt: skip
        return lines

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording)
    write_report(dest, collect_results(dest))
    looks = {
        name: {(color, style) for _, label, color, style, _ in drawn if label == name}
        for name in ("AdamW", "RAdam")
    }
    assert all(len(look) == 1 for look in looks.values()) and looks["AdamW"] != looks["RAdam"], looks
    figures = {name: {figure for figure, label, *_ in drawn if label == name} for name in ("AdamW", "RAdam")}
    assert len(figures["RAdam"]) == 4 and len(figures["AdamW"]) == 3  # losses, lr, mel L1 (+ scores)
    steps = [n for _, label, _, _, n in drawn if label == "AdamW"][:3]  # the loss figure's mel, G, D
    assert steps == [2, 2, 2]  # max_steps 2: both logged steps of each curve

    from arvc.compare.report import line_styles

    names = [f"c{i}" for i in range(14)]
    styles = line_styles(names)
    assert len({(style["color"], style["linestyle"]) for style in styles.values()}) == len(names)


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
    _same_training(dest, root / "whole")
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
