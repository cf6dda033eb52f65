"""`--precision auto`: the device's safe precision (a pure function, no GPU needed), recorded and kept."""

import logging

import pytest
import torch
from trainkit import options, tiny

from arvc.train.checkpoint import load_checkpoint
from arvc.train.loop import TrainError, train
from arvc.train.precision import choose_precision, tf32_matmuls


@pytest.mark.parametrize(
    "device, capability, name, precision, tf32",
    [
        ("cpu", None, "", "fp32", False),
        ("mps", None, "", "fp32", False),
        ("cuda", (6, 1), "NVIDIA GeForce GTX 1080 Ti", "fp32", False),  # Pascal: fp16 at 1/64 rate
        ("cuda", (6, 0), "Tesla P100-PCIE-16GB", "fp32", False),
        ("cuda", (7, 5), "NVIDIA GeForce GTX 1660 SUPER", "fp32", False),  # Turing without tensor cores
        ("cuda", (7, 5), "NVIDIA GeForce GTX 1650", "fp32", False),
        ("cuda", (7, 5), "NVIDIA GeForce RTX 2080 Ti", "fp16", False),
        ("cuda", (7, 0), "Tesla V100-SXM2-16GB", "fp16", False),
        ("cuda", (7, 5), "Tesla T4", "fp16", False),
        ("cuda", (8, 6), "NVIDIA GeForce RTX 3060", "bf16", True),
        ("cuda", (8, 9), "NVIDIA GeForce RTX 4090", "bf16", True),
        ("cuda", (9, 0), "NVIDIA H200", "bf16", True),
        ("cuda", (12, 0), "NVIDIA GeForce RTX 5090", "bf16", True),
    ],
)
def test_auto_precision_per_device(device, capability, name, precision, tf32):
    choice = choose_precision(device, capability, name)
    assert (choice.precision, choice.tf32) == (precision, tf32)
    assert choice.reason  # the log says why
    if name:
        assert name in choice.reason


def test_a_cuda_device_needs_its_capability():
    with pytest.raises(ValueError, match="compute capability"):
        choose_precision("cuda")


def test_tf32_is_switched_on_for_the_block_only():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with tf32_matmuls(True):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_auto_is_the_default_logged_recorded_and_resume_keeps_the_runs_precision(tmp_path, data_dir, caplog):
    caplog.set_level(logging.INFO, logger="arvc")
    cfg = tiny(epochs=1, val_fraction=0.0)
    first = train(options(tmp_path, data_dir, config=cfg, max_steps=1))
    assert "precision fp32 (auto): cpu device" in caplog.text
    saved = load_checkpoint(first.last_checkpoint)
    assert (saved["precision"], saved["tf32"]) == ("fp32", False)

    bf16 = train(options(tmp_path, data_dir, name="bf16", config=cfg, precision="bf16", max_steps=1))
    caplog.clear()
    resumed = train(
        options(
            tmp_path,
            data_dir,
            name="bf16",
            config=tiny(epochs=2, val_fraction=0.0),
            resume=tmp_path / "bf16",
            max_steps=2,
        )
    )  # auto on resume: the run's bf16
    assert load_checkpoint(resumed.last_checkpoint)["precision"] == "bf16"
    assert "(auto)" not in caplog.text
    with pytest.raises(TrainError, match="trained in bf16; resume it in the same precision"):
        train(options(tmp_path, data_dir, name="bf16", resume=bf16.last_checkpoint, precision="fp16"))
    with pytest.raises(TrainError, match="valid: auto, fp32, bf16, fp16"):
        train(options(tmp_path, data_dir, name="new", precision="fp8"))
