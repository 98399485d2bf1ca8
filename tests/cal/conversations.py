"""LLaVA-style conversation files and a tiny toy VLM on disk, shared by the data, CLI and fine-tuning tests."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import typer
from PIL import Image
from typer.testing import CliRunner

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "vision_hidden_size": 32, "vision_layers": 2}
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}

# Toy-vocabulary conversations: single-turn, multi-turn, and one without an image.
RECORDS = [
    {
        "id": "a",
        "image": "images/red.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the circle ?"},
            {"from": "gpt", "value": "red"},
        ],
    },
    {
        "id": "b",
        "image": "images/blue.png",
        "conversations": [
            {"from": "human", "value": "what color is the square ?\n<image>"},
            {"from": "gpt", "value": "blue"},
            {"from": "human", "value": "what shape is it ?"},
            {"from": "gpt", "value": "a square"},
        ],
    },
    {
        "id": "c",
        "image": "images/green.png",
        "conversations": [
            {"from": "human", "value": "describe the image ."},
            {"from": "gpt", "value": "a green circle on the left"},
        ],
    },
    {"id": "d", "conversations": [{"from": "human", "value": "what is red ?"}, {"from": "gpt", "value": "a color"}]},
    {
        "id": "e",
        "image": "images/red.png",
        "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image ."},
            {"from": "gpt", "value": "a small red square"},
        ],
    },
]


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (64, 64), rgb).save(folder / f"{name}.png")


def write_data(folder: Path, records: list[dict] | None = None, name: str = "data.jsonl") -> Path:
    """A JSONL file of `records` (default `RECORDS`) with its images under `folder/images`."""
    write_images(folder / "images")
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in (RECORDS if records is None else records)))
    return path


@functools.cache
def toy_processor():
    from vcontrast.toy.train import toy_processor as build

    return build()  # ~2 s: built once per test session


def save_toy_model(folder: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised toy VLM and its processor, saved with `save_pretrained` into `folder`."""
    import torch

    from vcontrast.toy.model import build_model

    torch.manual_seed(seed)
    model = build_model(toy_processor(), **TINY)
    model.save_pretrained(folder)
    toy_processor().save_pretrained(folder)
    return folder


def cli_app() -> typer.Typer:
    """A Typer app with the CAL commands registered as `vcontrast.cli` registers them."""
    from vcontrast.cal.cli import cal_app, train

    app = typer.Typer()
    app.add_typer(cal_app, name="cal")
    app.command("train")(train)
    return app


def run(*args, code: int = 0):
    """Invoke `cli_app()` with `args` and check the exit code."""
    # Wide enough that rich does not wrap the error messages (paths) inside its boxes.
    result = CliRunner().invoke(cli_app(), [str(a) for a in args], env={"COLUMNS": "400"})
    assert result.exit_code == code, result.output + repr(result.exception)
    return result
