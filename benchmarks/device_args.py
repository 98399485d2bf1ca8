"""`--device` and `--dtype` for the benchmark scripts, one definition for both (imported as a sibling module)."""

from __future__ import annotations

import argparse

import torch

from vcontrast.models.loading import check_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
