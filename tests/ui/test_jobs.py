"""The web UI's job slot and path rule, without a browser: what the buttons call."""

import importlib.util
import re
import time

import pytest
import torch

from arvc.data.demo import generate_demo_voice
from arvc.optim import OPTIMIZERS
from arvc.train.request import TrainRequest
from arvc.ui.jobs import Busy, Jobs

gradio = pytest.importorskip("gradio", reason="the UI needs the ui extra (pip install 'arvc[ui]')")
from arvc.ui.app import PathRefused, inside, optimizer_rows, runs_of  # noqa: E402


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    root = tmp_path_factory.mktemp("voice")
    generate_demo_voice(root, seconds=24, sr=16000, seed=3)
    return root


def _wait(jobs, predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = jobs.status()
        if predicate(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"timed out; status: {jobs.status()}")


def test_a_refused_request_takes_no_slot_and_writes_nothing(tmp_path):
    jobs = Jobs()
    with pytest.raises(ValueError, match="--lr"):
        jobs.start_training(TrainRequest(runs_dir=tmp_path / "runs", lr=-1.0))
    assert jobs.status() is None and not (tmp_path / "runs").exists()


def test_one_training_at_a_time_and_stop_saves_a_resumable_checkpoint(tmp_path, voice):
    jobs = Jobs()
    request = TrainRequest(dataset=voice, name="alice", runs_dir=tmp_path / "runs", epochs=50, batch_size=2)
    jobs.start_training(request)
    with pytest.raises(Busy, match="already running"):
        jobs.start_training(TrainRequest(dataset=voice, name="bob", runs_dir=tmp_path / "runs"))
    status = _wait(jobs, lambda s: s.step >= 2)
    assert status.state == "training" and status.total_steps == 50 * (status.total_steps // 50)
    assert status.losses and {"step", "loss_mel", "loss_g", "loss_d"} <= set(status.losses[-1])
    assert status.eta_s() is not None and status.eta_s() > 0
    assert any(
        "optimizer AdamW: lr=0.001" in line for line in status.log
    )  # the job's log, as the CLI prints it
    assert jobs.stop()
    assert jobs.wait(120)
    status = jobs.status()
    assert status.state == "stopped" and "checkpoint was saved" in status.message
    run = tmp_path / "runs" / "alice"
    assert runs_of(tmp_path / "runs") == ["alice"]
    assert not (run / "export" / "model.safetensors").exists()  # not exported, as after Ctrl-C

    stopped_at = status.step
    jobs.start_training(TrainRequest(resume=run, runs_dir=tmp_path / "runs", max_steps=stopped_at + 1))
    assert jobs.wait(120)
    status = jobs.status()
    assert status.state == "finished", status.message
    assert status.step == stopped_at + 1 and status.first_step <= stopped_at


@pytest.mark.parametrize(
    "stopped_by, state",
    [(None, "finished"), ("max_steps", "finished"), ("early_stop", "finished"), ("SIGTERM", "stopped"),
     ("stop request", "stopped")],
)  # fmt: skip
def test_how_a_job_ended_is_the_train_layers_classification(tmp_path, stopped_by, state):
    from arvc.train.faults import interrupted
    from arvc.ui.jobs import JobStatus

    jobs = Jobs()
    ends = lambda callbacks, stop: (stopped_by, {"summary": "done"})  # noqa: E731
    jobs._start(JobStatus("train", "run", tmp_path), ends)
    assert jobs.wait(30)
    status = jobs.status()
    assert status.state == state and (state == "stopped") is interrupted(stopped_by)
    assert status.message == "done" if state == "finished" else "resume the run to continue" in status.message


def test_the_page_finds_runs_samples_and_exports_where_the_run_folder_says(tmp_path):
    """The page reads a run's files through the layout training writes them by (RunFolder), and lists as
    resumable only the runs `--resume` would find a checkpoint in."""
    from arvc.data.outputs import RunFolder
    from arvc.train.checkpoint import checkpoint_path
    from arvc.ui.app import _samples, exports_of
    from arvc.ui.jobs import JobStatus

    run = RunFolder(tmp_path / "runs" / "alice")
    for folder in (run.epoch_samples(2), run.epoch_samples(10), run.sample_originals):
        folder.mkdir(parents=True)
        (folder / "a_1.wav").write_bytes(b"")
    for folder in (run.export, run.best_export):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"")
    finished = JobStatus(
        "train", "alice", run.root, state="finished", result={"samples_dir": str(run.samples)}
    )
    original, converted = str(run.sample_originals / "a_1.wav"), str(run.epoch_samples(10) / "a_1.wav")
    assert _samples(finished) == (original, converted, "a_1, converted at epoch 10")
    assert exports_of(tmp_path / "runs") == sorted([str(run.export), str(run.best_export)])

    assert runs_of(tmp_path / "runs") == []  # no checkpoint yet
    run.checkpoints.mkdir()
    (run.checkpoints / "notes.pt").write_bytes(b"")  # not a checkpoint's name: resume would not find it
    assert runs_of(tmp_path / "runs") == []
    checkpoint_path(run.root, 1, 5).write_bytes(b"")
    assert runs_of(tmp_path / "runs") == ["alice"]


def test_the_summary_names_the_metric_that_chose_the_best_model(tmp_path, voice):
    """With --select mcd_db the summary said "best held-out mel L1 ... at epoch E", E being MCD's choice."""
    jobs = Jobs()
    request = TrainRequest(
        dataset=voice, name="sel", runs_dir=tmp_path / "runs", epochs=1, batch_size=2, select="mcd_db"
    )
    jobs.start_training(request)
    assert jobs.wait(300)
    status = jobs.status()
    assert status.state == "finished", status.message
    assert re.search(r"best held-out mcd_db \d+\.\d{4} at epoch 1", status.message), status.message


def test_a_failing_job_is_reported_and_frees_the_slot(tmp_path, voice, monkeypatch):
    import arvc.train.request as request_module

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(request_module, "prepare_data", broken)
    jobs = Jobs()
    jobs.start_training(TrainRequest(dataset=voice, name="full", runs_dir=tmp_path / "runs"))
    assert jobs.wait(60)
    assert jobs.status().state == "failed" and "No space left" in jobs.status().message
    assert not jobs.running()


def test_paths_outside_the_server_folder_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "voice").mkdir(parents=True)
    assert inside(root, "voice", "dataset") == (root / "voice").resolve()
    assert inside(root, str(root / "voice"), "dataset") == (root / "voice").resolve()
    assert inside(root, "  ", "dataset") is None
    for outside in ("..", "../other", "/etc/passwd", "voice/../../x"):
        with pytest.raises(PathRefused, match="outside the server's folder"):
            inside(root, outside, "dataset")
    (root / "link").symlink_to(tmp_path)  # a link that leads out is outside too
    with pytest.raises(PathRefused):
        inside(root, "link", "dataset")


def test_the_optimizer_table_is_the_registry():
    rows = optimizer_rows()
    assert [r[1] for r in rows] == list(OPTIMIZERS)
    assert [r[0].count("★") for r in rows] == [spec.rating for spec in OPTIMIZERS.values()]
    # The guide's five first, with its ratings.
    assert [r[1] for r in rows[:5]] == ["AdamW", "RAdam", "AnyPrecisionAdamW", "AdaBelief", "AdaBeliefV2"]
    assert [r[0].count("★") for r in rows[:5]] == [5, 4, 4, 3, 3]


def test_a_comparison_runs_in_the_slot_and_leaves_its_report(tmp_path, voice):
    jobs = Jobs()
    out = tmp_path / "compare" / "mine"
    with pytest.raises(ValueError):
        jobs.start_compare(voice, out, "AdamW,NoSuchOptimizer", epochs=1, seeds=1)
    assert jobs.status() is None and not out.exists()
    small = {"train.batch_size": 2}  # 24 s of audio: 7 training pieces
    # (issue 33's contestants among them: each run keeps the weights it evaluates; that compare scores
    # those is tests/compare/test_compare_weights.py)
    names = "AdamW,AdamWScheduleFree,AdamW+EMA"
    jobs.start_compare(voice, out, names, epochs=1, seeds=1, max_steps=2, overrides=small)
    with pytest.raises(Busy):
        jobs.start_training(TrainRequest(dataset=voice, name="meanwhile", runs_dir=tmp_path / "runs"))
    assert jobs.wait(300)
    status = jobs.status()
    assert status.state == "finished", status.message
    assert status.result["report"] == out / "report.md" and (out / "report.md").is_file()
    report = (out / "report.md").read_text()
    assert all(f"{name}: " in report for name in names.split(","))  # ranked: each one's seed finished
    from arvc.compare.runner import run_folder
    from arvc.train.checkpoint import latest_checkpoint, load_checkpoint

    for name, kind in (("AdamWScheduleFree", "schedule-free"), ("AdamW+EMA", "ema")):
        assert load_checkpoint(latest_checkpoint(run_folder(out, name, 1234)))["averaged"]["kind"] == kind


def test_a_comparison_where_nothing_finished_is_a_failed_job(tmp_path, voice, monkeypatch):
    import arvc.compare.runner as runner

    def train(options, callbacks):
        raise ImportError("no such kernel")

    monkeypatch.setattr(runner, "train", train)
    jobs = Jobs()
    jobs.start_compare(voice, tmp_path / "c", "AdamW", epochs=1, seeds=1, overrides={"train.batch_size": 2})
    assert jobs.wait(120)
    status = jobs.status()
    assert status.state == "failed" and "AdamW seed 1234: ImportError: no such kernel" in status.message


def test_a_comparison_with_too_large_a_batch_fails_before_any_run(tmp_path, voice):
    jobs = Jobs()
    jobs.start_compare(voice, tmp_path / "c", "AdamW", epochs=1, seeds=1, overrides={"train.batch_size": 64})
    assert jobs.wait(120)
    assert jobs.status().state == "failed" and "lower --batch-size" in jobs.status().message
    assert not (tmp_path / "c" / "runs").exists()


def test_the_progress_plot_draws_a_held_out_curve_of_one_point(tmp_path):
    # gradio's LinePlot drew a series of one point as nothing (a line needs two), with its legend entry
    # there: after the first evaluation the held-out curve was invisible until the second.
    import csv

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from arvc.train.logs import VALIDATION_FIELDS
    from arvc.ui.app import HELD_OUT, SERIES, _loss_figure
    from arvc.ui.jobs import JobStatus

    with (tmp_path / "validation.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=VALIDATION_FIELDS)
        writer.writeheader()
        writer.writerow({"epoch": 1, "step": 3, "val_mel_l1": "1.5", "val_stft": "6.0", "best": "yes"})
    losses = [{"step": s, "loss_mel": 60.0 - s, "loss_g": 90.0, "loss_d": 7.0} for s in (1, 2, 3)]
    status = JobStatus(kind="train", name="run", folder=tmp_path, state="training", losses=losses)
    figure = _loss_figure(status)
    (axis,) = figure.axes
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert list(lines) == list(SERIES)
    assert [text.get_text() for text in axis.get_legend().get_texts()] == list(SERIES)
    held_out = lines[HELD_OUT]
    assert list(held_out.get_xdata()) == [3] and list(held_out.get_ydata()) == [1.5 * 45]
    assert held_out.get_marker() not in (None, "", "None", " ") and held_out.get_markersize() > 0
    assert held_out.get_visible() and len(lines["loss_mel"].get_xdata()) == 3
    FigureCanvasAgg(figure).draw()  # it renders

    # on the run's own mel loss scale: its c_mel, not RVC's 45 written into the page
    scaled = JobStatus(kind="train", name="run", folder=tmp_path, state="training", mel_weight=20.0)
    (axis,) = _loss_figure(scaled).axes
    assert [list(line.get_ydata()) for line in axis.get_lines() if line.get_label() == HELD_OUT] == [[30.0]]

    empty = _loss_figure(None)  # before a job: every series named, nothing drawn
    assert [line.get_label() for line in empty.axes[0].get_lines()] == list(SERIES)


def test_the_progress_plot_shows_the_held_out_scores_below_the_losses(tmp_path):
    import csv

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from arvc.train.logs import VALIDATION_FIELDS
    from arvc.ui.app import SERIES, _loss_figure
    from arvc.ui.jobs import JobStatus

    with (tmp_path / "validation.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=VALIDATION_FIELDS)
        writer.writeheader()
        common = {"val_mel_l1": "1.5", "val_stft": "6.0", "val_f0_rmse_cents": "80", "val_mcd_db": "9.5"}
        writer.writerow({"epoch": 1, "step": 3, **common, "val_pesq_wb": "1.2", "best": "yes"})
        writer.writerow(
            {"epoch": 2, "step": 6, **common, "val_mcd_db": "8.5", "val_f0_corr": "nan", "best": "yes"}
        )
    status = JobStatus(kind="train", name="run", folder=tmp_path, state="training", losses=[])
    figure = _loss_figure(status)
    losses, *scores = figure.axes
    assert [line.get_label() for line in losses.get_lines()] == list(SERIES)
    assert [axis.get_title() for axis in scores] == [
        "F0 RMSE (cents)",
        "MCD (dB)",
        "PESQ-wb",
    ]  # no value: none
    (mcd,) = scores[1].get_lines()
    assert list(mcd.get_xdata()) == [3, 6] and list(mcd.get_ydata()) == [9.5, 8.5]
    assert list(scores[2].get_lines()[0].get_xdata()) == [3], "PESQ: only the evaluations that scored it"
    FigureCanvasAgg(figure).draw()


@pytest.mark.skipif(
    importlib.util.find_spec("resemblyzer") is None, reason="resemblyzer (arvc[score]) is not installed"
)
@pytest.mark.usefixtures("speaking_generator")  # tests/conftest.py: conversions that hold speech
def test_the_progress_plot_shows_speaker_similarity_of_a_real_run(tmp_path, voice):
    from typer.testing import CliRunner

    from arvc.cli import app
    from arvc.train.logs import read_validation
    from arvc.ui.app import _loss_figure
    from arvc.ui.jobs import JobStatus

    args = ["--config", "tiny", "--batch-size", "2", "--epochs", "1"]  # 2 steps, then the evaluation
    result = CliRunner().invoke(app, ["train", str(voice), "--runs-dir", str(tmp_path), "--name", "r", *args])
    assert result.exit_code == 0, result.output
    (row,) = read_validation(tmp_path / "r")
    status = JobStatus(kind="train", name="r", folder=tmp_path / "r", state="finished", losses=[])
    _, *scores = _loss_figure(status).axes
    (speaker,) = [axis for axis in scores if axis.get_title() == "Speaker sim"]
    (line,) = speaker.get_lines()
    assert list(line.get_xdata()) == [int(row["step"])]
    assert list(line.get_ydata()) == [float(row["val_speaker_sim"])] and 0 < float(row["val_speaker_sim"]) < 1


@pytest.mark.parametrize(
    "count, line",
    [
        (1, "Device: **cuda:0 (NVIDIA GeForce RTX 4070, auto: CUDA available)**"),
        (0, "Device: **cpu (auto: no CUDA device)**"),
    ],
)
def test_the_page_shows_the_device_auto_chose(tmp_path, gpus, count, line):
    from arvc.ui.app import build_app

    gpus(count)  # simulated: the page is only built, nothing runs
    page = build_app(tmp_path)
    shown = [block.value for block in page.blocks.values() if getattr(block, "elem_id", None) == "device"]
    assert shown and shown[0].startswith(line), shown


def test_a_comparison_on_a_device_that_cannot_be_used_takes_no_slot(tmp_path, gpus):
    gpus(0)
    jobs = Jobs()
    with pytest.raises(ValueError, match="--device cuda: no CUDA GPU"):
        jobs.start_compare(None, tmp_path / "compare" / "x", "all", device="cuda")
    with pytest.raises(ValueError, match="--device cuda: no CUDA GPU"):
        jobs.start_training(TrainRequest(runs_dir=tmp_path / "runs", device="cuda"))
    assert jobs.status() is None and not (tmp_path / "runs").exists() and not (tmp_path / "compare").exists()


def test_the_train_tab_passes_content_features_and_hubert_so_an_rvc_config_can_start(tmp_path, monkeypatch):
    # The Train tab had no features or HuBERT fields: every v1-*/v2-* config in its Config list was refused
    # (an RVC config needs HuBERT features), with advice about command-line flags the page does not have.
    from arvc.ui import app as ui_app

    said = []
    monkeypatch.setattr(ui_app.gr, "Warning", lambda message: said.append(message))
    page = ui_app.build_app(tmp_path, Jobs())
    (start,) = [f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == "start_training"]
    common = dict(opt="AdamW", lr_value=1e-3, epochs_value=2, batch_value=2, precision_value="auto",
                  use_8bit=False, steps_value=0)  # fmt: skip
    start("", "r", "v2-40k", ui_app.AUTO_F0, "", ui_app.AUTO_FEATURES, "", **common)
    assert "--features hubert" in said[-1], said
    start("", "r", "v2-40k", ui_app.AUTO_F0, "", "hubert", "missing_hubert.pt", **common)
    assert "--features hubert needs --hubert" in said[-1] and "missing_hubert.pt" in said[-1], said
    assert not (tmp_path / "runs").exists()


def test_a_comparison_on_an_rvc_config_with_mel_features_takes_no_slot(tmp_path):
    """The Compare job's pre-check left out the config, overrides and --allow-mel-rvc-config: it checked
    "tiny", took the slot and refused in the job's thread."""
    jobs = Jobs()
    out = tmp_path / "compare" / "x"
    with pytest.raises(ValueError, match="--allow-mel-rvc-config"):
        jobs.start_compare(None, out, "AdamW", config="v2-40k", epochs=1, seeds=1)
    with pytest.raises(ValueError, match="hidden_channels"):
        jobs.start_compare(None, out, "AdamW", overrides={"model.hidden_channels": 0}, epochs=1, seeds=1)
    assert jobs.status() is None and not (tmp_path / "compare").exists()


def test_the_train_tab_passes_the_ema_decay_and_its_refusals_take_no_slot(tmp_path, monkeypatch):
    """The Train tab's EMA field reaches the request: a decay out of (0, 1), or an EMA on top of a
    schedule-free optimizer (issue #33), is the CLI's error, before any work; 0 means off."""
    from arvc.ui import app as ui_app

    said = []
    monkeypatch.setattr(ui_app.gr, "Warning", lambda message: said.append(message))
    jobs = Jobs()
    page = ui_app.build_app(tmp_path, jobs)
    (start,) = [f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == "start_training"]
    common = dict(lr_value=1e-3, epochs_value=2, batch_value=2, precision_value="auto", use_8bit=False,
                  steps_value=0)  # fmt: skip
    start("", "r", "tiny", ui_app.AUTO_F0, "", ui_app.AUTO_FEATURES, "", opt="AdamW", ema_value=1.5, **common)
    assert said[-1].startswith("error: --ema 1.5: the EMA decay must be between 0 and 1"), said
    start("", "r", "tiny", ui_app.AUTO_F0, "", ui_app.AUTO_FEATURES, "", opt="AdamWScheduleFree",
          ema_value=0.999, **common)  # fmt: skip
    assert "--ema 0.999 with AdamWScheduleFree" in said[-1] and "drop --ema" in said[-1], said
    assert jobs.status() is None and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "optimizer, ema, kind", [("AdamWScheduleFree", 0, "schedule-free"), ("AdamW", 0.9, "ema")]
)
def test_an_averaging_run_trains_resumes_and_exports_either_weights_from_the_page(
    tmp_path, voice, monkeypatch, optimizer, ema, kind
):
    """Issue #33 through the page's buttons: Start (a schedule-free optimizer, or AdamW with the EMA
    field), Resume (the averaging continues), and the Models tab's Export of the run's averaged weights
    (the default) or its live weights, as `arvc export --weights` (tests/cli/test_train_weights.py)."""
    import shutil

    from safetensors.torch import load_file

    from arvc.train.checkpoint import latest_checkpoint, load_checkpoint
    from arvc.ui import app as ui_app

    said = []
    monkeypatch.setattr(ui_app.gr, "Warning", lambda message: said.append(message))
    shutil.copytree(voice, tmp_path / "voice")
    jobs = Jobs()
    page = ui_app.build_app(tmp_path, jobs)
    fns = {getattr(f.fn, "__name__", ""): f.fn for f in page.fns.values()}
    settings = dict(lr_value=1e-3, epochs_value=2, batch_value=2, precision_value="auto", use_8bit=False)
    fns["start_training"]("voice", "r", "tiny", ui_app.AUTO_F0, "", ui_app.AUTO_FEATURES, "", opt=optimizer,
                          steps_value=2, ema_value=ema, **settings)  # fmt: skip
    assert jobs.wait(120) and jobs.status().state == "finished", (said, jobs.status().message)
    run = tmp_path / "runs" / "r"
    first = load_checkpoint(latest_checkpoint(run))
    assert first["step"] == 2 and first["optim_g"]["name"] == optimizer
    assert first["config"]["train"]["ema"] == (ema or None) and first["averaged"]["kind"] == kind

    fns["resume_training"]("r")  # to the end of epoch 2
    assert jobs.wait(120) and jobs.status().state == "finished", (said, jobs.status().message)
    last = load_checkpoint(latest_checkpoint(run))
    assert last["step"] > 2 and last["epoch"] == 2 and last["averaged"]["kind"] == kind
    if kind == "ema":
        assert last["averaged"]["updates"] == last["step"], "the EMA went on through the resume"

    export = fns["export"]
    for weights, expected in (("averaged", last["averaged"]["generator"]), ("live", last["generator"])):
        result = export("runs/r", False, weights)
        assert result["weights"] == (kind if weights == "averaged" else "live"), result
        exported = load_file(run / "export" / "model.safetensors")
        assert all(torch.equal(exported[k], expected[k]) for k in exported), weights
    assert not all(torch.equal(last["generator"][k], last["averaged"]["generator"][k]) for k in exported)
    assert not said, said


def test_an_empty_epoch_samples_folder_shows_the_previous_epochs_samples(tmp_path):
    """A run that crashed while writing its newest samples leaves an empty samples/epoch_NNNN: the page
    showed an IndexError on every tick; now it shows the newest epoch that has samples (or none)."""
    from arvc.data.outputs import RunFolder
    from arvc.ui.app import _samples
    from arvc.ui.jobs import JobStatus

    run = RunFolder(tmp_path / "runs" / "alice")
    run.epoch_samples(12).mkdir(parents=True)  # the crash: made, nothing written into it
    stopped = JobStatus("train", "alice", run.root, state="stopped", result={"samples_dir": str(run.samples)})
    assert _samples(stopped) == (None, None, "")
    for folder in (run.epoch_samples(10), run.sample_originals):
        folder.mkdir(parents=True)
        (folder / "a_1.wav").write_bytes(b"")
    original, converted = str(run.sample_originals / "a_1.wav"), str(run.epoch_samples(10) / "a_1.wav")
    assert _samples(stopped) == (original, converted, "a_1, converted at epoch 10")


def test_the_recommendation_for_auto_precision_is_for_the_precision_training_will_use(gpus):
    """The Train tab's recommendation took precision `auto` as fp32: on a bf16 GPU a long run was told
    AdamW, where training in bf16 (what auto trains in there) is recommended AnyPrecisionAdamW + Kahan."""

    from arvc.optim.recommend import recommend
    from arvc.ui.app import _recommendation

    gpus(1)  # an RTX 4070: compute capability 8.9, auto trains in bf16
    bf16, fp32 = recommend(600, "bf16").optimizer, recommend(600, "fp32").optimizer
    assert bf16 != fp32
    assert f"600 epochs:** {bf16}," in _recommendation(600, "auto")  # the server's device: auto
    assert f"600 epochs:** {bf16}," in _recommendation(600, "auto", "cuda")
    assert f"600 epochs:** {fp32}," in _recommendation(600, "auto", "cpu")  # the CPU trains in fp32
    assert f"600 epochs:** {fp32}," in _recommendation(600, "fp32", "cuda")  # as chosen
