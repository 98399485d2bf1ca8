"""Batches and models shared by the CAL tests."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from tests import tiny_models as tm
from tests.models.test_contrast import make_batch

PROMPTS = ["what is in the box ?", "which colour is the cup left of the plate ?", "describe the picture ."]
ANSWERS = ["a red cup is left of the blue plate", "yes", "two small green triangle"]


def cal_batch(family: str, n: int = 3, padding_side: str = "right", offset: int = 0):
    """(model, processor, batch with labels) of `n` samples (answers of different lengths, one of a single token)."""
    idx = [(offset + i) % len(PROMPTS) for i in range(n)]
    model, proc, batch, labels = make_batch(
        family,
        [PROMPTS[i] for i in idx],
        [ANSWERS[i] for i in idx],
        padding_side=padding_side,
        seeds=tuple(offset + i for i in range(n)),
    )
    batch["labels"] = labels
    return model, proc, batch


def scaled(model: nn.Module, factor: float = 8.0) -> nn.Module:
    """A copy whose output head is scaled (and untied), so logit gains spread far beyond [alpha, beta]."""
    model = copy.deepcopy(model)
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone() * factor)
    return model


def train_copy(family: str, seed: int = 0) -> nn.Module:
    """A trainable deep copy of the cached tiny model."""
    model, _ = tm.build(family, seed)
    model = copy.deepcopy(model)
    model.train()
    return model


def sft_rows(proc, n: int = 4):
    """Raw LLaVA-style rows (image, prompt, answer) for trainer tests."""
    return [
        {"image": tm.image(i), "prompt": PROMPTS[i % len(PROMPTS)], "answer": ANSWERS[i % len(ANSWERS)]}
        for i in range(n)
    ]


class RowCollator:
    """Processor-based collator: chat text + answer, labels on the answer tokens only (right padding)."""

    def __init__(self, proc):
        self.proc = proc

    def __call__(self, rows):
        proc = self.proc
        proc.tokenizer.padding_side = "right"
        texts = [tm.chat(proc, r["prompt"]) + " " + r["answer"] for r in rows]
        batch = dict(proc(images=[r["image"] for r in rows], text=texts, return_tensors="pt", padding=True))
        batch.pop("labels", None)
        labels = torch.full_like(batch["input_ids"], -100)
        for b, r in enumerate(rows):
            n = len(proc.tokenizer(r["answer"], add_special_tokens=False)["input_ids"])
            last = batch["attention_mask"][b].nonzero().squeeze(1)[-n:]
            labels[b, last] = batch["input_ids"][b, last]
        batch["labels"] = labels
        return batch


ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on the loopback interface, for a launcher's rendezvous (port 0 hangs torch 2.6's launcher)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run a distributed launcher (`accelerate`, `torchrun`) from this venv on 2 CPU processes, offline, with the
    repository importable; skips the test if the launcher is not installed."""
    import pytest

    path = shutil.which(launcher, path=str(Path(sys.executable).parent)) or shutil.which(launcher)
    if path is None:
        pytest.skip(f"the `{launcher}` launcher is not installed")
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run([path, *args], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
