"""CRG commands for the `vcontrast` command line: `ask`, `score` and `rerank`, one typed function each.

The main app registers them (`app.command()(ask)`); their docstrings become `--help`. Heavy imports (torch,
transformers) happen inside the commands. `--model` defaults to the toy VLM shipped with vcontrast. Every argument is
checked before the model loads; bad input raises `ValueError`, which `vcontrast.cli` turns into one line and exit 2.
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
    typer.Option(
        "--box", help="A region x0,y0,x1,y1 in pixels, or fractions with --normalized-boxes (repeat for several)."
    ),
]
NormalizedOption = Annotated[
    bool,
    typer.Option(
        "--normalized-boxes",
        help="Read --box coordinates as fractions of the image's width and height in [0, 1] instead of pixels.",
    ),
]
AlphaOption = Annotated[float, typer.Option(help="Guidance strength alpha (0 turns CRG off).")]
DeviceOption = Annotated[str | None, typer.Option(help="Where to run the model, e.g. 'cuda'; default: CPU.")]
ImageBackendOption = Annotated[
    str | None,
    typer.Option(
        help="Image processor backend: 'pil' or 'torchvision'; default: transformers' choice (torchvision where "
        "installed). They resize differently: pin one to compare numbers across machines."
    ),
]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`"x0,y0,x1,y1"` -> a box of 4 floats; raises ValueError naming the text otherwise."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"--box {text!r} has to be four numbers x0,y0,x1,y1, such as --box 10,20,60,80")
    return values


def load_model(
    model: str | None = None, device: str | None = None, image_backend: str | None = None
) -> tuple[Any, Any]:
    """`(model, processor)`: the shipped toy VLM for `None`, else `from_pretrained(model)`."""
    from vcontrast.models.loading import load_model as load

    return load(model, device=device, image_backend=image_backend)


def _inputs(
    image: Path,
    texts: list[str] | None,
    alpha: float | None,
    device: str | None,
    model: str | None,
    image_backend: str | None,
    normalized: bool = False,
):
    # Everything the user gave, checked before the model loads: (picture, boxes as given).
    from vcontrast.crg.guidance import check_alpha
    from vcontrast.models.image_backend import check_image_backend
    from vcontrast.models.loading import check_device, check_model_source
    from vcontrast.regions import _check_pixel_boxes, open_image, parse_boxes

    try:
        if alpha is not None:  # (re-ranking has none)
            check_alpha(alpha)
    except ValueError as error:
        raise ValueError(
            f"--alpha {alpha:g} has to be a finite number >= 0 (0 turns CRG off; the paper uses 1)"
        ) from error
    check_device(device)
    check_image_backend(image_backend)
    if model is not None:
        check_model_source(model)
    picture = open_image(image)
    boxes = [parse_box(text) for text in texts or []]
    if not boxes:
        raise ValueError("no --box given: pass at least one region x0,y0,x1,y1 (pixels) for CRG to black out")
    # malformed, outside the image, or fractions read as pixels: say so now, not after loading
    parse_boxes(boxes, picture.size, normalized=normalized)
    if not normalized:
        _check_pixel_boxes(boxes, picture.size, option="--normalized-boxes")
    return picture, boxes


def ask(
    image: Annotated[Path, typer.Argument(help="The image file.")],
    question: Annotated[str, typer.Argument(help="The question about the image.")],
    box: BoxOption = None,
    alpha: AlphaOption = 1.0,
    model: ModelOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 32,
    save: Annotated[Path | None, typer.Option(help="Write a side-by-side picture (PNG) here.")] = None,
    device: DeviceOption = None,
    image_backend: ImageBackendOption = None,
    normalized_boxes: NormalizedOption = False,
) -> None:
    """Answer QUESTION about IMAGE with and without CRG, blacking out the --box regions in the contrast image."""
    from vcontrast.atomic import IMAGE_SUFFIXES, check_output_file, save_image
    from vcontrast.crg import CRG

    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens} has to be at least 1")
    if save is not None:
        check_output_file(save, "--save", IMAGE_SUFFIXES)
    picture, boxes = _inputs(image, box, alpha, device, model, image_backend, normalized_boxes)
    vlm, processor = load_model(model, device, image_backend)
    crg = CRG(vlm, processor, alpha=alpha, normalized=normalized_boxes)
    plain_crg = CRG(vlm, processor, alpha=0.0, normalized=normalized_boxes)
    guided = crg.generate(picture, question, boxes, max_new_tokens=max_new_tokens)
    plain = plain_crg.generate(picture, question, boxes, max_new_tokens=max_new_tokens)
    print(f"without CRG: {plain}")
    print(f"with CRG (alpha={alpha:g}): {guided}")
    if save is not None:
        contrast = crg.contrast_images(picture, boxes, question)[0]
        from vcontrast.viz import side_by_side

        captions = {"without CRG": plain, f"with CRG (alpha={alpha:g})": guided}
        regions = crg.regions_for(picture, question, boxes)
        save_image(side_by_side(picture, contrast, regions, captions, title=f"Q: {question}"), save)
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
    image_backend: ImageBackendOption = None,
    normalized_boxes: NormalizedOption = False,
) -> None:
    """Score CANDIDATES as answers to PROMPT about IMAGE: CRG-guided and plain log-likelihoods, best first."""
    from vcontrast.crg import CRG

    if reduce not in ("sum", "mean"):
        raise ValueError(f"--reduce {reduce!r} has to be 'sum' or 'mean'")
    picture, boxes = _inputs(image, box, alpha, device, model, image_backend, normalized_boxes)
    vlm, processor = load_model(model, device, image_backend)
    guided = CRG(vlm, processor, alpha=alpha, normalized=normalized_boxes).score(
        picture, prompt, candidates, boxes, reduce, normalize
    )
    plain = CRG(vlm, processor, alpha=0.0, normalized=normalized_boxes).score(
        picture, prompt, candidates, boxes, reduce, normalize
    )
    order = sorted(range(len(candidates)), key=lambda i: -guided[i])
    width = max(len(c) for c in candidates)
    print(f"{'candidate':{width}s}  {'CRG':>10s}  {'plain':>10s}")
    for i in order:
        print(f"{candidates[i]:{width}s}  {guided[i]:10.4f}  {plain[i]:10.4f}")


def rerank(
    image: Annotated[Path, typer.Argument(help="The image file.")],
    text: Annotated[str, typer.Argument(help="The referring expression or phrase.")],
    box: Annotated[
        list[str],
        typer.Option("--box", help="A proposal x0,y0,x1,y1 in pixels (fractions with --normalized-boxes); repeat."),
    ],
    prompt: Annotated[str, typer.Option(help="The prompt TEXT is scored as an answer to.")] = "Describe the image.",
    model: ModelOption = None,
    device: DeviceOption = None,
    image_backend: ImageBackendOption = None,
    normalized_boxes: NormalizedOption = False,
) -> None:
    """Pick the --box proposal that TEXT refers to: each proposal is blacked out alone, and its score is how much
    that lowers TEXT's log-likelihood (CRG's re-ranking rule, sum of log p(token | image) - log p(token | image with
    the proposal blacked out); it has no alpha)."""
    from vcontrast.crg import CRG

    picture, boxes = _inputs(image, box, None, device, model, image_backend, normalized_boxes)
    vlm, processor = load_model(model, device, image_backend)
    crg = CRG(vlm, processor, normalized=normalized_boxes)
    best, scores = crg.rerank(picture, text, boxes, prompt=prompt)
    for i, (proposal, value) in enumerate(zip(boxes, scores, strict=True)):
        mark = "  <- best" if i == best else ""
        print(f"{i}: {','.join(f'{v:g}' for v in proposal)}  {value:10.4f}{mark}")
