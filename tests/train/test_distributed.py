"""Multi-process training (DistributedDataParallel, gloo on CPU) against one-process training.

Every multi-process run here is `torchrun --standalone --nproc-per-node 2 ddp_worker.py` (or `arvc train
--nproc 2`) in a subprocess with a timeout, so a hang fails the test instead of blocking CI. Runs use the
tiny config (a smaller model, SMALL, where only the working of a run is checked) with a global batch of 4
on the 11 pieces of the session's demo voice: 2 steps per epoch, so stopping at step 3 stops in the middle
of epoch 2. A launch starts three Pythons that import torch and arvc, so the runs share launches: the
specs of a launch run one after the other in the same 2 processes.

How close is close. The two runs see the same pieces in every global batch and the same per-item noise,
so their gradients agree to float summation order (~1e-6 relative, measured). Adam then divides each
element's step by its own gradient scale, which turns float noise in near-zero gradients (an attention
key bias, for one, has an exactly zero gradient in exact arithmetic) into full-size steps; that leaves
the generator's weight *changes* about 1% apart after 4 steps (the discriminator's 2e-5). The tolerance
below is checked against a control in the same test: a one-process run whose only difference is the
noise (what per-rank noise would give) lands about 80% (generator) and 16% (discriminator) away, 25x
and 80x beyond the tolerance.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from arvc.cli import app
from arvc.config import apply_overrides, load_config
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.optim import OPTIMIZERS
from arvc.train.checkpoint import latest_checkpoint, load_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")
TIMEOUT = 240  # seconds for one torchrun launch of a few runs (about 60 on a 2-core CPU)
TIMEOUT_PER_RUN = 40  # and per run beyond the first 4: the launches below carry 8 and 13 runs
OVERRIDES = {"train.batch_size": 4, "train.epochs": 2, "train.save_every": 1, "train.log_interval": 1}
TOLERANCE = {"generator": 0.03, "discriminator": 0.002}  # relative mismatch of weight changes, see above
# The tiny model made smaller still, for the runs that check that training works rather than how close it
# comes to one process (the smoke runs, the signals): one resblock kernel, 2 discriminator periods, a
# quarter of the decoder's channels, half the segment; every layer type, optimizer path and phase is there.
SMALL_MODEL = {
    "model.resblock_kernel_sizes": [3],
    "model.resblock_dilation_sizes": [[1, 3, 5]],
    "model.disc_periods": [2, 3],
    "model.upsample_initial_channel": 32,
    "data.segment_size": 2560,
}
SMALL = {**OVERRIDES, **SMALL_MODEL}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def launch(tmp: Path, name: str, specs: list[dict], nproc: int = 2) -> list[list[dict]]:
    """Run the specs in `nproc` processes; per spec, every rank's outcome."""
    for i, spec in enumerate(specs):
        spec["result"] = str(tmp / f"{name}-{i}")
        spec.setdefault("overrides", OVERRIDES)
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(specs))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    timeout = TIMEOUT + TIMEOUT_PER_RUN * max(0, len(specs) - 4)
    done = subprocess.run(
        [*command, str(WORKER), str(path)], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [[_outcome(spec["result"], rank) for rank in range(nproc)] for spec in specs]


def _outcome(result: str, rank: int) -> dict:
    return json.loads(Path(f"{result}.rank{rank}.json").read_text())


def one_process(
    run_dir: Path, data_dir: Path, noise_seed_offset: int = 0, overrides: dict | None = None, **options
) -> dict:
    """The same worker code in this process (no torchrun: a one-process run)."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        import ddp_worker
    finally:
        sys.path.pop(0)
    import arvc.train.step as step

    original = step.per_item_noise
    spec = {
        "options": {"run_dir": str(run_dir), "data_dir": str(data_dir), **options},
        "overrides": OVERRIDES if overrides is None else overrides,
        "noise_seed_offset": noise_seed_offset,
    }
    try:
        return ddp_worker.run(spec)
    finally:
        step.per_item_noise = original


def initial_weights() -> dict:
    cfg = apply_overrides(load_config("tiny"), OVERRIDES)
    torch.manual_seed(cfg.train.seed)  # as the loop builds them
    generator, discriminator = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    return {"generator": generator.state_dict(), "discriminator": discriminator.state_dict()}


def mismatch(run_dir: Path, reference_dir: Path) -> dict[str, float]:
    """||Δrun − Δref|| / ||Δref|| per network, Δ = final weights − initial weights."""
    run, ref, init = (
        load_checkpoint(latest_checkpoint(run_dir)),
        load_checkpoint(latest_checkpoint(reference_dir)),
        initial_weights(),
    )
    out = {}
    for net, start in init.items():
        d_run = torch.cat([(run[net][k].float() - start[k].float()).flatten() for k in start])
        d_ref = torch.cat([(ref[net][k].float() - start[k].float()).flatten() for k in start])
        out[net] = float((d_run - d_ref).norm() / d_ref.norm())
    return out


def assert_close(run_dir: Path, reference_dir: Path) -> None:
    found = mismatch(run_dir, reference_dir)
    assert all(found[net] < TOLERANCE[net] for net in TOLERANCE), found


# ---------------------------------------------------------------------------------------------------------
ACCUMULATED = {**OVERRIDES, "train.batch_size": 2, "train.accumulate": 2, "train.checkpointing": "on"}
EMA = {**OVERRIDES, "train.ema": 0.9}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The 2-process runs of the tests below in two torchrun launches, with the one-process runs they are
    compared with: the one-process references, one launch, the 2 -> 1 resumes, then a second launch (fresh
    processes, as a user resumes) for the 2 -> 2 resume and the smoke runs (`smoke_specs`).
    (folder, {run: every rank's outcome}); the tests of accumulation, EMA and the smoke runs check their
    own runs' outcomes."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = str(data_dir)

    def spec(name: str, overrides: dict = OVERRIDES, **options) -> dict:
        return {"options": {"run_dir": str(tmp / name), "data_dir": data, **options}, "overrides": overrides}

    one_process(tmp / "one", data_dir, max_steps=4)  # the reference: 2 whole epochs
    one_process(tmp / "one_3", data_dir, max_steps=3)  # stopped mid-epoch, for 1 -> 2 resume
    one_process(tmp / "accumulate" / "one", data_dir, overrides=ACCUMULATED, max_steps=3)
    one_process(tmp / "ema" / "one", data_dir, overrides=EMA, max_steps=4)
    core = {
        "two": spec("two", max_steps=4),
        "two_3": spec("two_3", max_steps=3),
        "zero_3": spec("zero_3", max_steps=3, zero=True),
        "one_3_two": spec("one_3_two", resume=str(tmp / "one_3")),
        "one_3_zero": spec("one_3_zero", resume=str(tmp / "one_3"), zero=True),
    }
    others = {
        "accumulate/two": spec("accumulate/two", ACCUMULATED, max_steps=3),
        "ema/two": spec("ema/two", EMA, max_steps=4),
        "ema/zero": spec("ema/zero", EMA, max_steps=4, zero=True),
    }
    outcomes = _launched(tmp, "two", {**core, **others})
    for name in core:
        assert all("error" not in rank for rank in outcomes[name]), outcomes[name]
    one_process(tmp / "two_3_one", data_dir, resume=str(tmp / "two_3"))
    one_process(tmp / "zero_3_one", data_dir, resume=str(tmp / "zero_3"))
    # 2 -> 2: a second launch continues the stopped 2-process run
    again = {"two_3_two": spec("two_3_two", resume=str(tmp / "two_3")), **smoke_specs(tmp / "smoke", data)}
    outcomes.update(_launched(tmp, "two_again", again))
    assert all("error" not in rank for rank in outcomes["two_3_two"]), outcomes["two_3_two"]
    return tmp, outcomes


def _launched(tmp: Path, name: str, specs: dict[str, dict]) -> dict[str, list[dict]]:
    """`launch` of named specs: {name: every rank's outcome}."""
    return dict(zip(specs, launch(tmp, name, list(specs.values())), strict=True))


def test_two_processes_match_one_process_with_the_same_global_batch(runs, data_dir):
    tmp, outcomes = runs
    two = outcomes["two"]
    assert [rank["steps_done"] for rank in two] == [4, 4]
    assert two[0]["losses"] == two[1]["losses"], "logged losses are averaged over the ranks"
    reference = load_checkpoint(latest_checkpoint(tmp / "one"))
    mine = load_checkpoint(latest_checkpoint(tmp / "two"))
    assert mine["generator"].keys() == reference["generator"].keys(), "unwrapped (module.-free) state dicts"
    assert mine["step"] == reference["step"] == 4
    assert_close(tmp / "two", tmp / "one")

    one_process(tmp / "control", data_dir, noise_seed_offset=1, max_steps=4)
    control = mismatch(tmp / "control", tmp / "one")
    assert all(control[net] > 10 * TOLERANCE[net] for net in TOLERANCE), control


def test_accumulation_in_two_processes_matches_one_process(runs):
    """--accumulate 2 of global micro-batches of 2 in 2 processes (DDP, gradients all-reduced once per
    step: no_sync before the last micro-batch) follows the same run in one process."""
    tmp, outcomes = runs
    ranks, folder = outcomes["accumulate/two"], tmp / "accumulate"
    assert all("error" not in rank for rank in ranks), ranks[0].get("traceback") or ranks[1].get("traceback")
    assert [rank["steps_done"] for rank in ranks] == [3, 3]
    checkpoint = load_checkpoint(latest_checkpoint(folder / "two"))
    assert checkpoint["config"]["train"]["accumulate"] == 2 and checkpoint["batch_in_epoch"] == 1
    assert_close(folder / "two", folder / "one")


@pytest.mark.parametrize(
    ("run", "what"),
    [
        ("one_3_two", "1 process -> 2 processes"),
        ("two_3_one", "2 processes -> 1 process"),
        ("one_3_zero", "1 process -> 2 processes with --zero"),
        ("zero_3_one", "2 processes with --zero -> 1 process"),
    ],
)
def test_resume_mid_epoch_across_world_sizes(runs, run, what):
    tmp, _ = runs
    assert load_checkpoint(latest_checkpoint(tmp / run))["step"] == 4, what
    assert_close(tmp / run, tmp / "one")


def test_resume_in_the_same_number_of_processes_is_bit_identical(runs):
    """Stopped mid-epoch in 2 processes and continued in 2: exactly the uninterrupted 2-process run
    (same data order, same per-item noise, restored optimizer state; gloo's 2-rank sums are deterministic)."""
    tmp, _ = runs
    resumed, straight = (load_checkpoint(latest_checkpoint(tmp / name)) for name in ("two_3_two", "two"))
    assert resumed["step"] == straight["step"] == 4
    for net in ("generator", "discriminator"):
        for key, value in straight[net].items():
            assert torch.equal(resumed[net][key], value), f"{net}.{key}"


def test_zero_checkpoint_holds_the_consolidated_optimizer_state(runs):
    tmp, _ = runs
    zero, plain = (load_checkpoint(latest_checkpoint(tmp / name)) for name in ("zero_3", "two_3"))
    assert zero["step"] == plain["step"] == 3 and zero["batch_in_epoch"] == 1
    for key in ("optim_g", "optim_d"):
        zs, ps = zero[key]["state"], plain[key]["state"]
        assert zs["state"].keys() == ps["state"].keys(), "every parameter's state, from both shards"
        assert [g["lr"] for g in zs["param_groups"]] == [g["lr"] for g in ps["param_groups"]]
        for index, state in ps["state"].items():
            assert float(zs["state"][index]["step"]) == float(state["step"]) == 3
            assert torch.allclose(zs["state"][index]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-6)


def test_an_ema_in_two_processes_matches_one_process(runs):
    """--ema under DDP (and ZeRO): every rank averages the same synchronised weights after each G step, so
    the checkpoint's EMA follows the one-process run's as closely as the live weights do (issue #33)."""
    tmp, outcomes = runs
    for name in ("ema/two", "ema/zero"):
        assert all("error" not in rank for rank in outcomes[name]), outcomes[name][0].get("traceback")
    start = initial_weights()["generator"]
    reference = load_checkpoint(latest_checkpoint(tmp / "ema" / "one"))["averaged"]
    assert reference["updates"] == 4
    d_ref = torch.cat([(reference["generator"][k] - start[k]).flatten() for k in start])
    for name in ("two", "zero"):
        averaged = load_checkpoint(latest_checkpoint(tmp / "ema" / name))["averaged"]
        assert averaged["kind"] == "ema" and averaged["updates"] == 4, name
        d_run = torch.cat([(averaged["generator"][k] - start[k]).flatten() for k in start])
        assert float((d_run - d_ref).norm() / d_ref.norm()) < TOLERANCE["generator"], name


SF = "AdamWScheduleFree"


@pytest.fixture(scope="module")
def schedule_free(tmp_path_factory, data_dir):
    """AdamWScheduleFree for 2 epochs (4 steps, held-out validation after each): in one process, then in one
    torchrun launch in 2 processes without and with --zero, and with --zero stopped at step 3 (mid-epoch)
    and resumed to step 4 with --zero and without. Every rank records each x it evaluates."""
    tmp = tmp_path_factory.mktemp("sf")
    data = str(data_dir)
    one_process(tmp / "one", data_dir, optimizer=SF, max_steps=4)

    def spec(name, **options):
        return {"options": {"run_dir": str(tmp / name), "data_dir": data, "optimizer": SF, **options}}

    outcomes = launch(
        tmp,
        "sf",
        [
            {**spec("two", max_steps=4), "record_evaluated": True},
            {**spec("zero", max_steps=4, zero=True), "record_evaluated": True},
            spec("zero_3", max_steps=3, zero=True),
            spec("zero_3_zero", resume=str(tmp / "zero_3"), zero=True),  # (the specs run in order)
            spec("zero_3_two", resume=str(tmp / "zero_3")),
        ],
    )
    for outcome in outcomes:
        assert all("error" not in rank for rank in outcome), outcome[0].get("traceback")
    return tmp


def _evaluated_x(tmp: Path, run: str) -> list[list[torch.Tensor]]:
    """Per rank, G's parameters (flattened) each time the run evaluated or exported them."""
    index = {"two": 0, "zero": 1}[run]
    return [torch.load(f"{tmp / f'sf-{index}'}.rank{rank}.evaluated.pt") for rank in range(2)]


@pytest.mark.parametrize("run", ["two", "zero"])
def test_schedule_free_ranks_evaluate_the_same_x_as_one_process(schedule_free, run):
    """A schedule-free run in two processes, with or without --zero: every time the run evaluates (held-out
    validation, the best-model and final exports) every rank's G holds x, bit for bit the same on both
    ranks, and as close to the one-process run's x (its checkpoint's `averaged` record) as DDP's weights
    are; rank 0's x is the one the checkpoint saves (issue #33). Under --zero each rank holds z for its own
    shard only: it switches those parameters and the owners broadcast theirs."""
    tmp = schedule_free
    ranks = _evaluated_x(tmp, run)
    assert len(ranks[0]) == len(ranks[1]) >= 4, "validation after each epoch, the best and final exports"
    assert all(torch.equal(a, b) for a, b in zip(*ranks, strict=True)), "both ranks evaluate one x"
    start = initial_weights()["generator"]
    x_one = load_checkpoint(latest_checkpoint(tmp / "one"))["averaged"]
    assert x_one["kind"] == "schedule-free"
    d_ref = torch.cat([(x_one["generator"][k] - start[k]).flatten() for k in start])
    d_run = ranks[0][-1] - torch.cat([start[k].flatten() for k in start])
    assert float((d_run - d_ref).norm() / d_ref.norm()) < TOLERANCE["generator"]
    saved = load_checkpoint(latest_checkpoint(tmp / run))["averaged"]
    assert saved["kind"] == "schedule-free"
    assert torch.equal(torch.cat([saved["generator"][k].flatten() for k in start]), ranks[0][-1])


def _assert_same_run(run: dict, other: dict, what: str) -> None:
    """Two checkpoints hold the same run, bit for bit: weights, x and both optimizers' whole state."""
    assert run["step"] == other["step"] == 4, what
    for net in ("generator", "discriminator"):
        for key, value in other[net].items():
            assert torch.equal(run[net][key], value), f"{what}: {net}.{key}"
    for key, value in other["averaged"]["generator"].items():
        assert torch.equal(run["averaged"]["generator"][key], value), f"{what}: x {key}"
    for optim in ("optim_g", "optim_d"):
        mine, theirs = run[optim]["state"], other[optim]["state"]
        assert mine["param_groups"] == theirs["param_groups"], f"{what}: {optim} k, weight_sum, mode, ..."
        assert mine["state"].keys() == theirs["state"].keys(), f"{what}: every parameter's state"
        for index, state in theirs["state"].items():
            for name, value in state.items():
                assert torch.equal(mine["state"][index][name], value), f"{what}: {optim} {index} {name}"


def test_schedule_free_under_zero_is_the_unsharded_run_bit_for_bit(schedule_free):
    """--zero changes where a schedule-free optimizer's state lives, not the run: the same gradients (DDP)
    and the same element-wise steps give the 2-process run without ZeRO bit for bit: the weights (y), x
    in the checkpoint and in the exported model, and the consolidated state (z, the groups' k and
    weight_sum, the mode: train, as every checkpoint is saved)."""
    tmp = schedule_free
    zero, two = (load_checkpoint(latest_checkpoint(tmp / name)) for name in ("zero", "two"))
    _assert_same_run(zero, two, "--zero vs without")
    assert all(group["train_mode"] for group in zero["optim_g"]["state"]["param_groups"])
    assert all(
        torch.equal(a, b) for a, b in zip(*(_evaluated_x(tmp, r)[0] for r in ("zero", "two")), strict=True)
    )
    for folder in ("export", "export/best"):
        exported = [load_file(tmp / run / folder / "model.safetensors") for run in ("zero", "two")]
        assert exported[0].keys() == exported[1].keys()
        assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0]), folder


@pytest.mark.parametrize(
    ("run", "what"),
    [("zero_3_zero", "2 processes with --zero"), ("zero_3_two", "2 processes without --zero")],
)
def test_schedule_free_under_zero_resumes_bit_for_bit(schedule_free, run, what):
    """A --zero checkpoint of a schedule-free run (the consolidated state, written mid-epoch at step 3)
    resumed to step 4, with --zero and without, is exactly the uninterrupted --zero run."""
    tmp = schedule_free
    resumed, straight = (load_checkpoint(latest_checkpoint(tmp / name)) for name in (run, "zero"))
    _assert_same_run(resumed, straight, what)


# ---------------------------------------------------------------------------------------------------------
SMOKE = [
    *[(name, {"optimizer": name}) for name in OPTIMIZERS],
    ("AnyPrecisionAdamW-bf16", {"optimizer": "AnyPrecisionAdamW", "precision": "bf16"}),
    ("AdamW-8bit", {"optimizer": "AdamW", "use_8bit": True}),
    ("AdaBeliefV2-zero", {"optimizer": "AdaBeliefV2", "zero": True}),
    ("AnyPrecisionAdamW-bf16-zero", {"optimizer": "AnyPrecisionAdamW", "precision": "bf16", "zero": True}),
]


def smoke_specs(tmp: Path, data: str) -> dict[str, dict]:
    """Two steps of every registry optimizer in 2 processes, then a failing save (the launch's last run);
    on the SMALL model, as the signal tests (until they shared a launch with the other runs these ran the
    tiny config's whole model at batch 8: SMALL keeps every layer type, optimizer path and phase)."""
    specs = {
        name: {
            "options": {"run_dir": str(tmp / name), "data_dir": data, "max_steps": 2, **options},
            "overrides": SMALL,
        }
        for name, options in SMOKE
    }
    full_disk = {"run_dir": str(tmp / "full_disk"), "data_dir": data, "max_steps": 2}
    return {**specs, "full_disk": {"options": full_disk, "overrides": SMALL, "fail_save": True}}


@pytest.fixture(scope="module")
def smoke(runs):
    """The smoke runs (launched with the 2 -> 2 resume in `runs`): (folder, {name: every rank's outcome})."""
    pytest.importorskip("bitsandbytes")
    tmp, outcomes = runs
    return tmp / "smoke", {name: outcomes[name] for name in [*dict(SMOKE), "full_disk"]}


@pytest.mark.parametrize("name", [name for name, _ in SMOKE])
def test_every_registry_optimizer_trains_under_ddp(smoke, name):
    tmp, outcomes = smoke
    ranks = outcomes[name]
    assert all("error" not in rank for rank in ranks), ranks[0].get("traceback") or ranks[1].get("traceback")
    assert [rank["steps_done"] for rank in ranks] == [2, 2]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert all(torch.isfinite(torch.tensor(v)) for v in ranks[0]["losses"].values())
    checkpoint = load_checkpoint(latest_checkpoint(tmp / name))
    options = dict(SMOKE)[name]
    assert checkpoint["optim_g"]["name"] == options["optimizer"]
    assert checkpoint["optim_g"]["hyperparameters"]["use_8bit"] is bool(options.get("use_8bit"))
    assert checkpoint["optim_g"]["state"]["state"], "the optimizer state was saved"
    if options.get("zero"):  # consolidated: as many parameter states as the same optimizer without ZeRO
        plain = load_checkpoint(latest_checkpoint(tmp / name.removesuffix("-zero")))
        for key in ("optim_g", "optim_d"):
            assert checkpoint[key]["state"]["state"].keys() == plain[key]["state"]["state"].keys()
    if options.get("precision") == "bf16":
        assert checkpoint["generator"]["dec.conv_pre.bias"].dtype == torch.bfloat16


def test_a_failed_save_on_rank_0_stops_every_rank_with_the_error(smoke):
    _, outcomes = smoke
    rank0, rank1 = outcomes["full_disk"]
    assert "could not write checkpoint" in rank0["error"] and "No space left" in rank0["error"]
    assert "rank 0 could not write a checkpoint" in rank1["error"]


# ---------------------------------------------------------------------------------------------------------
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, data_dir):
    run_dir, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    spec = {
        "options": {"run_dir": str(run_dir), "data_dir": str(data_dir)},
        "overrides": {**SMALL, "train.epochs": 200},
        "pid_dir": str(pids),
        "result": str(tmp_path / "signal"),
    }
    (tmp_path / "spec.json").write_text(json.dumps([spec]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    child = subprocess.Popen(
        [*command, str(WORKER), str(tmp_path / "spec.json")],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        metrics = run_dir / "metrics.csv"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline and child.poll() is None, "training did not start"
            time.sleep(0.2)
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGTERM)  # rank 1 only
        output, _ = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, output[-3000:]
    ranks = [_outcome(spec["result"], rank) for rank in range(2)]
    assert [rank["stopped_by"] for rank in ranks] == ["SIGTERM", "SIGTERM"], ranks
    assert ranks[0]["steps_done"] == ranks[1]["steps_done"]
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == ranks[0]["steps_done"]


def test_a_stop_request_on_one_rank_stops_every_rank_and_rank_0_reports_it(tmp_path, data_dir):
    """The web UI's Stop (TrainOptions.stop) had no code among the reasons the ranks agree on: a
    multi-process run asked to stop died of a KeyError. It stops every rank after the same step, as a
    signal does, and rank 0 alone says how to continue."""
    run_dir = tmp_path / "run"
    spec = {
        "options": {"run_dir": str(run_dir), "data_dir": str(data_dir)},
        "overrides": {**OVERRIDES, "train.epochs": 200},
        "stop_on_rank": 1,  # rank 1 only
        "result": str(tmp_path / "stop"),
    }
    (tmp_path / "spec.json").write_text(json.dumps([spec]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*command, str(WORKER), str(tmp_path / "spec.json")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    ranks = [_outcome(spec["result"], rank) for rank in range(2)]
    assert all("error" not in rank for rank in ranks), ranks
    assert [rank["stopped_by"] for rank in ranks] == ["stop request", "stop request"], ranks
    assert ranks[0]["steps_done"] == ranks[1]["steps_done"] == 1
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 1
    assert not (run_dir / "export" / "model.safetensors").exists(), "interrupted: not exported"
    assert output.count(f"stopped by stop request after step 1; continue with --resume {run_dir}") == 1


# ---------------------------------------------------------------------------------------------------------
def test_nproc_that_does_not_divide_the_batch_is_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "--runs-dir", str(tmp_path), "--batch-size", "4", "--nproc", "3", "--max-steps", "1"]
    )
    assert result.exit_code == 1
    assert "batch size 4 cannot be split over 3 processes" in result.output
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("nproc, device", [(None, "auto"), ("2", "cpu")])
def test_the_nproc_launcher_preprocesses_on_the_cpu(tmp_path, monkeypatch, nproc, device):
    """`arvc train --nproc N` preprocesses in the launcher, which then only waits for its N processes: with
    --device auto an analyser there (rmvpe, hubert, crepe) held a CUDA context on GPU 0 for the whole run.
    The device each preprocessing got is recorded (no GPU here); the launch itself is not run."""
    import typer

    from arvc.train import distributed, request

    got = []
    monkeypatch.setattr(request, "prepare_data", lambda *args, **kwargs: got.append(kwargs["device"]))
    monkeypatch.setattr(distributed, "launch", lambda n, args: 0)

    def no_training(*args):  # one process: the training itself is not what is checked
        raise typer.Exit(0)

    monkeypatch.setattr("arvc.cli.train._run", no_training)
    args = ["train", "--runs-dir", str(tmp_path), "--batch-size", "2", "--max-steps", "1"]
    result = CliRunner().invoke(app, [*args, *(["--nproc", nproc] if nproc else [])])
    assert result.exit_code == 0 and got == [device], result.output


def test_arvc_train_nproc_2_ctrl_c_then_resume(tmp_path, data_dir):
    """`arvc train --nproc 2`: Ctrl-C (to the process group, as a terminal sends it) stops both ranks,
    rank 0 alone saves and reports, exit status 130 (SIGINT's); `--resume --nproc 2` continues from there."""
    import shutil

    run_dir = tmp_path / "runs" / "wav"
    shutil.copytree(data_dir, run_dir / "data")  # preprocessed already: preparing again skips every file
    small = tmp_path / "small.json"
    small.write_text(json.dumps(apply_overrides(load_config("tiny"), SMALL_MODEL).to_dict()))
    command = [sys.executable, "-m", "arvc", "train", "--runs-dir", str(tmp_path / "runs"), "--nproc", "2"]
    new_run = [str(data_dir.parent / "wav"), "--config", str(small), "--batch-size", "4", "--epochs", "200"]
    first = subprocess.Popen(
        [*command, *new_run],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline, metrics = time.monotonic() + TIMEOUT, run_dir / "metrics.csv"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline and first.poll() is None, "training did not start"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGINT)
        output, _ = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, output[-3000:]
    assert output.count("continue with: arvc") == 1, output[-3000:]  # rank 0 alone reports
    stopped_at = load_checkpoint(latest_checkpoint(run_dir))["step"]

    resume = [*command, "--resume", str(run_dir), "--max-steps", str(stopped_at + 1)]
    done = subprocess.run(resume, env=_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count(f"({stopped_at + 1} steps)") == 1, done.stdout
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == stopped_at + 1
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert not (run_dir / ".arvc-run.lock").exists(), "the launcher held the run's lock, and removed it"


def test_zero_shards_round_stochastically_as_one_process(tmp_path):
    """Stochastic rounding is keyed by (seed, parameter index, ...): under --zero every shard numbers its
    parameters by their place in the whole model, so 2 ranks draw exactly the bits 1 process draws
    (before, every shard counted from 0 and ranks drew each other's bits)."""
    worker = Path(__file__).with_name("zero_rounding_worker.py")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    sys.path.insert(0, str(worker.parent))
    try:
        import zero_rounding_worker
    finally:
        sys.path.pop(0)
    zero_rounding_worker.main(str(one))  # one process: this one (no torchrun)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*command, str(worker), str(two)], env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    single, sharded = torch.load(one), torch.load(two)
    assert len(single["state"]["state"]) == len(sharded["state"]["state"]) == 6
    for index, state in single["state"]["state"].items():
        other = sharded["state"]["state"][index]
        assert state["exp_avg"].dtype == torch.bfloat16
        for key in ("exp_avg", "exp_avg_sq", "compensation"):
            assert torch.equal(state[key], other[key]), (index, key)
    for a, b in zip(single["params"], sharded["params"], strict=True):
        assert torch.equal(a, b)


def test_a_rank_that_cannot_start_ends_the_others_and_gives_back_ctrl_c(monkeypatch):
    """launch() ignores SIGINT while its ranks run (the terminal's Ctrl-C is theirs): a rank that cannot
    start (e.g. out of memory) must not leave this process deaf to Ctrl-C, nor the started ranks running."""
    from arvc.train import distributed

    started = []

    class Rank0Only:
        def __init__(self, command, env):
            if env["RANK"] == "1":
                raise OSError(12, "Cannot allocate memory")
            self.code, self.killed = None, False
            started.append(self)

        def poll(self):
            return self.code

        def kill(self):
            self.code, self.killed = -9, True

        def wait(self):
            return self.code

    monkeypatch.setattr(distributed.subprocess, "Popen", Rank0Only)
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(
        distributed.DistributedError, match="could not start process 1 of 2: .*Cannot allocate"
    ):
        distributed.launch(2, ["train"])
    assert signal.getsignal(signal.SIGINT) is before_int and signal.getsignal(signal.SIGTERM) is before_term
    assert [rank.killed for rank in started] == [True]


def test_launched_ranks_split_the_cores_and_wait_passively(monkeypatch):
    """`--nproc N` ranks share the machine: each gets cores/N threads and passive OpenMP waiting
    (benchmarks/threads.py: spin-waiting ranks took 1.7x longer per step), unless the user set them."""
    from arvc.train import distributed

    started = []

    class Finished:
        def __init__(self, command, env):
            started.append(env)

        def poll(self):
            return 0

        wait = poll

    monkeypatch.setattr(distributed.subprocess, "Popen", Finished)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert distributed.launch(2, ["train"]) == 0
    assert [env["RANK"] for env in started] == ["0", "1"]
    assert all(env["OMP_WAIT_POLICY"] == "PASSIVE" for env in started)
    assert all(env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2)) for env in started)
    started.clear()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stands
    distributed.launch(2, ["train"])
    assert all(env["OMP_WAIT_POLICY"] == "ACTIVE" for env in started)


def test_the_nproc_launcher_lets_the_resume_checkpoint_go_before_it_waits(tmp_path, data_dir, monkeypatch):
    """`arvc train --resume RUN --nproc N`: the launcher loads the checkpoint to check the resume, then only
    waits for its N processes, which load their own; it held its copy (weights and optimizer state, about a
    GB for an RVC-sized run) in memory for the whole run. The launch is not run: it looks for that copy."""
    import gc

    from trainkit import options, tiny

    from arvc.train import distributed
    from arvc.train.loop import train

    run_dir = tmp_path / "runs" / "r"
    shutil.copytree(data_dir, run_dir / "data")
    train(options(tmp_path / "runs", run_dir / "data", name="r", config=tiny(epochs=2), max_steps=1))
    held = []

    def launch(nproc, args):
        gc.collect()
        held.append(sum(type(o) is dict and "optim_g" in o and "rng" in o for o in gc.get_objects()))
        return 0

    monkeypatch.setattr(distributed, "launch", launch)
    args = ["train", "--resume", str(run_dir), "--nproc", "2", "--device", "cpu", "--max-steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and held == [0], (held, result.output)
