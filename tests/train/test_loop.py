"""End-to-end training on the tiny config: every optimizer, the 8-bit switch, exact resume, bad input."""

import csv
import logging

import pytest
import torch
from trainkit import options, tiny

from arvc.data.preprocess import DataError
from arvc.optim import OPTIMIZERS
from arvc.train.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from arvc.train.loop import TrainError, train
from arvc.train.optimizers import optimizer_seed


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_each_optimizer_trains_a_few_steps(tmp_path, data_dir, optimizer):
    result = train(options(tmp_path, data_dir, optimizer=optimizer, max_steps=2))
    assert result.steps_done == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result.final_losses.values())
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint["optim_g"]["name"] == optimizer
    assert checkpoint["optim_g"]["hyperparameters"]["lr"] == 1e-3
    assert checkpoint["optim_g"]["state"]["state"], "the optimizer state was saved"
    assert (result.exports["safetensors"]).is_file()


def test_eight_bit_switch_trains(tmp_path, data_dir):
    pytest.importorskip("bitsandbytes")
    result = train(options(tmp_path, data_dir, optimizer="AdaBelief", use_8bit=True, max_steps=2))
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint["optim_g"]["hyperparameters"]["use_8bit"] is True
    # bitsandbytes nests its quantized moments; large tensors keep uint8 (8-bit) state.
    states = [
        s.get("__bnb_optimizer_quant_state__", s) for s in checkpoint["optim_g"]["state"]["state"].values()
    ]
    assert any(s.get("state1") is not None and s["state1"].dtype == torch.uint8 for s in states)


def test_bf16_anyprecision_uses_bf16_weights_and_kahan(tmp_path, data_dir):
    result = train(options(tmp_path, data_dir, optimizer="AnyPrecisionAdamW", precision="bf16", max_steps=2))
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint["generator"]["dec.conv_pre.bias"].dtype == torch.bfloat16
    state = next(iter(checkpoint["optim_g"]["state"]["state"].values()))
    assert state["compensation"].dtype == torch.bfloat16 and state["exp_avg_sq"].dtype == torch.bfloat16
    # Stochastic rounding seeds: from the run's seed, one per optimizer (before: 0 for G and D alike).
    seeds = {key: checkpoint[key]["state"]["param_groups"][0]["seed"] for key in ("optim_g", "optim_d")}
    assert seeds == {
        "optim_g": optimizer_seed(tiny().train.seed, "generator"),
        "optim_d": optimizer_seed(tiny().train.seed, "discriminator"),
    }


def _final_generator(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))["generator"]


@pytest.mark.parametrize("optimizer", ["AdamW", "AnyPrecisionAdamW"])
def test_resume_is_bit_identical(tmp_path, data_dir, optimizer):
    straight = train(options(tmp_path, data_dir, "straight", optimizer=optimizer))
    assert straight.epochs_done == 2

    train(options(tmp_path, data_dir, "split", optimizer=optimizer, config=tiny(epochs=1)))
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = train(options(tmp_path, data_dir, "split", config=tiny(epochs=2), resume=tmp_path / "split"))
    assert resumed.steps_done == straight.steps_done

    a, b = _final_generator(tmp_path / "straight"), _final_generator(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with (tmp_path / "split" / "metrics.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == sorted(set(steps)), "metrics.csv must not repeat steps after a resume"


def test_resume_with_another_optimizer_starts_it_fresh(tmp_path, data_dir, caplog):
    first = train(options(tmp_path, data_dir, optimizer="AdamW", config=tiny(epochs=1)))
    with caplog.at_level(logging.WARNING):
        result = train(
            options(tmp_path, data_dir, optimizer="RAdam", config=tiny(epochs=2), resume=tmp_path / "run")
        )
    assert "starting a fresh" in caplog.text
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint["optim_g"]["name"] == "RAdam"
    steps = {float(s["step"]) for s in checkpoint["optim_g"]["state"]["state"].values()}
    assert steps == {float(result.steps_done - first.steps_done)}, (
        "RAdam counts only the steps since the switch"
    )


def test_resume_refuses_changed_hyperparameters(tmp_path, data_dir):
    """Only --lr may change on resume (tests/train/test_resume.py); eps, betas, ... stay the run's."""
    train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    with pytest.raises(TrainError, match="eps"):
        train(options(tmp_path, data_dir, config=tiny(epochs=2), eps=1e-6, resume=tmp_path / "run"))


def test_corrupted_checkpoint_is_a_clear_error_and_nothing_is_lost(tmp_path, data_dir):
    train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    path = latest_checkpoint(tmp_path / "run")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted"):
        train(options(tmp_path, data_dir, config=tiny(epochs=2), resume=tmp_path / "run"))
    assert path.read_bytes() == data[: len(data) // 2]


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, data_dir, monkeypatch):
    train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    before = list_checkpoints(tmp_path / "run")
    real_save = torch.save

    def crash(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(100)  # half-written, then the machine "dies"
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(TrainError, match="No space left on device.*is intact"):
        train(options(tmp_path, data_dir, config=tiny(epochs=2), resume=tmp_path / "run"))
    monkeypatch.undo()
    assert list_checkpoints(tmp_path / "run") == before
    assert load_checkpoint(before[-1])["epoch"] == 1
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_batch_larger_than_dataset(tmp_path, data_dir):
    with pytest.raises(DataError, match="batch size 64"):
        train(options(tmp_path, data_dir, config=tiny(batch_size=64)))


def test_outputs_for_the_user(tmp_path, data_dir):
    result = train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    run = tmp_path / "run"
    assert (run / "loss.png").stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == result.steps_done and rows[0]["lr_g"] and rows[0]["grad_norm_d"]
    assert (run / "config.json").is_file()


def test_unknown_optimizer_fails_before_any_work(tmp_path, data_dir):
    with pytest.raises(ValueError, match="valid names"):
        train(options(tmp_path, data_dir, optimizer="Lion"))
    assert not (tmp_path / "run").exists()


def test_fine_tune_starts_from_pretrained_weights(tmp_path, data_dir):
    """With lr 0 nothing moves, so the run must end exactly at the weights it was given."""
    source = train(options(tmp_path, data_dir, "source", config=tiny(epochs=1)))
    checkpoint = source.last_checkpoint
    tuned = train(
        options(
            tmp_path,
            data_dir,
            "tuned",
            config=tiny(epochs=1),
            lr=0.0,
            weight_decay=0.0,
            pretrained_g=source.exports["safetensors"],
            pretrained_d=checkpoint,
        )
    )
    a, b = load_checkpoint(checkpoint), load_checkpoint(tuned.last_checkpoint)
    for key in ("generator", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key] if not k.startswith("enc_q."))


def test_pretrained_mismatch_is_refused(tmp_path, data_dir):
    from arvc.modelfile.read import PretrainedError

    source = train(options(tmp_path, data_dir, "source", config=tiny(epochs=1)))
    with pytest.raises(PretrainedError):
        train(
            options(
                tmp_path, data_dir, "wrong", pretrained_g=source.last_checkpoint.parent.parent / "metrics.csv"
            )
        )
    with pytest.raises(PretrainedError, match="discriminator|generator"):
        train(options(tmp_path, data_dir, "swapped", pretrained_d=source.exports["safetensors"]))


def test_resuming_a_finished_run_changes_nothing(tmp_path, data_dir):
    first = train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    again = train(options(tmp_path, data_dir, config=tiny(epochs=1), resume=tmp_path / "run"))
    assert (again.epochs_done, again.steps_done) == (first.epochs_done, first.steps_done)
    assert again.last_checkpoint == first.last_checkpoint


def _used(checkpoint, key="optim_g"):
    """(recorded hyperparameters, the optimizer's own param group) of one optimizer in a checkpoint."""
    return checkpoint[key]["hyperparameters"], checkpoint[key]["state"]["param_groups"][0]


@pytest.mark.parametrize("optimizer", ["AdaBelief", "AdaBeliefV2"])
def test_belief_optimizers_get_their_eps_not_adams(tmp_path, data_dir, optimizer, caplog):
    # The config holds RVC's Adam eps 1e-9; AdaBelief adds eps into its variance every step, so its
    # equivalent is eps_adam**2 (docs/optimizers.md). Old code passed 1e-9 as is.
    with caplog.at_level(logging.INFO, logger="arvc.train.optimizers"):
        result = train(options(tmp_path, data_dir, optimizer=optimizer, max_steps=1))
    checkpoint = load_checkpoint(result.last_checkpoint)
    for key in ("optim_g", "optim_d"):
        hp, group = _used(checkpoint, key)
        assert hp["eps"] == group["eps"] == pytest.approx(1e-18, rel=1e-12)
        assert hp["weight_decay"] == group["weight_decay"] == 0.01  # the config's, recorded (not None)
        assert tuple(hp["betas"]) == tuple(group["betas"]) == (0.8, 0.99)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("optimizer ")]
    assert len(lines) == 1 and f"optimizer {optimizer}:" in lines[0]
    assert "eps=1e-18" in lines[0] and "betas=(0.8, 0.99)" in lines[0] and "weight_decay=0.01" in lines[0]


def test_explicit_eps_betas_weight_decay_are_used_as_given(tmp_path, data_dir):
    result = train(
        options(
            tmp_path,
            data_dir,
            optimizer="AdaBelief",
            eps=1e-9,
            betas=(0.9, 0.999),
            weight_decay=0.0,
            max_steps=1,
        )
    )
    hp, group = _used(load_checkpoint(result.last_checkpoint))
    assert hp["eps"] == group["eps"] == 1e-9
    assert tuple(group["betas"]) == (0.9, 0.999) and group["weight_decay"] == 0.0


def test_adam_family_gets_the_config_eps_as_is(tmp_path, data_dir):
    result = train(options(tmp_path, data_dir, optimizer="RAdam", config=tiny(eps=1e-8), max_steps=1))
    hp, group = _used(load_checkpoint(result.last_checkpoint))
    assert hp["eps"] == group["eps"] == 1e-8 and group["decoupled_weight_decay"] is True


def test_old_checkpoint_resumes_with_the_eps_it_recorded(tmp_path, data_dir, caplog):
    # Checkpoints written before the per-optimizer eps recorded the Adam eps for AdaBelief (and
    # weight_decay None = class default); resuming one keeps exactly those values.
    first = train(options(tmp_path, data_dir, optimizer="AdaBelief", config=tiny(epochs=1)))
    checkpoint = load_checkpoint(first.last_checkpoint)
    for key in ("optim_g", "optim_d"):
        checkpoint[key]["hyperparameters"].update(eps=1e-9, weight_decay=None)
        for group in checkpoint[key]["state"]["param_groups"]:
            group.update(eps=1e-9, weight_decay=0.0)
    torch.save(checkpoint, first.last_checkpoint)
    with caplog.at_level(logging.INFO, logger="arvc.train.optimizers"):
        result = train(options(tmp_path, data_dir, config=tiny(epochs=2), resume=tmp_path / "run"))
    assert result.epochs_done == 2
    hp, group = _used(load_checkpoint(result.last_checkpoint))
    assert hp["eps"] == group["eps"] == 1e-9 and group["weight_decay"] == 0.0
    assert "eps=1e-09" in caplog.text and "as recorded in the checkpoint" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1.0}, "lr = -1.0 must be"),
        ({"betas": (0.9, 1.5)}, "beta2 = 1.5"),
        ({"eps": 0.0}, "eps = 0.0"),
    ],
)
def test_bad_optimizer_values_from_python_fail_before_any_work(tmp_path, data_dir, kwargs, message):
    with pytest.raises(TrainError, match=message):
        train(options(tmp_path, data_dir, **kwargs))
    assert not (tmp_path / "run").exists()
