"""`--device auto|cpu|cuda|cuda:N`: one resolution for every entry point, checked before any work.

No GPU is needed: a CUDA machine is simulated by replacing torch.cuda's queries (nothing is moved to it).
"""

import logging

import pytest
import torch

from arvc.device import AUTO, resolve_device
from arvc.train.checkpoint import set_rng_state
from arvc.train.distributed import Ranks
from arvc.train.loop import TrainOptions, _training_device
from arvc.train.request import TrainRequest, check_processes

GPU = "NVIDIA GeForce RTX 4070"  # conftest.gpus


def test_auto_is_the_default_of_every_entry_point():
    assert TrainOptions.device == TrainRequest.device == AUTO
    import inspect

    from arvc.compare.runner import run_compare
    from arvc.data.preprocess import preprocess
    from arvc.infer.convert import load_voice_model

    for function in (run_compare, preprocess, load_voice_model):
        assert inspect.signature(function).parameters["device"].default == AUTO, function


@pytest.mark.parametrize(
    "count, asked, device, why",
    [
        (0, "auto", "cpu", "auto: no CUDA device"),
        (0, None, "cpu", "auto: no CUDA device"),
        (0, "cpu", "cpu", "as asked"),
        (1, "auto", "cuda", "auto: CUDA available"),
        (2, "cpu", "cpu", "as asked"),
        (2, "cuda", "cuda", "as asked"),
        (2, "cuda:1", "cuda:1", "as asked"),
        (2, " CUDA:0 ", "cuda:0", "as asked"),
    ],
)
def test_resolution(gpus, count, asked, device, why):
    gpus(count)
    choice = resolve_device(asked)
    assert (str(choice.device), choice.why) == (device, why)


@pytest.mark.parametrize(
    "count, asked, message",
    [
        (2, "tpu", "--device tpu: unknown device; valid: auto (default: CUDA when available, else CPU), cpu"),
        (2, "gpu", "--device gpu: unknown device"),
        (2, "cuda:x", "--device cuda:x: unknown device"),
        (2, "cuda:-1", "--device cuda:-1: unknown device"),
        (2, "cuda:2", "--device cuda:2: this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"),
        (0, "cuda", "--device cuda: no CUDA GPU is available to torch on this machine (torch finds no CUDA"),
        (0, "cuda:0", "use --device cpu, or --device auto"),
    ],
)
def test_a_device_that_cannot_be_used_is_refused_with_what_to_do(gpus, count, asked, message):
    gpus(count)
    with pytest.raises(ValueError) as refused:
        resolve_device(asked)
    assert message in str(refused.value)


def test_a_cpu_build_of_torch_is_named_as_the_reason(gpus):
    gpus(0, cuda_build=False)
    assert (
        resolve_device("auto").why == f"auto: no CUDA device; torch {torch.__version__} is built without CUDA"
    )
    with pytest.raises(ValueError, match="is built without CUDA: install a CUDA build of torch"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "count, asked, line",
    [
        (1, "auto", f"device: cuda:0 ({GPU}, auto: CUDA available)"),
        (2, "cuda:1", f"device: cuda:1 ({GPU}, as asked)"),
        (0, "auto", "device: cpu (auto: no CUDA device)"),
    ],
)
def test_the_log_says_which_device_and_why(gpus, caplog, count, asked, line):
    gpus(count)
    caplog.set_level(logging.INFO, logger="arvc")
    choice = _training_device(resolve_device(asked), Ranks())
    assert line in caplog.text
    assert str(choice.device) == line.split()[1]  # with its index: what the checkpoint records


def test_several_processes_take_one_gpu_each(gpus):
    gpus(2)
    assert check_processes(2, "auto", 8) == 2
    with pytest.raises(ValueError, match="--device cuda:1: with 2 processes each takes the GPU of its local"):
        check_processes(2, "cuda:1", 8)
    with pytest.raises(ValueError, match="--nproc 3: this machine has 2 GPU.*pass --device cpu"):
        check_processes(3, "auto", 6)
    assert check_processes(3, "cpu", 6) == 3


def test_rng_state_of_a_machine_with_more_gpus_restores_those_this_one_has(gpus, monkeypatch):
    gpus(1)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((device, state)))
    cpu = torch.get_rng_state()
    states = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    set_rng_state({"torch": cpu, "cuda": states})
    assert [device for device, _ in restored] == [0]
    gpus(0)
    set_rng_state({"torch": cpu, "cuda": states})  # on a CPU the GPU's generators are left aside
    assert len(restored) == 1


def test_on_cuda_n_gpu_n_is_current_within_the_block(gpus):
    """Triton kernels launch on torch's current GPU: on cuda:N that must be N (entered only on a GPU)."""
    from arvc.device import current_gpu

    gpus(2)
    block = current_gpu(resolve_device("cuda:1").device)
    assert isinstance(block, torch.cuda.device) and block.idx == 1
    for asked in ("cpu", "cuda", "auto"):
        assert not isinstance(current_gpu(resolve_device(asked).device), torch.cuda.device)
