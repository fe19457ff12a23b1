"""Fixtures shared by several test modules."""
import os

import pytest
import torch

# Tests never touch the network: SR weights missing from the cache are an error, not a download
# (sr.hub reads this at call time; subprocesses inherit it). Download tests fake the Hub and lift it.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and on a shared 2-core machine OpenMP's spin-waiting
    threads made each tiny UNet call ~80x slower (3.9 s vs 0.05 s) under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def meta_default_device():
    """The device canary: tensors made without an explicit device land on `meta` and fail loudly when
    mixed with real ones, exactly where a CUDA run would mix devices (tests/test_device_canary.py)."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)
