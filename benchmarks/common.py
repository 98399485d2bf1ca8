"""What the benchmark scripts share (a sibling module they import): `--device` / `--dtype`, LLaVA-1.5-7B's sizes,
and building a random LLaVA where it runs."""

from __future__ import annotations

import argparse

import torch
import transformers as tf

from vcontrast.models.loading import check_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# LLaVA-1.5-7B's sizes (CLIP ViT-L/14 at 336 px, Vicuna-7B): the "llava7b" shape of both scripts.
LLAVA_7B_VISION = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "projection_dim": 768,
}  # fmt: skip
LLAVA_7B_TEXT = {
    "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32,
}  # fmt: skip


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="model dtype (default float32)")


def parse_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the parsed arguments; a bad device is a one-line argparse error, through vcontrast's own
    `check_device`; cpu or cuda only."""
    try:
        device = check_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: only cpu and cuda are supported")
    return device, DTYPES[args.dtype]


def build_llava(
    config: tf.LlavaConfig, device: torch.device | str, dtype: torch.dtype
) -> tf.LlavaForConditionalGeneration:
    """A random LLaVA of `config`, built on `device` in `dtype` (a 7B model never exists on the CPU or in float32);
    on the CPU in float32, the plain constructor, so the CPU numbers stay those of earlier runs."""
    if torch.device(device).type == "cpu" and dtype == torch.float32:
        return tf.LlavaForConditionalGeneration(config)
    with torch.device(device):  # transformers' `dtype` sets the default dtype while it builds
        return tf.LlavaForConditionalGeneration._from_config(config, dtype=dtype)
