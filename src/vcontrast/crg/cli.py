"""CRG commands for the `vcontrast` command line: `ask`, `score` and `rerank`, one typed function each.

The main app registers them (`app.command()(ask)`); their docstrings become `--help`. Heavy imports (torch,
transformers) happen inside the commands. `--model` defaults to the toy VLM shipped with vcontrast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", help="Folder or hub name of a supported VLM; default: the toy model shipped with vcontrast."
    ),
]
BoxOption = Annotated[
    list[str] | None,
    typer.Option("--box", help="A region x0,y0,x1,y1 in pixels (repeat for several regions)."),
]
AlphaOption = Annotated[float, typer.Option(help="Guidance strength alpha (0 turns CRG off).")]
DeviceOption = Annotated[str | None, typer.Option(help="Where to run the model, e.g. 'cuda'; default: CPU.")]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`"x0,y0,x1,y1"` -> a box of 4 floats; raises ValueError naming the text otherwise."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"box {text!r} has to be four numbers x0,y0,x1,y1")
    return values


def load_model(model: str | None = None, device: str | None = None) -> tuple[Any, Any]:
    """`(model, processor)`: the shipped toy VLM for `None`, else `from_pretrained(model)`."""
    from vcontrast.models.loading import load_model as load

    try:
        return load(model, device=device)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def _open_image(path: Path):
    from vcontrast.regions import open_image

    try:
        return open_image(path)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def _boxes(texts: list[str] | None) -> list[tuple[float, float, float, float]]:
    try:
        return [parse_box(text) for text in texts or []]
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def ask(
    image: Annotated[Path, typer.Argument(help="The image file.")],
    question: Annotated[str, typer.Argument(help="The question about the image.")],
    box: BoxOption = None,
    alpha: AlphaOption = 1.0,
    model: ModelOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 32,
    save: Annotated[Path | None, typer.Option(help="Write a side-by-side picture (PNG) here.")] = None,
    device: DeviceOption = None,
) -> None:
    """Answer QUESTION about IMAGE with and without CRG, blacking out the --box regions in the contrast image."""
    from vcontrast.crg import CRG

    picture, boxes = _open_image(image), _boxes(box)
    vlm, processor = load_model(model, device)
    crg = CRG(vlm, processor, alpha=alpha)
    plain_crg = CRG(vlm, processor, alpha=0.0)
    try:
        guided = crg.generate(picture, question, boxes, max_new_tokens=max_new_tokens)
        plain = plain_crg.generate(picture, question, boxes, max_new_tokens=max_new_tokens)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    print(f"without CRG: {plain}")
    print(f"with CRG (alpha={alpha:g}): {guided}")
    if save is not None:
        contrast = crg.contrast_images(picture, boxes, question)[0]
        from vcontrast.viz import side_by_side

        captions = {"without CRG": plain, f"with CRG (alpha={alpha:g})": guided}
        regions = crg.regions_for(picture, question, boxes)
        side_by_side(picture, contrast, regions, captions, title=f"Q: {question}").save(save)
        print(f"picture written to {save}")


def score(
    image: Annotated[Path, typer.Argument(help="The image file.")],
    prompt: Annotated[str, typer.Argument(help="The question the candidates answer.")],
    candidates: Annotated[list[str], typer.Argument(help="The candidate answers.")],
    box: BoxOption = None,
    alpha: AlphaOption = 1.0,
    model: ModelOption = None,
    reduce: Annotated[str, typer.Option(help="'sum' or 'mean' over each candidate's tokens.")] = "sum",
    normalize: Annotated[bool, typer.Option(help="Renormalise the guided distribution.")] = True,
    device: DeviceOption = None,
) -> None:
    """Score CANDIDATES as answers to PROMPT about IMAGE: CRG-guided and plain log-likelihoods, best first."""
    from vcontrast.crg import CRG

    picture, boxes = _open_image(image), _boxes(box)
    vlm, processor = load_model(model, device)
    try:
        guided = CRG(vlm, processor, alpha=alpha).score(picture, prompt, candidates, boxes, reduce, normalize)
        plain = CRG(vlm, processor, alpha=0.0).score(picture, prompt, candidates, boxes, reduce, normalize)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    order = sorted(range(len(candidates)), key=lambda i: -guided[i])
    width = max(len(c) for c in candidates)
    print(f"{'candidate':{width}s}  {'CRG':>10s}  {'plain':>10s}")
    for i in order:
        print(f"{candidates[i]:{width}s}  {guided[i]:10.4f}  {plain[i]:10.4f}")


def rerank(
    image: Annotated[Path, typer.Argument(help="The image file.")],
    text: Annotated[str, typer.Argument(help="The referring expression or phrase.")],
    box: Annotated[list[str], typer.Option("--box", help="A proposal x0,y0,x1,y1 in pixels (repeat).")],
    prompt: Annotated[str, typer.Option(help="The prompt TEXT is scored as an answer to.")] = "Describe the image.",
    alpha: AlphaOption = 1.0,
    model: ModelOption = None,
    device: DeviceOption = None,
) -> None:
    """Pick the --box proposal that TEXT refers to: each proposal is blacked out alone and scored with CRG."""
    from vcontrast.crg import CRG

    picture, boxes = _open_image(image), _boxes(box)
    vlm, processor = load_model(model, device)
    try:
        best, scores = CRG(vlm, processor, alpha=alpha).rerank(picture, text, boxes, prompt=prompt)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    for i, (proposal, value) in enumerate(zip(boxes, scores, strict=True)):
        mark = "  <- best" if i == best else ""
        print(f"{i}: {','.join(f'{v:g}' for v in proposal)}  {value:10.4f}{mark}")
