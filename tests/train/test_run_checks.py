"""Every check of a run's settings (`arvc.train.settings.check_run`) fires from each way a run starts.

`arvc train`, the web UI's Train tab, the Python API (`train(TrainOptions)`) and `arvc compare`'s runs all
go through the one function: each bad setting is refused with the same words, before any work, and
nothing is written. (What only a request has, its flags and the run folder, is `plan_training`'s:
tests/train/test_request.py and tests/cli/test_train_input.py.)
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from arvc.cli import app
from arvc.config import apply_overrides, load_config
from arvc.train.checkpoint import CHECKPOINT_FORMAT
from arvc.train.loop import TrainOptions, train
from arvc.train.request import TrainRequest
from arvc.ui.jobs import Jobs

RUN = "r"
ADAMW = {"optimizer": "AdamW", "lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-9, "weight_decay": 0.01,
         "use_8bit": False, "kwargs": {}}  # fmt: skip


def _a_saved_run(runs):
    """runs/r with one checkpoint (tiny config, AdamW, trained in bf16): what the resume checks read."""
    path = runs / RUN / "checkpoints" / "ckpt_E00001_S00000001.pt"
    path.parent.mkdir(parents=True)
    optim = {"name": "AdamW", "hyperparameters": ADAMW, "state": {}}
    torch.save(
        {"format": CHECKPOINT_FORMAT, "config": load_config("tiny").to_dict(), "epoch": 1, "step": 1,
         "precision": "bf16", "generator": {}, "discriminator": {}, "optim_g": optim, "optim_d": optim},
        path,
    )  # fmt: skip


# One row per check: (the setting as TrainOptions fields / TrainRequest fields (the web UI) / CLI flags,
# the words every entry point refuses it with). `resume`: the run has a checkpoint and is resumed.
CHECKS = {
    "optimizer value": (
        {"lr": -1.0}, {"lr": -1.0}, ["--lr", "-1"], "-1.0 must be a finite number > 0",
    ),
    "unknown precision": (
        {"precision": "fp8"}, {"precision": "fp8"}, ["--precision", "fp8"],
        "unknown precision 'fp8'; valid: auto, fp32, bf16, fp16",
    ),
    "unknown optimizer": (
        {"optimizer": "Adam"}, {"optimizer": "Adam"}, ["--optimizer", "Adam"],
        "Unknown optimizer 'Adam'; valid names",
    ),
    "unknown device": (
        {"device": "gpu"}, {"device": "gpu"}, ["--device", "gpu"], "gpu: unknown device",
    ),
    "--zero with --use-8bit": (
        {"zero": True, "use_8bit": True}, {"zero": True, "use_8bit": True}, ["--zero", "--use-8bit"],
        "--zero and --use-8bit cannot be combined",
    ),
    "--ema with a schedule-free optimizer": (
        {"optimizer": "AdamWScheduleFree", "config": {"train.ema": 0.999}},
        {"optimizer": "AdamWScheduleFree", "ema": 0.999},
        ["--optimizer", "AdamWScheduleFree", "--ema", "0.999"],
        "--ema 0.999 with AdamWScheduleFree",
    ),
    "--batch-size auto with several processes": (
        {"auto_batch_size": True, "env": {"WORLD_SIZE": "2"}},
        {"batch_size": "auto", "env": {"WORLD_SIZE": "2"}},
        ["--batch-size", "auto", "env", "WORLD_SIZE=2"],
        "--batch-size auto fits one process",
    ),
    "resume: another precision": (
        {"resume": True, "precision": "fp16"}, {"resume": True, "precision": "fp16"},
        ["--resume", "--precision", "fp16"], "was trained in bf16; resume it in the same precision",
    ),
    "resume: another optimizer setting": (
        {"resume": True, "eps": 1e-8}, {"resume": True, "eps": 1e-8}, ["--resume", "--eps", "1e-8"],
        r"Resuming keeps the run's AdamW hyperparameters, but these differ \(eps: 1e-09 -> 1e-08\)",
    ),
    "resume: a fixed config setting": (
        {"resume": True, "config": {"train.seed": 7}}, {"resume": True, "seed": 7},
        ["--resume", "--seed", "7"],
        r"cannot resume .* with changed settings \(train.seed: 1234 -> 7\)",
    ),
}  # fmt: skip


def _python(tmp_path, fields):
    fields = dict(fields)
    runs = tmp_path / "runs"
    config = apply_overrides(load_config("tiny"), fields.pop("config", {}))
    if fields.pop("resume", False):
        fields["resume"] = runs / RUN
    train(TrainOptions(run_dir=runs / RUN, data_dir=tmp_path / "data", config=config, **fields))


def _web_ui(tmp_path, fields):
    fields = dict(fields)
    runs = tmp_path / "runs"
    if fields.pop("resume", False):
        fields["resume"] = runs / RUN
    jobs = Jobs()
    try:
        jobs.start_training(TrainRequest(runs_dir=runs, name=RUN, **fields))
    finally:
        assert jobs.status() is None, "a refused request takes no job slot"


def _cli(tmp_path, args):
    resume = ["--resume", str(tmp_path / "runs" / RUN)] if "--resume" in args else []
    args = [
        "train",
        "--runs-dir",
        tmp_path / "runs",
        "--name",
        RUN,
        *resume,
        *(a for a in args if a != "--resume"),
    ]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    raise RuntimeError(" ".join(result.output.split()))  # the error: line, unwrapped


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("entry", ["python", "web ui", "cli"])
@pytest.mark.parametrize("check", list(CHECKS))
def test_every_check_fires_from_every_entry_point_before_any_work(tmp_path, monkeypatch, entry, check):
    python, request, flags, message = CHECKS[check]
    fields = {"python": python, "web ui": request, "cli": flags}[entry]
    if entry == "cli":
        if "env" in fields:
            name, value = fields[fields.index("env") + 1].split("=")
            monkeypatch.setenv(name, value)
            fields = fields[: fields.index("env")]
        resumed = "--resume" in fields
    else:
        fields = dict(fields)
        for name, value in fields.pop("env", {}).items():
            monkeypatch.setenv(name, value)
        resumed = fields.get("resume", False)
    if resumed:
        _a_saved_run(tmp_path / "runs")
    before = _tree(tmp_path)
    start = {"python": _python, "web ui": _web_ui, "cli": _cli}[entry]
    with pytest.raises((ValueError, RuntimeError, ImportError), match=message):
        start(tmp_path, fields)
    assert _tree(tmp_path) == before, "nothing is written"


def test_compares_runs_go_through_the_same_check(tmp_path, monkeypatch):
    """A contestant is a run started from Python: its settings are refused by the same check (recorded as
    that contestant's failure), before its run folder is made."""
    import arvc.train.loop as loop
    from arvc.compare import run_compare
    from arvc.data.demo import generate_demo_voice

    checked = []
    real = loop.check_run
    monkeypatch.setattr(
        loop, "check_run", lambda options, **kw: checked.append(options.optimizer) or real(options, **kw)
    )
    generate_demo_voice(tmp_path / "voice", seconds=20, sr=16000, seed=1)
    result = run_compare(
        tmp_path / "voice", tmp_path / "c", "AdamWScheduleFree", epochs=1, seeds=1, max_steps=1,
        overrides={"train.batch_size": 2, "train.ema": 0.999},
    )  # fmt: skip
    (run,) = result.results["AdamWScheduleFree"]["runs"]
    assert "--ema 0.999 with AdamWScheduleFree" in run["error"] and checked == ["AdamWScheduleFree"]
    assert not (tmp_path / "c" / "runs" / "AdamWScheduleFree" / "seed-1234" / "checkpoints").exists()


def test_a_checkpoint_keeps_the_run_settings_and_a_resume_reads_them_back(tmp_path, data_dir):
    """RunSettings.saved() is what every checkpoint keeps of a run's settings (those the run ran: its
    config with the memory plan's choices); check_run on resume, asked for none of them, reads the
    precision, TF32 and the optimizer's hyperparameters back from it. (The config a resume runs is the
    caller's from Python, compared with the checkpoint's by check_resume_config; `arvc train --resume`
    takes the checkpoint's: tests/train/test_request.py.)"""
    from trainkit import options

    from arvc.train.checkpoint import latest_checkpoint, load_checkpoint
    from arvc.train.settings import check_run

    opts = options(
        tmp_path, data_dir, optimizer="RAdam", lr=2e-3, precision="bf16", max_steps=1, device="cpu"
    )
    settings = check_run(opts)
    train(settings)
    saved = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    expected = settings.saved()  # with the memory plan's choice in it (the run's `auto` checkpointing)
    planned = expected["config"]["train"]["checkpointing"] = saved["config"]["train"]["checkpointing"]
    assert planned in ("on", "off") and settings.config.train.checkpointing == "auto"
    assert {key: saved[key] for key in expected} == expected
    resumed = check_run(options(tmp_path, data_dir, resume=tmp_path / "run", device="cpu"))
    assert (resumed.precision, resumed.tf32, resumed.hp) == (settings.precision, settings.tf32, settings.hp)
    assert resumed.precision == "bf16" and resumed.hp.optimizer == "RAdam" and resumed.hp.lr == 2e-3


def test_a_pretrained_file_that_does_not_fit_is_refused_by_the_check_before_any_work(tmp_path, data_dir):
    """The fit of --pretrained-g/-d is one of check_run's checks, for every entry point (it was found only
    when the loop loaded the weights: after preprocessing for `arvc train`)."""
    from safetensors.torch import save_file
    from trainkit import options, tiny

    from arvc.model import Synthesizer
    from arvc.modelfile.formats import EXPORT_FORMAT
    from arvc.modelfile.read import PretrainedError
    from arvc.train.settings import check_run

    cfg = tiny()
    other = tmp_path / "narrow.safetensors"
    narrow = apply_overrides(cfg, {"model.hidden_channels": 32})
    weights = {k: v for k, v in Synthesizer(narrow).state_dict().items() if not k.startswith("enc_q.")}
    save_file(weights, str(other), metadata={"format": EXPORT_FORMAT, "config": json.dumps(narrow.to_dict())})
    with pytest.raises(PretrainedError, match="does not fit the generator"):
        check_run(options(tmp_path, data_dir, config=cfg, pretrained_g=other, max_steps=1))
    assert not (tmp_path / "run").exists()
