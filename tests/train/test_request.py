"""arvc.train.request: what the CLI and the web UI both call to check a run before any work."""

import pytest

from arvc.train.request import TrainRequest, plan_training


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_steps", 0, "--max-steps 0"),
        ("epochs", -3, "--epochs -3"),
        ("save_every", 1.5, "--save-every 1.5"),
        ("batch_size", "many", "--batch-size 'many'"),
        ("lr", -1.0, "--lr"),
        ("precision", "fp8", "unknown precision"),
        ("optimizer", "Adam", "Adam"),
    ],
)
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        plan_training(TrainRequest(runs_dir=tmp_path / "runs", **{field: value}))
    assert not (tmp_path / "runs").exists()


def test_a_good_request_plans_the_demo_run_without_writing(tmp_path):
    plan = plan_training(TrainRequest(runs_dir=tmp_path / "runs", batch_size="4", max_steps=5))
    assert plan.run_dir == tmp_path / "runs" / "demo" and plan.cfg.train.batch_size == 4
    assert plan.cfg.train.epochs == 60 and plan.options.max_steps == 5  # the demo's epochs
    assert not (tmp_path / "runs").exists()


def _checkpoint(path):
    """A file `plan_training` reads as a checkpoint: it only takes the run's config from it."""
    import torch

    from arvc.config import load_config
    from arvc.train.checkpoint import CHECKPOINT_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"format": CHECKPOINT_FORMAT, "config": load_config("tiny").to_dict(), "epoch": 1, "step": 1}
    checkpoint.update(generator={}, discriminator={}, optim_g={}, optim_d={})  # not read by planning
    torch.save(checkpoint, path)
    return path


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_checkpoint_file_outside_a_checkpoints_folder_is_refused(tmp_path):
    # It resumed into the folder two levels up (~ for ~/Downloads/ckpt.pt) and preprocessed the demo there.
    loose = _checkpoint(tmp_path / "downloads" / "voice.pt")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="not in a checkpoints folder; pass the run folder"):
        plan_training(TrainRequest(resume=loose))
    assert _tree(tmp_path) == before


def test_resume_says_which_flags_it_leaves_aside(tmp_path, caplog):
    run = tmp_path / "runs" / "alice"
    _checkpoint(run / "checkpoints" / "ckpt_E00001_S00000001.pt")
    (run / "data").mkdir()
    (run / "data" / "filelist.txt").write_text("")
    request = TrainRequest(
        resume=run, name="bob", config="v2-40k", runs_dir=tmp_path / "elsewhere", dataset=tmp_path / "new"
    )
    with caplog.at_level("WARNING", logger="arvc.train.request"):
        plan = plan_training(request)
    assert plan.run_dir == run and plan.cfg.name == "tiny"
    assert "--name, --runs-dir, --config ignored" in caplog.text
    assert f"{tmp_path / 'new'} is not read; the run trains on the data it prepared" in caplog.text
    assert not (tmp_path / "elsewhere").exists()


def test_a_runs_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    # It failed after planning, naming a preprocess.json "unreadable" and advising to remove a folder.
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ValueError, match=f"{tmp_path / 'afile'} is a file, not a folder"):
        plan_training(TrainRequest(runs_dir=tmp_path / "afile" / "runs"))
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_read_only_runs_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    # A read-only mount refuses even root (which these tests run as, so permission bits cannot stand in
    # for it): os.access says so, as it does on such a mount. It gave a traceback from preprocessing.
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != tmp_path and real_access(path, mode))
    with pytest.raises(ValueError, match="is not writable"):
        plan_training(TrainRequest(runs_dir=tmp_path / "runs"))


@pytest.mark.parametrize(
    "asked, message",
    [
        ({"epochs": 1}, "has trained 1 of 1 epochs: nothing is left to train; pass --epochs N with N > 1"),
        ({"epochs": 3, "max_steps": 1}, "--max-steps 1: .* is already at step 1; pass a larger one"),
    ],
)
def test_a_resume_with_nothing_left_to_train_is_refused(tmp_path, asked, message):
    # --epochs below what was done trained nothing, printed "trained", rewrote config.json and the export;
    # --max-steps below the checkpoint's step still took a step and saved.
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "ckpt_E00001_S00000001.pt")
    with pytest.raises(ValueError, match=message):
        plan_training(TrainRequest(resume=run, **asked))
    plan_training(TrainRequest(resume=run, epochs=2, max_steps=2))  # something left: planned


# A value for every field a request forwards (none of them the default), valid together.
FORWARDED = {
    "optimizer": "RAdam",
    "lr": 2e-3,
    "betas": (0.8, 0.95),
    "eps": 1e-7,
    "weight_decay": 0.02,
    "use_8bit": False,
    "precision": "fp32",
    "compile": True,
    # None (their default): each needs files of its own, and they are forwarded with the others
    # (tests/train/test_loop.py's resume and pretrained tests, tests/cli/test_train_input.py)
    "resume": None,
    "pretrained_g": None,
    "pretrained_d": None,
    "max_steps": 7,
    "device": "cpu",
    "zero": True,
    "epochs": 9,
    "accumulate": 2,
    "checkpointing": "on",
    "save_every": 3,
    "seed": 5,
    "val_fraction": 0.2,
    "val_every": 2,
    "early_stop": 4,
    "min_delta": 0.01,
    "ema": 0.99,
    "select": "stft",
}


def test_every_option_and_setting_of_a_request_reaches_the_run(tmp_path):
    """The fields declare where they go (TrainOptions, or a config key); plan_training forwards them all."""
    from dataclasses import fields

    declared = {f.name: f.metadata["goes_to"] for f in fields(TrainRequest) if "goes_to" in f.metadata}
    assert set(declared) == set(FORWARDED)  # a new field gets a value here
    plan = plan_training(TrainRequest(runs_dir=tmp_path / "runs", batch_size=2, **FORWARDED))
    assert plan.cfg.train.batch_size == 2 and not plan.options.auto_batch_size  # read by plan_training itself
    for name, goes_to in declared.items():
        if goes_to == "option":
            assert getattr(plan.options, name) == FORWARDED[name], name
        else:
            section, key = goes_to.split(".")
            assert getattr(getattr(plan.cfg, section), key) == FORWARDED[name], name
    assert not (tmp_path / "runs").exists()


def test_set_train_epochs_is_kept_on_the_demo_voice(tmp_path):
    """The demo voice trains DEMO_EPOCHS unless told otherwise: --set train.epochs=N was silently replaced
    by it (only --epochs was looked at)."""
    plan = plan_training(TrainRequest(runs_dir=tmp_path / "runs", overrides={"train.epochs": "5"}))
    assert plan.cfg.train.epochs == 5
    assert plan_training(TrainRequest(runs_dir=tmp_path / "runs")).cfg.train.epochs == 60  # DEMO_EPOCHS
