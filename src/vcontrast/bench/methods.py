"""Methods the eval runner runs: how a model turns a batch of benchmark items into predictions.

A method is any object with a `name`, a JSON-ready `config` and `predict(items, images) -> list[dict]` (the `Method`
protocol), so that tests and users can plug in their own. The two built-in methods wrap `vcontrast.crg.CRG`, so that
both read prompts through the same chat template and score candidates the same way:

- "base" (`BaseMethod`): the plain model, `CRG` with `alpha=0` (no guidance).
- "crg" (`CRGMethod`): Contrastive Region Guidance with the given `alpha`.

and the baselines of the CRG paper's tables, named as there:

- "overlay" (`OverlayMethod`): visual prompting, the plain model on the image with the regions drawn as red
  rectangle outlines (ViP-Bench's bounding-box setting; `overlay_width`, `overlay_color`).
- "crg+overlay" (`CRGOverlayMethod`): CRG whose reference image carries the overlay (the contrast image is the
  overlaid image with the regions blacked out).
- "vcd" (`VCDMethod`): Visual Contrastive Decoding, the contrast image is the diffusion-noised image (VCD's step
  500 of 1000, `alpha=1` and plausibility cutoff `beta=0.1` by default), no regions.
- "no-image" (`NoImageMethod`): the contrast stream without the image (its image tokens masked out of the
  attention, text positions kept), no regions.

What each task turns into (the prediction schema of `vcontrast.bench.metrics`):

- "choice": `score_batch(images, prompts, candidates)`, each candidate's summed token log-probs -> `scores`,
  `pred_index`.
- "match": `score_batch` of the answers "yes" and "no" to CRG's `MATCH_TEMPLATE` ("Does this image match: {text}?")
  -> `p_yes` = P(yes) / (P(yes) + P(no)), `logprobs` (of "yes" and "no").
- "refexp": "crg" re-ranks with `CRG.rerank_batch` by the paper's rule (proposal i scores the drop in the
  expression's log-likelihood when only box i is blacked out, unnormalised); "base" scores the expression given each
  proposal's crop -> `scores`, `pred_index`, `pred_box`. The expression is scored as the answer to the method's
  `rerank_prompt` (default: CRG's `RERANK_PROMPT`, "Describe the image."); a model trained to name objects in
  another format (the toy model: "name one object in the image .") is scored in its own format by passing it
  (`get_method(..., rerank_prompt=...)`, `evaluate(..., rerank_prompt=...)`, `vcontrast eval --rerank-prompt`).
- "vqa", "region_vqa", "caption": `generate_batch`, greedy, `max_new_tokens` -> `text`.

P(yes) is renormalised over "yes" and "no", so that F1 at 0.5 means "yes is more likely than no" whatever mass the
model puts on other words. The "base" re-ranking scores crops because the plain model, with no contrast image,
has no other way to tell proposals apart.

Regions (what CRG blacks out), recorded in each prediction as `regions` and `regions_source`:

1. `"item"`: the item's own `regions` (ViP-Bench annotations, the toy world's boxes).
2. `"proposer"`: otherwise, the boxes a region proposer (`vcontrast.crg.proposals`) finds for the noun phrases of the
   item: of its candidates for "choice" items (What'sUp and SugarCrepe share one generic prompt, the objects are in the
   captions; all candidates are used, so the regions never depend on the gold one), of its prompt otherwise.
3. `"whole"`: when there is no proposer or it finds nothing, the whole image is blacked out (the "whole image"
   ablation of the CRG paper: the contrast stream sees a black image, so CRG contrasts with the model's image-free
   prior). Count these before reading a CRG number: `metrics.json` reports how many predictions used each source.

"refexp" items get their proposals the same way: the item's `proposals`, else the proposer's boxes for the
expression, else the whole image as the only proposal (`pred_box` is then the whole image).

Examples:

```python
>>> from vcontrast.bench.methods import get_method
>>> method = get_method("crg", model, processor, alpha=1.0, proposer=None)  # doctest: +SKIP
>>> method.predict(items[:4], [Image.open(item.image) for item in items[:4]])  # doctest: +SKIP
[{'scores': [-3.1, -4.2], 'pred_index': 0, 'regions': [[12.0, 40.0, 80.0, 96.0]], 'regions_source': 'item'}, ...]
```
"""

from __future__ import annotations

import importlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from PIL import Image

from vcontrast.bench.items import Item

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "BaseMethod",
    "CRGMethod",
    "CRGOverlayMethod",
    "Method",
    "ModelMethod",
    "NoImageMethod",
    "OverlayMethod",
    "VCDMethod",
    "check_alpha_has_effect",
    "get_method",
    "method_config",
    "region_phrases",
]

DEFAULT_PROPOSER = "grounding-dino"
DEFAULT_ALPHA = 1.0  # `alpha` of `evaluate` and `vcontrast eval` when not given
# Proposers that register themselves when their module is imported (so that `--proposer toy` works from the CLI).
_SELF_REGISTERING = {"toy": "vcontrast.toy.proposer"}


@runtime_checkable
class Method(Protocol):
    """What the eval runner needs from a method.

    Attributes:
        name (`str`): short name, written to `run.json` and `metrics.json`.
        config (`dict`): JSON-ready settings that change predictions; a rerun into the same output folder must have
            the same ones (the runner refuses to mix predictions of different settings).
    """

    name: str
    config: dict

    def predict(self, items: list[Item], images: list[Image.Image]) -> list[dict]:
        """One prediction dict per item (schema of `vcontrast.bench.metrics`), in order; `images[i]` is the RGB
        image of `items[i]`. Values must be JSON-serialisable."""
        ...


def method_config(
    name: str,
    alpha: float = 1.0,
    proposer: Any = DEFAULT_PROPOSER,
    proposer_model: str | None = None,
    max_new_tokens: int = 32,
    rerank_prompt: str | None = None,
    **options: Any,
) -> dict:
    """The `config` of a built-in method, computable before the model is loaded (the runner checks it on resume).

    Args:
        name (`str`): a key of `METHODS` ("base", "crg", "overlay", "crg+overlay", "vcd", "no-image").
        alpha (`float`, *optional*, defaults to 1.0): CRG's guidance strength (not part of "base").
        proposer (`str`, `RegionProposer` or `None`, *optional*, defaults to `"grounding-dino"`): the proposer.
        proposer_model (`str`, *optional*): the proposer's checkpoint.
        max_new_tokens (`int`, *optional*, defaults to 32): generation length for open-answer tasks.
        rerank_prompt (`str`, *optional*): the prompt refexp expressions are scored as the answer to (see
            `ModelMethod`); recorded only when given, so runs made before the option existed keep their config.
        **options: the method's own settings (`overlay_width`, `overlay_color`; `noise_step`, `plausibility_beta`).
    """
    if name not in METHODS:
        raise ValueError(f"`method` (={name!r}) has to be one of {sorted(METHODS)} or a Method object")
    cls = METHODS[name]
    unknown = sorted(set(options) - set(cls.defaults))
    if unknown:
        raise ValueError(f"method {name!r} takes no options {unknown}; its options: {sorted(cls.defaults)}")
    settings = _check_options(cls.defaults | options)
    if rerank_prompt is not None:
        settings["rerank_prompt"] = _check_rerank_prompt(rerank_prompt)
    if cls.guided:
        from vcontrast.crg.guidance import check_alpha

        return _config(proposer, proposer_model, max_new_tokens, check_alpha(alpha)) | settings
    return _config(proposer, proposer_model, max_new_tokens) | settings


def check_alpha_has_effect(name: str, alpha: float, tasks: Iterable[str]) -> None:
    """Refuse an `alpha` other than the default (`DEFAULT_ALPHA`) for a built-in method that ignores it on every
    task of the run: "crg" and "crg+overlay" re-rank referring expressions ("refexp") by the alpha-free log-ratio
    `log p(expr | I) - log p(expr | I, proposal blacked out)`, so an alpha sweep over RefCOCO would give identical
    numbers under different labels. The default is accepted (and recorded), so existing runs resume.

    Raises:
        `ValueError`: naming the method, the tasks and what to do instead.
    """
    cls = METHODS.get(name)
    tasks = set(tasks)
    if cls is None or not cls.guided or not tasks or not tasks <= set(cls.alpha_free_tasks) or alpha == DEFAULT_ALPHA:
        return
    raise ValueError(
        f"`alpha` (={alpha!r}) has no effect on method {name!r} for {', '.join(sorted(tasks))} items: it re-ranks "
        "proposals by the alpha-free log-ratio log p(expr | I) - log p(expr | I, proposal blacked out); leave "
        f"--alpha at its default ({DEFAULT_ALPHA}), or use a method whose re-ranking it changes (vcd, no-image)"
    )


def _check_rerank_prompt(prompt: Any) -> str | None:
    """`prompt` if it is None or a string with text, else a `ValueError` naming it (the refexp scoring prompt)."""
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise ValueError(f"`rerank_prompt` (={prompt!r}) has to be a non-empty string or None")
    return prompt


def _check_options(options: dict) -> dict:
    # The baselines' settings, checked and JSON-ready (colours as lists).
    out = dict(options)
    if "overlay_width" in out:
        width = out["overlay_width"]
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"`overlay_width` (={width!r}) has to be a positive integer")
    if "overlay_color" in out:
        from vcontrast.regions import _check_fill

        out["overlay_color"] = list(_check_fill(out["overlay_color"]))
    if "noise_step" in out:
        from vcontrast.conditions import DiffusionNoise

        DiffusionNoise(out["noise_step"])  # checks the step
    if "plausibility_beta" in out:
        from vcontrast.crg.guidance import check_beta

        out["plausibility_beta"] = check_beta(out["plausibility_beta"])
    return out


def _config(proposer: Any, proposer_model: str | None, max_new_tokens: int, alpha: float | None = None) -> dict:
    # Checks the settings shared by every built-in method and lists them, alpha first when there is one.
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` (={max_new_tokens!r}) has to be a positive integer")
    if proposer is not None and not isinstance(proposer, str) and not callable(proposer):
        raise ValueError(f"`proposer` (={proposer!r}) has to be a proposer name, a RegionProposer or None")
    config = {"proposer": _proposer_id(proposer), "proposer_model": proposer_model, "max_new_tokens": max_new_tokens}
    return config if alpha is None else {"alpha": float(alpha), **config}


def _proposer_id(proposer: Any) -> str | None:
    if proposer is None or isinstance(proposer, str):
        return proposer
    return getattr(proposer, "name", None) or type(proposer).__name__


def region_phrases(item: Item) -> list[str]:
    """The noun phrases a region proposer looks for: of the candidates of a "choice" item (all of them, so the
    regions never depend on the gold answer), of the prompt for every other task."""
    from vcontrast.crg.phrases import extract_noun_phrases

    texts = item.candidates if item.task == "choice" and item.candidates else [item.prompt]
    return list(dict.fromkeys(phrase for text in texts for phrase in extract_noun_phrases(text)))


def _whole(image: Image.Image) -> list[list[float]]:
    return [[0.0, 0.0, float(image.width), float(image.height)]]


def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=lambda i: (not math.isnan(scores[i]), scores[i]))


def _regroup(flat: list, boxes: list[list]) -> list[list]:
    # A flat list with one entry per proposal back into one list per item.
    out, start = [], 0
    for item_boxes in boxes:
        out.append(flat[start : start + len(item_boxes)])
        start += len(item_boxes)
    return out


def _crop(image: Image.Image, box: Sequence[float]) -> Image.Image:
    # Round outward and keep at least one pixel, so that a thin or out-of-image box still gives an image to score.
    # An inverted box is refused: it is no region (often COCO's [x, y, w, h] taken for [x0, y0, x1, y1]).
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box {tuple(box)} is inverted: it needs x0 <= x1 and y0 <= y1 (boxes are xyxy)")
    x0 = min(max(math.floor(box[0]), 0), image.width - 1)
    y0 = min(max(math.floor(box[1]), 0), image.height - 1)
    x1 = max(min(math.ceil(box[2]), image.width), x0 + 1)
    y1 = max(min(math.ceil(box[3]), image.height), y0 + 1)
    return image.crop((x0, y0, x1, y1))


class ModelMethod:
    """Shared part of the built-in methods: dispatch by task, region proposals, and the four task handlers.

    Subclasses set `name` and the `CRG` they score with (`self.crg`), and may override a handler.

    Args:
        model (`PreTrainedModel`): a supported VLM in eval mode.
        processor (`ProcessorMixin`): its processor.
        proposer (`str`, `RegionProposer` or `None`, *optional*, defaults to `"grounding-dino"`): where regions
            (and refexp proposals) come from when an item has none: a `vcontrast.crg.proposals` name (built on first
            use), a proposer object, or `None` for none (the whole image is blacked out instead).
        proposer_model (`str`, *optional*): checkpoint folder or hub name of a named proposer.
        max_new_tokens (`int`, *optional*, defaults to 32): generation length for open-answer tasks (greedy).
        rerank_prompt (`str`, *optional*): the prompt a refexp expression is scored as the answer to; `None` (the
            default) is CRG's `RERANK_PROMPT`. A model trained to name objects in another format (e.g. the toy
            model's "name one object in the image .") needs its own. Once set it is part of `config`, so the runner
            never mixes predictions of two formats.
    """

    name = "model"
    guided = False  # whether `alpha` is a setting
    # Tasks whose predictions do not depend on `alpha` (CRG's refexp re-ranking: the alpha-free log-ratio).
    alpha_free_tasks: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict] = {}  # the method's own options and their defaults
    # The prompt a refexp expression answers; None: CRG's RERANK_PROMPT. Recorded in `config` only when set, so that
    # the runs made before it existed keep their settings.
    rerank_prompt: str | None = None

    def __init__(
        self,
        model: Any,
        processor: Any,
        proposer: Any = DEFAULT_PROPOSER,
        proposer_model: str | None = None,
        max_new_tokens: int = 32,
        rerank_prompt: str | None = None,
    ):
        _config(proposer, proposer_model, max_new_tokens)
        self.rerank_prompt = _check_rerank_prompt(rerank_prompt)
        self.model = model
        self.processor = processor
        self.proposer = proposer
        self.proposer_model = proposer_model
        self.max_new_tokens = max_new_tokens
        self._built_proposer = None if isinstance(proposer, str) else proposer

    @property
    def config(self) -> dict:
        """Settings that change predictions (see `method_config`)."""
        options = _check_options({key: getattr(self, key) for key in self.defaults})
        if self.rerank_prompt is not None:
            options["rerank_prompt"] = self.rerank_prompt
        return _config(self.proposer, self.proposer_model, self.max_new_tokens, getattr(self, "alpha", None)) | options

    def expression_prompt(self) -> str:
        """The prompt a refexp expression is scored as the answer to: `rerank_prompt`, else CRG's `RERANK_PROMPT`."""
        from vcontrast.crg.crg import RERANK_PROMPT

        return RERANK_PROMPT if self.rerank_prompt is None else self.rerank_prompt

    # ------------------------------------------------------------------ regions

    def propose(self, image: Image.Image, phrases: list[str], every_box: bool = False) -> list[list[float]]:
        """Boxes the proposer finds for `phrases` (empty without a proposer or phrases): its best per phrase for a
        detector proposer (what CRG blacks out), or every box it finds with `every_box=True` (refexp proposals)."""
        if self.proposer is None or not phrases:
            return []
        from vcontrast.crg.proposals import PROPOSERS, get_proposer_for, propose_regions

        if self._built_proposer is None:
            if self.proposer in _SELF_REGISTERING and self.proposer not in PROPOSERS:
                importlib.import_module(_SELF_REGISTERING[self.proposer])
            kwargs = {"model": self.proposer_model} if self.proposer_model is not None else {}
            device = getattr(self.model, "device", None)
            if device is not None and getattr(device, "type", "cpu") != "cpu":
                kwargs["device"] = device
            try:
                self._built_proposer = get_proposer_for(self.proposer, self.processor, **kwargs)
            except (OSError, ValueError) as e:
                if not isinstance(e, OSError) and not isinstance(e.__cause__, OSError):
                    raise  # a bad option or image backend: its own message says what to change
                # a checkpoint that cannot be read (`load_processor` reports it as a ValueError from the OSError)
                raise ValueError(
                    f"cannot load the region proposer `proposer` (={self.proposer!r}, model={self.proposer_model!r}): "
                    f"{e}. Pass a local checkpoint (proposer_model / --proposer-model) or proposer=None "
                    "(--proposer none) to black out the whole image instead"
                ) from e
        proposer = self._built_proposer
        if every_box and hasattr(proposer, "with_options"):  # a DetectorProposer: all boxes above its threshold
            proposer = proposer.with_options(top_k=None)
        return [list(p.box) for p in propose_regions(image, phrases, detector=proposer)]

    def regions(self, item: Item, image: Image.Image) -> tuple[list[list[float]], str]:
        """`(boxes, source)` for what CRG blacks out: the item's regions ("item"), the proposer's ("proposer"), or
        the whole image ("whole")."""
        if item.regions:
            return [list(b) for b in item.regions], "item"
        boxes = self.propose(image, region_phrases(item))
        if boxes:
            return boxes, "proposer"
        return _whole(image), "whole"

    def proposals(self, item: Item, image: Image.Image) -> tuple[list[list[float]], str]:
        """`(boxes, source)` to re-rank for a "refexp" item, with the same sources as `regions`."""
        if item.proposals:
            return [list(b) for b in item.proposals], "item"
        boxes = self.propose(image, [item.prompt], every_box=True)
        if boxes:
            return boxes, "proposer"
        return _whole(image), "whole"

    # ------------------------------------------------------------------ dispatch

    def predict(self, items: list[Item], images: list[Image.Image]) -> list[dict]:
        """Predictions for a batch of items (of any tasks; each task's items run as one batch)."""
        if len(items) != len(images):
            raise ValueError(f"got {len(items)} items but {len(images)} images")
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_task[item.task].append(i)
        out: list[dict | None] = [None] * len(items)
        for task, index in by_task.items():
            handler = {"choice": self.choice, "match": self.match, "refexp": self.refexp}.get(task, self.answer)
            batch_items, batch_images = [items[i] for i in index], [images[i] for i in index]
            try:
                predictions = handler(batch_items, batch_images)
            except ValueError as e:
                raise ValueError(f"items {[item.id for item in batch_items]}: {e}") from e
            for i, prediction in zip(index, predictions, strict=True):
                out[i] = prediction
        return out

    def _guided_regions(self, items: list[Item], images: list[Image.Image]) -> tuple[list | None, list[dict]]:
        # "base" needs no regions (alpha 0); CRGMethod overrides this.
        return None, [{} for _ in items]

    def choice(self, items: list[Item], images: list[Image.Image]) -> list[dict]:
        """Scores of every candidate ("choice" items)."""
        regions, extra = self._guided_regions(items, images)
        scores = self.crg.score_batch(images, [it.prompt for it in items], [it.candidates for it in items], regions)
        return [{"scores": s, "pred_index": _argmax(s), **e} for s, e in zip(scores, extra, strict=True)]

    def match(self, items: list[Item], images: list[Image.Image]) -> list[dict]:
        """P("yes") renormalised over "yes"/"no" for CRG's `MATCH_TEMPLATE` ("match" items), as `CRG.match` computes
        it (`yes_probability` of the guided log-probs of the two answers)."""
        from vcontrast.crg.crg import MATCH_ANSWERS, MATCH_TEMPLATE, yes_probability

        regions, extra = self._guided_regions(items, images)
        prompts = [MATCH_TEMPLATE.format(text=it.prompt) for it in items]
        scores = self.crg.score_batch(images, prompts, [list(MATCH_ANSWERS)] * len(items), regions)
        return [
            {"p_yes": yes_probability(yes, no), "logprobs": [yes, no], **e}
            for (yes, no), e in zip(scores, extra, strict=True)
        ]

    def answer(self, items: list[Item], images: list[Image.Image]) -> list[dict]:
        """Greedy answers ("vqa", "region_vqa", "caption" items)."""
        regions, extra = self._guided_regions(items, images)
        texts = self.crg.generate_batch(
            images, [it.prompt for it in items], regions, max_new_tokens=self.max_new_tokens, do_sample=False
        )
        return [{"text": t, **e} for t, e in zip(texts, extra, strict=True)]

    def refexp(self, items: list[Item], images: list[Image.Image]) -> list[dict]:
        """Scores of every proposal ("refexp" items), all items of the batch at once; see `rerank_batch`."""
        found = [self.proposals(item, image) for item, image in zip(items, images, strict=True)]
        all_scores = self.rerank_batch(items, images, [boxes for boxes, _ in found])
        out = []
        for (boxes, source), scores in zip(found, all_scores, strict=True):
            best = _argmax(scores)
            out.append(
                {"scores": scores, "pred_index": best, "pred_box": boxes[best], "proposals_source": source}
                | ({"proposals": boxes} if source != "item" else {})
            )
        return out

    def rerank_batch(
        self, items: list[Item], images: list[Image.Image], boxes: list[list[list[float]]]
    ) -> list[list[float]]:
        """Per item, one score per proposal box, higher is better. By default (methods without regions: "base",
        "vcd", "no-image"), the expression's score given each proposal's crop (see the module doc)."""
        crops = [_crop(image, box) for image, item_boxes in zip(images, boxes, strict=True) for box in item_boxes]
        texts = [[item.prompt] for item, item_boxes in zip(items, boxes, strict=True) for _ in item_boxes]
        prompts = [self.expression_prompt()] * len(crops)
        return _regroup([s[0] for s in self.crg.score_batch(crops, prompts, texts)], boxes)


class BaseMethod(ModelMethod):
    """The plain model: `CRG` with `alpha=0`, so prompts and scores are built exactly as for "crg".

    "refexp": the score of proposal `i` is the log-likelihood of the expression (as the answer to `rerank_prompt`,
    by default CRG's `RERANK_PROMPT`, "Describe the image.") given the image cropped to box `i`; see the module
    docstring. Other arguments as `ModelMethod`.

    Examples:

    ```python
    >>> method = BaseMethod(model, processor)  # doctest: +SKIP
    ```
    """

    name = "base"

    def __init__(self, model: Any, processor: Any, **kwargs: Any):
        from vcontrast.crg import CRG

        super().__init__(model, processor, **kwargs)
        # "whole": no regions needed; with alpha 0 the contrast image never changes a score or a token.
        self.crg = CRG(model, processor, alpha=0.0, mode="whole")


class CRGMethod(ModelMethod):
    """Contrastive Region Guidance with strength `alpha` (regions as in the module docstring).

    Args:
        model (`PreTrainedModel`): a supported VLM in eval mode.
        processor (`ProcessorMixin`): its processor.
        alpha (`float`, *optional*, defaults to 1.0): guidance strength, >= 0.
        **kwargs: `proposer`, `proposer_model`, `max_new_tokens` (see `ModelMethod`).

    Examples:

    ```python
    >>> method = CRGMethod(model, processor, alpha=1.0, proposer="owlv2")  # doctest: +SKIP
    ```
    """

    name = "crg"
    guided = True
    alpha_free_tasks: ClassVar[tuple[str, ...]] = ("refexp",)

    def __init__(self, model: Any, processor: Any, alpha: float = 1.0, **kwargs: Any):
        from vcontrast.crg import CRG

        super().__init__(model, processor, **kwargs)
        self.crg = CRG(model, processor, alpha=alpha)
        self.alpha = self.crg.alpha

    def _guided_regions(self, items: list[Item], images: list[Image.Image]) -> tuple[list, list[dict]]:
        regions, extra = [], []
        for item, image in zip(items, images, strict=True):
            boxes, source = self.regions(item, image)
            regions.append(boxes)
            extra.append({"regions": boxes, "regions_source": source})
        return regions, extra

    def rerank_batch(
        self, items: list[Item], images: list[Image.Image], boxes: list[list[list[float]]]
    ) -> list[list[float]]:
        """The CRG paper's re-ranking (`CRG.rerank_batch`): proposal i scores the drop in the expression's
        log-likelihood (as the answer to `expression_prompt()`) when only box i is blacked out (the unnormalised
        log-ratio)."""
        texts = [item.prompt for item in items]
        return [scores for _, scores in self.crg.rerank_batch(images, texts, boxes, prompt=self.expression_prompt())]


class OverlayMethod(CRGMethod):
    """The "overlay" baseline (visual prompting, ViP-Bench's bounding-box setting): the plain model on the image with
    the regions drawn as rectangle outlines; `CRG` with `alpha=0` and `overlay=True`.

    "refexp": proposal i scores the expression given the image with box i outlined.

    Args:
        model, processor: as `ModelMethod`.
        overlay_width (`int`, *optional*, defaults to 2): outline width in pixels.
        overlay_color (`tuple[int, int, int]`, *optional*, defaults to red): outline colour.
        **kwargs: `proposer`, `proposer_model`, `max_new_tokens` (see `ModelMethod`).

    Examples:

    ```python
    >>> method = OverlayMethod(model, processor, overlay_width=3, proposer=None)  # doctest: +SKIP
    ```
    """

    name = "overlay"
    guided = False
    defaults: ClassVar[dict] = {"overlay_width": 2, "overlay_color": (255, 0, 0)}

    def __init__(self, model: Any, processor: Any, overlay_width: int = 2, overlay_color=(255, 0, 0), **kwargs: Any):
        from vcontrast.crg import CRG

        ModelMethod.__init__(self, model, processor, **kwargs)
        self.overlay_width, self.overlay_color = overlay_width, overlay_color
        self.crg = CRG(
            model, processor, alpha=self._alpha(), overlay=True, overlay_width=overlay_width,
            overlay_color=overlay_color,
        )  # fmt: skip

    def _alpha(self) -> float:
        return 0.0

    def rerank_batch(
        self, items: list[Item], images: list[Image.Image], boxes: list[list[list[float]]]
    ) -> list[list[float]]:
        flat_images = [image for image, item_boxes in zip(images, boxes, strict=True) for _ in item_boxes]
        texts = [[item.prompt] for item, item_boxes in zip(items, boxes, strict=True) for _ in item_boxes]
        regions = [[box] for item_boxes in boxes for box in item_boxes]
        scores = self.crg.score_batch(flat_images, [self.expression_prompt()] * len(flat_images), texts, regions)
        return _regroup([s[0] for s in scores], boxes)


class CRGOverlayMethod(OverlayMethod):
    """The "crg+overlay" method: CRG (strength `alpha`) whose reference image carries the regions' outlines; the
    contrast image is the overlaid image with the regions blacked out.

    "refexp": proposal i scores the paper's log-ratio with box i outlined in the reference and blacked out in the
    contrast image.

    Args:
        model, processor: as `ModelMethod`.
        alpha (`float`, *optional*, defaults to 1.0): guidance strength, >= 0.
        overlay_width, overlay_color: as `OverlayMethod`.
        **kwargs: `proposer`, `proposer_model`, `max_new_tokens` (see `ModelMethod`).

    Examples:

    ```python
    >>> method = CRGOverlayMethod(model, processor, alpha=1.0, proposer=None)  # doctest: +SKIP
    ```
    """

    name = "crg+overlay"
    guided = True
    alpha_free_tasks: ClassVar[tuple[str, ...]] = ("refexp",)

    def __init__(self, model: Any, processor: Any, alpha: float = 1.0, **kwargs: Any):
        from vcontrast.crg.guidance import check_alpha

        self.alpha = check_alpha(alpha)
        super().__init__(model, processor, **kwargs)

    def _alpha(self) -> float:
        return self.alpha

    def rerank_batch(
        self, items: list[Item], images: list[Image.Image], boxes: list[list[list[float]]]
    ) -> list[list[float]]:
        flat_images = [image for image, item_boxes in zip(images, boxes, strict=True) for _ in item_boxes]
        texts = [item.prompt for item, item_boxes in zip(items, boxes, strict=True) for _ in item_boxes]
        proposals = [[box] for item_boxes in boxes for box in item_boxes]
        reranked = self.crg.rerank_batch(flat_images, texts, proposals, prompt=self.expression_prompt())
        return _regroup([scores[0] for _, scores in reranked], boxes)


class VCDMethod(ModelMethod):
    """The "vcd" baseline, Visual Contrastive Decoding (arXiv 2311.16922): the contrast image is the image under
    forward-diffusion noise (`vcontrast.conditions.DiffusionNoise`, VCD's schedule, step `noise_step` of 1000),
    guidance `(1 + alpha) lp(. | I) - alpha lp(. | noised I)` with VCD's plausibility cutoff `plausibility_beta`.
    No regions. "refexp": the expression's score given each proposal's crop, under the same guidance.

    Args:
        model, processor: as `ModelMethod`.
        alpha (`float`, *optional*, defaults to 1.0): VCD's `cd_alpha`.
        noise_step (`int`, *optional*, defaults to 500): VCD's noise step.
        plausibility_beta (`float`, *optional*, defaults to 0.1): VCD's `cd_beta`.
        **kwargs: `proposer`, `proposer_model`, `max_new_tokens` (see `ModelMethod`).

    Examples:

    ```python
    >>> method = VCDMethod(model, processor, noise_step=500)  # doctest: +SKIP
    ```
    """

    name = "vcd"
    guided = True
    defaults: ClassVar[dict] = {"noise_step": 500, "plausibility_beta": 0.1}

    def __init__(
        self,
        model: Any,
        processor: Any,
        alpha: float = 1.0,
        noise_step: int = 500,
        plausibility_beta: float = 0.1,
        **kwargs: Any,
    ):
        from vcontrast.conditions import DiffusionNoise
        from vcontrast.crg import CRG

        super().__init__(model, processor, **kwargs)
        self.noise_step, self.plausibility_beta = noise_step, plausibility_beta
        self.crg = CRG(
            model, processor, alpha=alpha, plausibility_beta=plausibility_beta, contrast=DiffusionNoise(noise_step)
        )
        self.alpha = self.crg.alpha


class NoImageMethod(ModelMethod):
    """The "no-image" contrast: CRG's guidance `(1 + alpha) lp(. | I) - alpha lp(. | no image)`, where the contrast
    stream has the image tokens masked out of the attention (text positions kept), like classifier-free guidance on
    the image. No regions. "refexp": the expression's score given each proposal's crop, under the same guidance.

    Args:
        model, processor: as `ModelMethod`.
        alpha (`float`, *optional*, defaults to 1.0): guidance strength, >= 0.
        **kwargs: `proposer`, `proposer_model`, `max_new_tokens` (see `ModelMethod`).

    Examples:

    ```python
    >>> method = NoImageMethod(model, processor, alpha=1.0, proposer=None)  # doctest: +SKIP
    ```
    """

    name = "no-image"
    guided = True

    def __init__(self, model: Any, processor: Any, alpha: float = 1.0, **kwargs: Any):
        from vcontrast.conditions import NoImage
        from vcontrast.crg import CRG

        super().__init__(model, processor, **kwargs)
        self.crg = CRG(model, processor, alpha=alpha, contrast=NoImage())
        self.alpha = self.crg.alpha


METHODS: dict[str, type[ModelMethod]] = {
    "base": BaseMethod,
    "crg": CRGMethod,
    "overlay": OverlayMethod,
    "crg+overlay": CRGOverlayMethod,
    "vcd": VCDMethod,
    "no-image": NoImageMethod,
}


def get_method(
    name: str,
    model: Any,
    processor: Any,
    alpha: float = 1.0,
    proposer: Any = DEFAULT_PROPOSER,
    proposer_model: str | None = None,
    max_new_tokens: int = 32,
    rerank_prompt: str | None = None,
    **options: Any,
) -> ModelMethod:
    """Build a built-in method by name.

    Args:
        name (`str`): a key of `METHODS` ("base", "crg", "overlay", "crg+overlay", "vcd", "no-image").
        model (`PreTrainedModel`): a supported VLM in eval mode.
        processor (`ProcessorMixin`): its processor.
        alpha (`float`, *optional*, defaults to 1.0): CRG's guidance strength (ignored by "base").
        proposer, proposer_model, max_new_tokens, rerank_prompt: see `ModelMethod`.
        **options: the method's own settings (see `method_config`).

    Examples:

    ```python
    >>> method = get_method("crg", model, processor, alpha=1.0, proposer=None)  # doctest: +SKIP
    ```
    """
    if name not in METHODS:
        raise ValueError(f"`method` (={name!r}) has to be one of {sorted(METHODS)} or a Method object")
    method_config(name, alpha, proposer, proposer_model, max_new_tokens, rerank_prompt, **options)  # checks all
    kwargs = {"proposer": proposer, "proposer_model": proposer_model, "max_new_tokens": max_new_tokens, **options}
    kwargs["rerank_prompt"] = rerank_prompt
    if METHODS[name].guided:
        kwargs["alpha"] = alpha
    return METHODS[name](model, processor, **kwargs)
