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
