"""Test set-up: no network (a stray hub download fails loudly), one torch thread, a fixed seed for every test.

One thread: the tiny models run thousands of small kernels, and on 2 cores shared with other jobs two threads per
kernel made the CRG tests ~10x slower (73 s vs 7 s measured), not faster.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
