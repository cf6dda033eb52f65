"""`--device` as a user meets it: auto by default, a bad value an `error:` before any work, the device in the
log and the checkpoint, and a run written on a GPU resumed on the CPU.

A CUDA machine is simulated by replacing torch.cuda's queries (conftest.gpus); nothing runs on a GPU.
"""

import logging
import shutil

import pytest
import torch
from typer.testing import CliRunner

import arvc.cli._app
from arvc.cli import app
from arvc.train.checkpoint import latest_checkpoint, load_checkpoint

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


@pytest.fixture(autouse=True)
def logs_into_caplog(monkeypatch):
    """The CLI's logging setup replaces the root handlers (caplog's too); keep it from doing so."""
    monkeypatch.setattr(arvc.cli._app, "_setup_logging", lambda verbose: None)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    from arvc.data.demo import generate_demo_voice

    folder = tmp_path_factory.mktemp("recordings")
    generate_demo_voice(folder, seconds=12, sr=16000, seed=2)
    return folder


def cli(*args):
    return runner.invoke(app, [*map(str, args)])


def assert_refused(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for fragment in fragments:
        assert fragment in result.output, result.output


QUICK = ["--batch-size", "2", "--epochs", "1", "--max-steps", "1"]


@pytest.mark.parametrize(
    "count, args, message",
    [
        (0, ["--device", "tpu"], "--device tpu: unknown device; valid: auto"),
        (0, ["--device", "cuda"], "--device cuda: no CUDA GPU is available to torch on this machine"),
        (2, ["--device", "cuda:2"], "--device cuda:2: this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"),
        (2, ["--device", "cuda:1", "--nproc", "2"], "with 2 processes each takes the GPU of its local rank"),
        (2, ["--nproc", "3"], "--nproc 3: this machine has 2 GPU(s), one per process; pass --device cpu"),
    ],
)
def test_train_refuses_a_device_before_any_work(tmp_path, recordings, gpus, count, args, message):
    gpus(count)
    runs = tmp_path / "runs"
    assert_refused(cli("train", recordings, "--runs-dir", runs, "--name", "x", *QUICK, *args), message)
    assert not runs.exists(), "nothing may be preprocessed or written for a bad device"


def test_compare_preprocess_infer_and_ui_refuse_a_device_before_any_work(tmp_path, recordings, gpus):
    gpus(2)
    out = tmp_path / "compare"
    assert_refused(cli("compare", recordings, "--out-dir", out, "--device", "gpu"), "--device gpu: unknown")
    assert not out.exists()
    runs = tmp_path / "runs"
    refused = cli("preprocess", recordings, "--name", "x", "--runs-dir", runs, "--device", "cuda:7")
    assert_refused(refused, "--device cuda:7: this machine has 2 CUDA GPU(s)")
    assert not (runs / "x" / "data").exists()
    model = tmp_path / "model.safetensors"  # not read: the device is refused first
    refused = cli("infer", model, recordings / "demo_00.wav", tmp_path / "out.wav", "--device", "cuda:2")
    assert_refused(refused, "--device cuda:2: this machine has 2 CUDA GPU(s)")
    assert not (tmp_path / "out.wav").exists()
    assert_refused(cli("ui", "--root", tmp_path, "--device", "cuda:9"), "--device cuda:9: this machine has 2")


def _cuda_like(checkpoint, path):
    """The checkpoint as a GPU machine would have written it: its device, bf16 (auto on Ampere and
    newer), the GPUs' generator states."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved.update(device="cuda:0", device_name="NVIDIA GeForce RTX 4070", precision="bf16", tf32=True)
    saved["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.zeros(16, dtype=torch.uint8)]
    torch.save(saved, path)


def test_auto_on_a_cpu_logs_and_records_the_device_and_a_gpu_run_resumes_on_the_cpu(
    tmp_path, recordings, gpus, caplog
):
    gpus(0)  # as on CI, whatever this machine has
    caplog.set_level(logging.INFO, logger="arvc")
    runs = tmp_path / "runs"
    trained = cli("train", recordings, "--runs-dir", runs, "--name", "alice", *QUICK)
    assert trained.exit_code == 0, trained.output
    assert "device: cpu (auto: no CUDA device)" in caplog.text
    assert "precision fp32 (auto): cpu device" in caplog.text  # today's CPU behaviour, unchanged
    first = latest_checkpoint(runs / "alice")
    saved = load_checkpoint(first)
    assert (saved["device"], saved["device_name"], saved["precision"]) == ("cpu", "", "fp32")

    # The same run as if trained on a GPU: it continues on this CPU, in the run's own precision.
    shutil.copytree(runs / "alice", runs / "bob")
    moved = runs / "bob" / "checkpoints" / first.name
    _cuda_like(first, moved)
    caplog.clear()
    resumed = cli("train", "--resume", runs / "bob", "--epochs", "2", "--max-steps", "2")
    assert resumed.exit_code == 0, resumed.output
    text = " ".join(caplog.text.split())
    assert "device: cpu (auto: no CUDA device)" in text
    assert "(written on cuda:0, continues on cpu)" in text
    assert "precision bf16: the run's own, which a resume keeps (auto would choose fp32" in text
    after = load_checkpoint(latest_checkpoint(runs / "bob"))
    assert after["step"] == 2 and (after["device"], after["precision"]) == ("cpu", "bf16")
    assert all(torch.isfinite(v).all() for v in after["generator"].values() if v.is_floating_point())
