"""One torch thread for the CRG tests: the tiny models run thousands of small kernels, and on 2 cores shared with
other jobs two threads per kernel made this folder ~10x slower (73 s vs 7 s measured), not faster."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
