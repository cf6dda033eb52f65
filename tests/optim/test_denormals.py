"""flush_denormals(): every intra-op thread flushes inside, each thread's previous mode is back outside."""

import pytest
import torch

from arvc.optim.denormals import flush_denormals


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def survivors() -> int:
    """Denormals left by a product computed over both threads (1e-40 is denormal in float32)."""
    return int(torch.count_nonzero(torch.full((4_000_000,), 1e-30) * 1e-10))


def test_every_thread_flushes_inside_and_the_previous_mode_returns(two_threads):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    assert survivors() == 4_000_000, "nothing flushes before"
    with flush_denormals():
        assert survivors() == 0, "a thread kept its denormals"
    assert survivors() == 4_000_000, "the previous mode (no flushing) is back on every thread"

    torch.set_flush_denormal(True)  # a caller that already flushed on its own thread keeps doing so
    try:
        with flush_denormals():
            assert survivors() == 0
        assert torch.tensor([1e-30]).mul(1e-10).item() == 0.0, "the calling thread still flushes"
    finally:
        torch.set_flush_denormal(False)


def test_disabled_changes_nothing(two_threads):
    with flush_denormals(enabled=False):
        assert survivors() == 4_000_000
