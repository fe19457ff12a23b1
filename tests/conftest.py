"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and on a shared 2-core machine OpenMP's spin-waiting
    threads made each tiny UNet call ~80x slower (3.9 s vs 0.05 s) under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
