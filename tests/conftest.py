import logging
import os

# OpenMP's default spin-wait makes one process's threads burn the cores that another process (a DDP rank,
# a training subprocess, a parallel test) needs: on a loaded 2-core machine one tiny training step took
# 35 s instead of 3 s. Passive waiting, set before torch loads OpenMP, also reaches every subprocess.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same global RNG state; 2 threads match the CI machine."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    logging.getLogger("arvc").setLevel(logging.DEBUG)
    yield


@pytest.fixture
def block_import(monkeypatch):
    """`block_import("pkg")` makes `import pkg` fail as on a machine without it (tests check the error
    that names the extra to install, though the dev install has every extra)."""
    import builtins

    real_import = builtins.__import__
    blocked = set()

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in blocked:
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    return blocked.add


@pytest.fixture
def no_bitsandbytes(block_import):
    block_import("bitsandbytes")


@pytest.fixture(scope="session")
def rmvpe_weights(tmp_path_factory):
    """Random weights saved as RVC ships rmvpe.pt (a plain state dict in fp16), with non-trivial batch-norm
    statistics: a stand-in for the real file, which is never downloaded. (path, state dict)"""
    from arvc.audio.rmvpe import RMVPENet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = RMVPENet().eval()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("rmvpe") / "rmvpe.pt"
    torch.save(state, path)
    return path, state


SIMULATED_GPU = "NVIDIA GeForce RTX 4070"


@pytest.fixture
def gpus(monkeypatch):
    """`gpus(n)`: torch reports n CUDA GPUs named SIMULATED_GPU, compute capability 8.9 (a CUDA build of
    torch unless cuda_build=False); none when n is 0. Only the queries are replaced: nothing may be moved to
    them."""

    def simulate(count: int, cuda_build: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: SIMULATED_GPU)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))  # an RTX 4070's
        monkeypatch.setattr(torch.version, "cuda", "12.8" if cuda_build else None)

    return simulate


@pytest.fixture
def wide_console(monkeypatch):
    """Rich wraps to the terminal width; a wide console keeps the strings under test on one line (a module
    takes it with `pytestmark = pytest.mark.usefixtures("wide_console")`)."""
    from rich.console import Console

    import arvc.cli._app

    monkeypatch.setattr(arvc.cli._app, "console", Console(width=300))


@pytest.fixture(scope="module")
def three_recordings(tmp_path_factory):
    """Three short recordings (one generated demo clip under three names)."""
    import shutil

    from arvc.data.demo import generate_demo_voice

    source = tmp_path_factory.mktemp("source")
    (clip,) = generate_demo_voice(source, seconds=8, sr=16000, seed=2)
    folder = tmp_path_factory.mktemp("recordings")
    for name in ("a.wav", "b.wav", "c.wav"):
        shutil.copy(clip, folder / name)
    return folder


@pytest.fixture
def speaking_generator(monkeypatch):
    """Every Validator's (`arvc train`'s, `arvc compare`'s) generator "converts" a held-out piece into its
    recording plus fresh white noise (RMS 0.01-0.06, drawn per piece): a stand-in for a trained model whose
    conversions hold speech. An untrained tiny generator's output is spikes in which resemblyzer's voice
    activity detector finds no speech (speaker similarity nan); with this the held-out speaker similarities
    are finite and differ from evaluation to evaluation. Training, scoring, logging, selection, resume and
    reports are the real ones."""
    import itertools

    from arvc.train.validation import Validator

    real_init = Validator.__init__
    noise = torch.Generator().manual_seed(0)

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        originals = itertools.cycle(self.originals())  # every call converts every piece, in order

        def convert(*args):
            x = next(originals)
            level = 0.01 + 0.05 * float(torch.rand(1, generator=noise))
            return (x + level * torch.randn(x.shape, generator=noise))[None, None]

        self.model.infer = convert

    monkeypatch.setattr(Validator, "__init__", init)
