import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same global RNG state; 2 threads match the CI machine."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    logging.getLogger("arvc").setLevel(logging.DEBUG)
    yield


@pytest.fixture
def no_bitsandbytes(monkeypatch):
    """Make `import bitsandbytes` fail as on a machine without the extra (it is installed for the tests)."""
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
