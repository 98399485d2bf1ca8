"""Region proposals for CRG: boxes for the things a prompt names, from an open-vocabulary detector.

CRG blacks out the regions the prompt is about. When a task gives no regions, they come from a zero-shot detector
run on the noun phrases of the prompt: GroundingDINO or OWLv2, through transformers'
`AutoModelForZeroShotObjectDetection` and each model's own processor and post-processing.

A proposer is any callable `proposer(image, phrases) -> list[Proposal]` (the `RegionProposer` protocol), so that
other sources of boxes plug in: the toy world registers an exact one with `register_proposer`. Proposers are
looked up by name in `PROPOSERS`, a dict of `"module:attr"` factories resolved on first use.

Defaults (as `DetectorProposer` documents them):

- GroundingDINO: box `threshold` 0.35 and `text_threshold` 0.25, the values of the GroundingDINO README; checkpoint
  `IDEA-Research/grounding-dino-tiny`.
- OWLv2: `threshold` 0.1, the default of its post-processing; checkpoint `google/owlv2-base-patch16-ensemble`.
- Both: non-maximum suppression across phrases at IoU 0.5; boxes clipped to the image. The named proposers
  (`GroundingDinoProposer`, `Owlv2Proposer`, and the names `"grounding-dino"` and `"owlv2"`) keep the best box per
  phrase (`top_k=1`), since CRG blacks out the union of what it gets; `DetectorProposer` keeps all by default.

Examples:

```python
>>> from PIL import Image
>>> from vcontrast.crg.proposals import get_proposer, propose_regions
>>> image = Image.open("kitchen.jpg")  # doctest: +SKIP
>>> propose_regions(image, "What colour is the cup left of the red plate?", detector="owlv2")  # doctest: +SKIP
[Proposal(box=(12.1, 40.5, 80.0, 96.3), score=0.41, phrase='cup'), ...]
>>> proposer = get_proposer("grounding-dino", model="/models/grounding-dino-tiny")  # doctest: +SKIP
>>> propose_regions(image, ["cup", "red plate"], detector=proposer)  # load once, call many times  # doctest: +SKIP
```
"""

from __future__ import annotations

import errno
import importlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from vcontrast import regions
from vcontrast.crg.phrases import extract_noun_phrases

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "PROPOSERS",
    "DetectorProposer",
    "GroundingDinoProposer",
    "Owlv2Proposer",
    "Proposal",
    "RegionProposer",
    "box_iou",
    "get_proposer",
    "get_proposer_for",
    "load_grounding_dino",
    "load_owlv2",
    "nms",
    "propose_regions",
    "register_proposer",
]

DEFAULT_CHECKPOINTS: dict[str, str] = {
    "grounding-dino": "IDEA-Research/grounding-dino-tiny",
    "owlv2": "google/owlv2-base-patch16-ensemble",
}

# Detector family per `config.model_type`: how to write the text prompt and read the output.
_FAMILIES = {
    "grounding-dino": "grounding-dino",
    "mm-grounding-dino": "grounding-dino",
    "owlv2": "owl",
    "owlvit": "owl",
}
_DEFAULT_THRESHOLDS = {"grounding-dino": 0.35, "owl": 0.1}
_DEFAULT_TEXT_THRESHOLD = 0.25


@dataclass(frozen=True)
class Proposal:
    """
    One proposed region.

    Args:
        box (`tuple[float, float, float, float]`):
            `(x0, y0, x1, y1)` in pixels of the image the proposer was given, clipped to it, with `x0 < x1` and
            `y0 < y1`.
        score (`float`):
            The detector's confidence in `[0, 1]`.
        phrase (`str`):
            The phrase the box was found for, exactly as the caller passed it.
    """

    box: tuple[float, float, float, float]
    score: float
    phrase: str


@runtime_checkable
class RegionProposer(Protocol):
    """
    Anything that proposes regions: `proposer(image, phrases) -> list[Proposal]`.

    A proposer returns an empty list when it finds nothing (the caller decides what to do then), and every
    `Proposal.phrase` it returns is one of `phrases`.
    """

    def __call__(self, image: Image.Image, phrases: list[str]) -> list[Proposal]: ...


# name -> "module:attr" of a factory `factory(**kwargs) -> RegionProposer`, or the factory itself once registered.
PROPOSERS: dict[str, str | Callable[..., RegionProposer]] = {
    "grounding-dino": "vcontrast.crg.proposals:load_grounding_dino",
    "owlv2": "vcontrast.crg.proposals:load_owlv2",
    "toy": "vcontrast.toy.proposer:load_toy_proposer",
}


def register_proposer(name: str, factory: str | Callable[..., RegionProposer], overwrite: bool = False) -> None:
    """
    Register a region proposer under a name, so that `propose_regions(..., detector=name)` finds it.

    Args:
        name (`str`):
            The registry name.
        factory (`str` or `Callable[..., RegionProposer]`):
            A callable `factory(**kwargs) -> RegionProposer`, or its `"module:attr"` path, imported on first use.
            `propose_regions` passes it only the options its caller set (`model`, `threshold`, `text_threshold`,
            `top_k`, `nms_iou`, `device`), so a factory that takes none of them works as long as none is set.
        overwrite (`bool`, *optional*, defaults to `False`):
            Whether to replace an existing entry; without it, a taken name raises `ValueError`.

    Examples:

    ```python
    >>> def exact(**kwargs):
    ...     return lambda image, phrases: [Proposal((0.0, 0.0, 4.0, 4.0), 1.0, p) for p in phrases]
    >>> register_proposer("exact-demo", exact)
    ```
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` (={name!r}) has to be a non-empty string")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise ValueError(f"`factory` (={factory!r}) has to be a callable or a 'module:attr' string")
    if name in PROPOSERS and not overwrite:
        raise ValueError(f"a proposer named `name` (={name!r}) is already registered; pass overwrite=True")
    PROPOSERS[name] = factory


def get_proposer(name: str, **kwargs: Any) -> RegionProposer:
    """
    Build the proposer registered under `name`.

    Args:
        name (`str`):
            A key of `PROPOSERS`: `"grounding-dino"`, `"owlv2"` or a registered name.
        **kwargs:
            Passed to the factory; for the detectors, those of `load_grounding_dino` / `load_owlv2`.

    Returns:
        `RegionProposer`: the proposer.

    Examples:

    ```python
    >>> proposer = get_proposer("owlv2", model="/models/owlv2-base", threshold=0.2)  # doctest: +SKIP
    ```
    """
    if name not in PROPOSERS:
        raise ValueError(f"unknown proposer `name` (={name!r}); known: {sorted(PROPOSERS)}")
    factory = PROPOSERS[name]
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        PROPOSERS[name] = factory
    return factory(**kwargs)


def get_proposer_for(name: str, processor: Any, **kwargs: Any) -> RegionProposer:
    """`get_proposer(name, **kwargs)` for a VLM whose processor is `processor`: a built-in detector (a key of
    `DEFAULT_CHECKPOINTS`) loads its image processor with the VLM's image backend, so that a run pinned to one backend
    (`--image-backend`) gets its proposals with it too; registered proposers get `kwargs` alone."""
    if name in DEFAULT_CHECKPOINTS and "image_backend" not in kwargs:
        from vcontrast.models.image_backend import image_backend_of

        kwargs["image_backend"] = image_backend_of(processor)
    return get_proposer(name, **kwargs)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """
    Pairwise intersection over union of two sets of `(x0, y0, x1, y1)` boxes: [`vcontrast.regions.box_iou`] on
    tensors.

    Args:
        boxes1 (`torch.Tensor` of shape `(N, 4)`): boxes.
        boxes2 (`torch.Tensor` of shape `(M, 4)`): boxes.

    Returns:
        `torch.Tensor` of shape `(N, M)`, on the device of `boxes1`, in its floating dtype (float32 for integer
        boxes): the IoUs; 0 where both boxes are empty.
    """
    dtype = boxes1.dtype if boxes1.is_floating_point() else torch.float32
    return torch.from_numpy(regions.box_iou(boxes1, boxes2)).to(device=boxes1.device, dtype=dtype)


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Greedy non-maximum suppression, as `torchvision.ops.nms` / `batched_nms` (torchvision is not a dependency).

    Boxes are visited from the highest score down; a box is dropped when its IoU with a kept box of the same group
    is greater than `iou_threshold`.

    Args:
        boxes (`torch.Tensor` of shape `(N, 4)`):
            `(x0, y0, x1, y1)` boxes.
        scores (`torch.Tensor` of shape `(N,)`):
            Their scores.
        iou_threshold (`float`, *optional*, defaults to 0.5):
            The IoU above which the lower-scored box is dropped.
        groups (`torch.Tensor` of shape `(N,)`, *optional*):
            Integer group ids; boxes of different groups never suppress each other. `None` puts all in one group.

    Returns:
        `torch.LongTensor` of shape `(K,)`: indices of the kept boxes, by decreasing score.

    Examples:

    ```python
    >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7])).tolist()
    [0, 2]
    ```
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"`boxes` (shape {tuple(boxes.shape)}) has to be (N, 4) and `scores` (shape {tuple(scores.shape)}) (N,)"
        )
    if groups is not None and groups.shape != scores.shape:
        raise ValueError(f"`groups` (shape {tuple(groups.shape)}) has to have the shape of `scores` (N,)")
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].float()
    overlap = box_iou(boxes, boxes) > iou_threshold  # (N, N), in score order
    if groups is not None:
        groups = groups[order]
        overlap &= groups[:, None] == groups[None, :]
    # The greedy pass is sequential by nature; each step is one vectorised row update.
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=overlap.device)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlap[i]
    return order[torch.tensor(keep, dtype=torch.long)]


def _check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value <= 1:
        raise ValueError(f"`{name}` (={value!r}) has to be a number in [0, 1]")
    return float(value)


def _clean_phrases(phrases: Sequence[str]) -> list[str]:
    if isinstance(phrases, str) or not all(isinstance(p, str) for p in phrases):
        raise TypeError(f"`phrases` (={phrases!r}) has to be a list of strings")
    # Keep the caller's strings (they come back in `Proposal.phrase`), without duplicates and without phrases that
    # have no letter or digit (nothing to tokenize once GroundingDINO's prompt format drops the periods).
    return list(dict.fromkeys(p for p in phrases if any(c.isalnum() for c in p)))


class DetectorProposer:
    """
    A `RegionProposer` on a transformers zero-shot object detector: GroundingDINO (`grounding-dino`,
    `mm-grounding-dino`) or OWLv2 / OWL-ViT, with the processor saved alongside it.

    The text prompt takes each family's format: GroundingDINO gets one lower-cased string `"a cat. a dog."` (phrases
    that do not fit in `config.max_text_len` tokens go to further forward passes); OWL models get one query per
    phrase. Each family's own `post_process_grounded_object_detection` turns the outputs into pixel boxes. Then:

    - GroundingDINO: a box is kept when its score (the highest token probability, as in the original code) is above
      `threshold`; it is assigned the phrase whose tokens have the highest probability, and dropped when that is
      not above `text_threshold`. `Proposal.score` is that phrase's probability.
    - OWL: the post-processing keeps boxes whose best query is above `threshold`; that query is the phrase.
      OWLv2 pads the image to a square at the bottom and right; boxes reaching into the padding are clipped.
    - Boxes are clipped to the image; boxes left empty are dropped.
    - Non-maximum suppression at `nms_iou`, across phrases by default, then the `top_k` best boxes per phrase.
    - The result is sorted by decreasing score.

    OWLv2's image processor resizes with scipy; without scipy, the image is padded and resized here with PIL
    (bilinear, which also anti-aliases), the same geometry with slightly different pixels, and a warning says so
    once per process.

    Args:
        model (`PreTrainedModel`):
            A zero-shot object detection model (`AutoModelForZeroShotObjectDetection`).
        processor (`ProcessorMixin`):
            Its processor (`AutoProcessor`).
        threshold (`float`, *optional*):
            Box score threshold in `[0, 1]`. Defaults to 0.35 for GroundingDINO and 0.1 for OWL models.
        text_threshold (`float`, *optional*):
            GroundingDINO only: the phrase probability a box needs, in `[0, 1]`. Defaults to 0.25.
        top_k (`int`, *optional*):
            Keep at most this many boxes per phrase. `None` keeps all.
        nms_iou (`float`, *optional*, defaults to 0.5):
            IoU threshold of non-maximum suppression, in `[0, 1]`; `None` turns it off.
        nms_across_phrases (`bool`, *optional*, defaults to `True`):
            Whether boxes of different phrases suppress each other (one box per object, whichever phrase named it).
            Set `False` where nested objects matter, such as phrase grounding with "person" and "shirt".

    Examples:

    ```python
    >>> proposer = DetectorProposer.from_pretrained("/models/grounding-dino-tiny", threshold=0.3)  # doctest: +SKIP
    >>> proposer(image, ["cup", "red plate"])  # doctest: +SKIP
    [Proposal(box=(10.0, 32.5, 61.2, 90.0), score=0.52, phrase='red plate'), ...]
    ```
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        threshold: float | None = None,
        text_threshold: float | None = None,
        top_k: int | None = None,
        nms_iou: float | None = 0.5,
        nms_across_phrases: bool = True,
    ) -> None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in _FAMILIES:
            raise ValueError(f"`model` (model_type={model_type!r}) has to be one of {sorted(_FAMILIES)}")
        self.family = _FAMILIES[model_type]
        self.model = model.eval()
        self.processor = processor
        self.threshold = _check_unit_interval(
            "threshold", _DEFAULT_THRESHOLDS[self.family] if threshold is None else threshold
        )
        self.text_threshold = _check_unit_interval(
            "text_threshold", _DEFAULT_TEXT_THRESHOLD if text_threshold is None else text_threshold
        )
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"`top_k` (={top_k!r}) has to be a positive integer or None")
        self.top_k = top_k
        self.nms_iou = None if nms_iou is None else _check_unit_interval("nms_iou", nms_iou)
        self.nms_across_phrases = bool(nms_across_phrases)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        threshold: float | None = None,
        text_threshold: float | None = None,
        top_k: int | None = None,
        nms_iou: float | None = 0.5,
        nms_across_phrases: bool = True,
        device: str | torch.device | None = None,
        image_backend: str | None = None,
        **model_kwargs: Any,
    ) -> DetectorProposer:
        """
        Load a detector and its processor with `AutoModelForZeroShotObjectDetection` and `AutoProcessor`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A local directory written by `save_pretrained`, or a hub name (downloaded unless `HF_HUB_OFFLINE`
                is set or it is cached).
            threshold, text_threshold, top_k, nms_iou, nms_across_phrases:
                As in `DetectorProposer`.
            device (`str` or `torch.device`, *optional*):
                Where to put the model; `None` leaves it on the CPU.
            image_backend (`str`, *optional*):
                The image processor's backend, `"pil"` or `"torchvision"` (they resize differently; `None`:
                transformers' choice, torchvision where it is installed). The eval runner passes the VLM's.
            **model_kwargs:
                Passed to the model's `from_pretrained` (`dtype`, `revision`, `local_files_only`, ...).

        Returns:
            `DetectorProposer`: the proposer.
        """
        model, processor = _load_detector(pretrained_model_name_or_path, device, model_kwargs, image_backend)
        return cls(
            model,
            processor,
            threshold=threshold,
            text_threshold=text_threshold,
            top_k=top_k,
            nms_iou=nms_iou,
            nms_across_phrases=nms_across_phrases,
        )

    def with_options(self, **options: Any) -> DetectorProposer:
        """A proposer on the same loaded model with some options changed (`threshold`, `text_threshold`, `top_k`,
        `nms_iou`, `nms_across_phrases`), e.g. `top_k=None` to re-rank every detection of one phrase.

        Examples:

        ```python
        >>> every_box = proposer.with_options(top_k=None)  # doctest: +SKIP
        ```
        """
        allowed = ("threshold", "text_threshold", "top_k", "nms_iou", "nms_across_phrases")
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown proposer options {unknown}; allowed: {allowed}")
        current = {name: getattr(self, name) for name in allowed}
        return DetectorProposer(self.model, self.processor, **(current | options))

    @torch.no_grad()
    def __call__(self, image: Image.Image, phrases: list[str]) -> list[Proposal]:
        """
        Propose regions for `phrases` in `image`.

        Args:
            image (`PIL.Image.Image`):
                The image; boxes come back in its pixel coordinates.
            phrases (`list[str]`):
                What to look for. Repeated phrases, and phrases without a letter or digit, are skipped.

        Returns:
            `list[Proposal]`: the proposals by decreasing score; empty when nothing passes the thresholds.
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"`image` (={image!r}) has to be a PIL.Image.Image")
        phrases = _clean_phrases(phrases)
        if not phrases:
            return []
        image = regions.to_rgb(image)
        if self.family == "grounding-dino":
            detections = [
                d for chunk in self._grounding_dino_chunks(phrases) for d in self._grounding_dino(image, chunk)
            ]
        else:
            detections = self._owl(image, phrases)
        return self._finish(detections, image.size, phrases)

    # ---- GroundingDINO -------------------------------------------------------------------------------------------

    @staticmethod
    def _grounding_dino_text(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
        # "a cat. a dog." with the character span of each phrase; a period inside a phrase would split it in two.
        text, spans = "", []
        for phrase in phrases:
            clean = " ".join(phrase.lower().replace(".", " ").split())
            if text:
                text += " "
            spans.append((len(text), len(text) + len(clean)))
            text += clean + "."
        return text, spans

    def _grounding_dino_chunks(self, phrases: list[str]) -> list[list[str]]:
        # GroundingDINO reads at most `max_text_len` tokens (256): pack the phrases greedily into prompts that fit.
        max_len = getattr(self.model.config, "max_text_len", 256)
        chunks: list[list[str]] = [[]]
        for phrase in phrases:
            candidate = chunks[-1] + [phrase]
            text, _ = self._grounding_dino_text(candidate)
            if len(self.processor.tokenizer(text)["input_ids"]) <= max_len or not chunks[-1]:
                chunks[-1] = candidate
            else:
                chunks.append([phrase])
        return chunks

    def _grounding_dino(self, image: Image.Image, phrases: list[str]) -> list[tuple[list[float], float, str]]:
        text, spans = self._grounding_dino_text(phrases)
        inputs = self._to_model(self.processor(images=image, text=text, return_tensors="pt", truncation=True))
        outputs = self.model(**inputs)
        width, height = image.size
        (result,) = self.processor.post_process_grounded_object_detection(
            outputs,
            input_ids=inputs["input_ids"],
            threshold=self.threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(height, width)],
        )
        # The post-processing does not say which queries it kept, nor map tokens back to phrases (its text labels
        # are decoded token runs), so redo its selection (`max prob > threshold`) and score each phrase on its tokens.
        probs = outputs.logits[0].sigmoid()  # (num_queries, max_text_len), in the model's dtype as there
        kept = probs.max(dim=-1).values > self.threshold  # (num_queries,)
        if int(kept.sum()) != len(result["scores"]):
            raise RuntimeError("GroundingDINO post-processing kept a different set of boxes than expected")
        probs, kept = probs.float().cpu(), kept.cpu()
        token_ids = inputs["input_ids"][0].tolist()
        phrase_of_token = self._token_phrases(text, spans, token_ids, probs.shape[-1])  # (max_text_len,), -1 if none
        phrase_probs = torch.stack(
            [probs[kept][:, phrase_of_token == j].max(dim=-1).values for j in range(len(phrases))], dim=-1
        )  # (num_kept, num_phrases)
        scores, best = phrase_probs.max(dim=-1)  # (num_kept,)
        return [
            (box, score, phrases[j])
            for box, score, j in zip(result["boxes"].tolist(), scores.tolist(), best.tolist(), strict=True)
            if score > self.text_threshold
        ]

    def _token_phrases(
        self, text: str, spans: list[tuple[int, int]], token_ids: list[int], length: int
    ) -> torch.Tensor:
        # Token i belongs to phrase j when its character offsets overlap the phrase's span in `text`.
        encoding = self.processor.tokenizer(text, return_offsets_mapping=True, truncation=True)
        if encoding["input_ids"] != token_ids:
            raise RuntimeError(f"the tokenizer and the processor tokenize `text` (={text!r}) differently")
        phrase_of_token = torch.full((length,), -1, dtype=torch.long)
        for i, (start, end) in enumerate(encoding["offset_mapping"][:length]):
            for j, (span_start, span_end) in enumerate(spans):
                if end > start and start < span_end and end > span_start:
                    phrase_of_token[i] = j
        # Only a single phrase longer than max_text_len tokens can lose all its tokens (the chunking packs the rest).
        for j in range(len(spans)):
            if not (phrase_of_token == j).any():
                raise ValueError(f"phrase {j} of `text` (={text!r}) has no token within the model's max_text_len")
        return phrase_of_token

    # ---- OWLv2 / OWL-ViT -----------------------------------------------------------------------------------------

    def _owl(self, image: Image.Image, phrases: list[str]) -> list[tuple[list[float], float, str]]:
        from vcontrast.models.image_backend import image_backend_of

        width, height = image.size
        image_kwargs: dict[str, Any] = {}
        image_processor = self.processor.image_processor
        # OWLv2's PIL image processor resizes with scipy; its torchvision one does not need it (and fails on
        # do_resize=False), so only the PIL one gets the workaround.
        pil = image_backend_of(image_processor) != "torchvision"
        if self.model.config.model_type == "owlv2" and image_processor.do_resize and pil:
            from transformers.utils import is_scipy_available

            if not is_scipy_available():
                _warn_no_scipy()
                image = _owlv2_pad_and_resize(image, image_processor.size)
                image_kwargs = {"do_resize": False, "do_pad": False}
        # One query per phrase; the processor pads each to the text model's length.
        inputs = self.processor(images=image, text=[phrases], return_tensors="pt", truncation=True, **image_kwargs)
        outputs = self.model(**self._to_model(inputs))
        (result,) = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(height, width)]
        )
        boxes, scores, labels = result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist()
        return [(box, score, phrases[label]) for box, score, label in zip(boxes, scores, labels, strict=True)]

    # ---- shared --------------------------------------------------------------------------------------------------

    def _to_model(self, inputs: Any) -> dict[str, Any]:
        device, dtype = self.model.device, self.model.dtype
        return {
            k: v.to(device=device, dtype=dtype) if torch.is_floating_point(v) else v.to(device)
            for k, v in inputs.items()
        }

    def _finish(
        self, detections: list[tuple[list[float], float, str]], size: tuple[int, int], phrases: list[str]
    ) -> list[Proposal]:
        if not detections:
            return []
        width, height = size
        boxes = torch.tensor([d[0] for d in detections], dtype=torch.float64)  # (N, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        scores = torch.tensor([d[1] for d in detections], dtype=torch.float64)  # (N,)
        labels = torch.tensor([phrases.index(d[2]) for d in detections])  # (N,)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        if self.nms_iou is not None and len(boxes):
            keep = nms(boxes, scores, self.nms_iou, groups=None if self.nms_across_phrases else labels)
        else:
            keep = torch.argsort(scores, descending=True, stable=True)
        proposals, per_phrase = [], [0] * len(phrases)
        for i in keep.tolist():
            label = int(labels[i])
            if self.top_k is None or per_phrase[label] < self.top_k:
                per_phrase[label] += 1
                box = tuple(float(v) for v in boxes[i].tolist())
                proposals.append(Proposal(box=box, score=float(scores[i]), phrase=phrases[label]))
        return proposals


_SCIPY_WARNED = []


def _warn_no_scipy() -> None:
    # Once per process: the boxes differ slightly from those of OWLv2's own (scipy) resize.
    if not _SCIPY_WARNED:
        _SCIPY_WARNED.append(True)
        logger.warning(
            "scipy is not installed: OWLv2's image processor needs it to resize, so vcontrast pads and resizes with "
            "PIL instead (same geometry, slightly different pixels, so boxes can differ slightly from the reference "
            "implementation). `pip install scipy` for the exact preprocessing."
        )


def _owlv2_pad_and_resize(image: Image.Image, size: Any) -> Image.Image:
    # What Owlv2ImageProcessor does before normalising, without scipy: pad to a square at the bottom and right with
    # black (its pad value 0 after rescaling), then resize to `size`. The post-processing scales boxes by the longer
    # side, which is this geometry.
    size = dict(size) if not hasattr(size, "height") else {"height": size.height, "width": size.width}
    side = max(image.size)
    square = Image.new("RGB", (side, side))
    square.paste(image, (0, 0))
    return square.resize((size["width"], size["height"]), Image.BILINEAR)


def _load_detector(
    path: str | os.PathLike[str], device: Any, model_kwargs: dict, image_backend: str | None = None
) -> tuple[Any, Any]:
    # A zero-shot detector and its processor (with the image backend asked for), from a local directory or a hub name.
    from transformers import AutoModelForZeroShotObjectDetection

    from vcontrast.models.loading import _load_error, _looks_like_path, load_processor

    text = str(path)
    folder = Path(text).expanduser()
    if folder.is_dir() or _looks_like_path(text):  # a folder: never sent to the hub as a repo id
        if not (folder / "config.json").is_file():
            what = (
                "has no config.json" if folder.is_dir() else f"does not exist (resolved to {str(folder.resolve())!r})"
            )
            raise ValueError(
                f"detector folder {text!r} {what}; pass a folder written by save_pretrained"
            ) from FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(folder / "config.json"))
        path = str(folder)
    hub_kwargs = {k: v for k, v in model_kwargs.items() if k in ("revision", "local_files_only", "cache_dir", "token")}
    processor = load_processor(path, image_backend=image_backend, **hub_kwargs)
    try:
        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            path, **{"trust_remote_code": False, **model_kwargs}
        )
    except (OSError, ValueError) as error:
        raise _load_error("the detector", text, error) from error
    if device is not None:
        model = model.to(device)
    return model, processor


class _NamedDetectorProposer(DetectorProposer):
    # A DetectorProposer loaded from a checkpoint of one family, with that family's defaults and top_k = 1.
    name = ""
    family_name = ""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        text_threshold: float | None = None,
        top_k: int | None = 1,
        nms_iou: float | None = 0.5,
        nms_across_phrases: bool = True,
        device: str | torch.device | None = None,
        image_backend: str | None = None,
        **model_kwargs: Any,
    ) -> None:
        self.checkpoint = str(model or DEFAULT_CHECKPOINTS[self.name])
        detector, processor = _load_detector(self.checkpoint, device, model_kwargs, image_backend)
        family = _FAMILIES.get(getattr(detector.config, "model_type", None))
        if family != self.family_name:
            raise ValueError(
                f"`model` (={self.checkpoint!r}) is a {detector.config.model_type!r} checkpoint, not {self.name}: "
                "use the proposer class of its family (GroundingDinoProposer or Owlv2Proposer)"
            )
        super().__init__(detector, processor, threshold, text_threshold, top_k, nms_iou, nms_across_phrases)


class GroundingDinoProposer(_NamedDetectorProposer):
    """
    GroundingDINO as a region proposer, loaded once: pass it to `CRG(..., proposer=...)` or the eval runner.

    Args:
        model (`str` or `os.PathLike`, *optional*):
            Checkpoint directory or hub name; defaults to `IDEA-Research/grounding-dino-tiny`.
        threshold (`float`, *optional*):
            Box threshold in `[0, 1]`; defaults to 0.35 (GroundingDINO's README).
        text_threshold (`float`, *optional*):
            Phrase threshold in `[0, 1]`; defaults to 0.25.
        top_k (`int`, *optional*, defaults to 1):
            Boxes kept per phrase. One per phrase suits CRG's union contrast (blacking out every detection above the
            threshold would hide much more than the things the prompt names); `None` keeps all (re-ranking).
        nms_iou, nms_across_phrases, device, image_backend, **model_kwargs:
            As in `DetectorProposer.from_pretrained`.

    Examples:

    ```python
    >>> proposer = GroundingDinoProposer("/models/grounding-dino-tiny", threshold=0.3, top_k=1)  # doctest: +SKIP
    >>> crg = CRG(model, processor, proposer=proposer)  # doctest: +SKIP
    ```
    """

    name = "grounding-dino"
    family_name = "grounding-dino"


class Owlv2Proposer(_NamedDetectorProposer):
    """
    OWLv2 as a region proposer, loaded once (see `GroundingDinoProposer`).

    Args:
        model (`str` or `os.PathLike`, *optional*):
            Checkpoint directory or hub name; defaults to `google/owlv2-base-patch16-ensemble`.
        threshold (`float`, *optional*):
            Box threshold in `[0, 1]`; defaults to 0.1.
        top_k (`int`, *optional*, defaults to 1):
            Boxes kept per phrase; `None` keeps all.
        text_threshold, nms_iou, nms_across_phrases, device, image_backend, **model_kwargs:
            As in `GroundingDinoProposer` (`text_threshold` is not used by OWL models).

    Examples:

    ```python
    >>> crg = CRG(model, processor, proposer=Owlv2Proposer("/models/owlv2-base", threshold=0.2))  # doctest: +SKIP
    ```
    """

    name = "owlv2"
    family_name = "owl"


def load_grounding_dino(model: str | os.PathLike[str] | None = None, **kwargs: Any) -> DetectorProposer:
    """
    The `"grounding-dino"` proposer: `GroundingDinoProposer` (one box per phrase by default).

    Args:
        model (`str` or `os.PathLike`, *optional*):
            Local directory or hub name; defaults to `DEFAULT_CHECKPOINTS["grounding-dino"]`
            (`IDEA-Research/grounding-dino-tiny`).
        **kwargs:
            Passed to `GroundingDinoProposer` (`threshold` 0.35, `text_threshold` 0.25, `top_k` 1, `nms_iou`,
            `device`, `image_backend`, ...).

    Returns:
        `DetectorProposer`: the proposer.
    """
    return GroundingDinoProposer(model, **kwargs)


def load_owlv2(model: str | os.PathLike[str] | None = None, **kwargs: Any) -> DetectorProposer:
    """
    The `"owlv2"` proposer: `Owlv2Proposer` (one box per phrase by default).

    Args:
        model (`str` or `os.PathLike`, *optional*):
            Local directory or hub name; defaults to `DEFAULT_CHECKPOINTS["owlv2"]`
            (`google/owlv2-base-patch16-ensemble`).
        **kwargs:
            Passed to `Owlv2Proposer` (`threshold` 0.1, `top_k` 1, `nms_iou`, `device`, `image_backend`, ...).

    Returns:
        `DetectorProposer`: the proposer.
    """
    return Owlv2Proposer(model, **kwargs)


class _Default:
    # The type of `_DEFAULT`: "not given", where None is a value of its own (top_k=None keeps all boxes).
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT = _Default()


def propose_regions(
    image: Image.Image,
    phrases_or_text: str | Sequence[str],
    detector: str | RegionProposer = "grounding-dino",
    threshold: float | None = None,
    text_threshold: float | None = None,
    model: str | os.PathLike[str] | None = None,
    top_k: int | None | _Default = _DEFAULT,
    nms_iou: float | None = None,
    device: str | torch.device | None = None,
) -> list[Proposal]:
    """
    Propose regions of `image` for the things a prompt names.

    A string is read as a prompt and its noun phrases are extracted first (`extract_noun_phrases`); a list is taken
    as the phrases themselves.

    Args:
        image (`PIL.Image.Image`):
            The image; boxes come back in its pixel coordinates.
        phrases_or_text (`str` or `list[str]`):
            A prompt, or the phrases to look for.
        detector (`str` or `RegionProposer`, *optional*, defaults to `"grounding-dino"`):
            A name in `PROPOSERS` (`"grounding-dino"`, `"owlv2"` or a registered one), built for this call, or a
            proposer built beforehand. Building loads the model: for many images, build once with
            `get_proposer` and pass the proposer.
        threshold (`float`, *optional*):
            Box score threshold in `[0, 1]`; `None` takes the detector's default (GroundingDINO 0.35, OWLv2 0.1).
        text_threshold (`float`, *optional*):
            GroundingDINO's phrase threshold; `None` takes the default, 0.25.
        model (`str` or `os.PathLike`, *optional*):
            Checkpoint directory or hub name; `None` takes `DEFAULT_CHECKPOINTS[detector]`.
        top_k (`int` or `None`, *optional*):
            At most this many boxes per phrase; `None` keeps all. Not given: the detector's default (the named
            detectors keep 1).
        nms_iou (`float`, *optional*):
            IoU of the non-maximum suppression across phrases; `None` takes the detector's default, 0.5. (To turn
            suppression off, build `DetectorProposer(..., nms_iou=None)` and pass it as `detector`.)
        device (`str` or `torch.device`, *optional*):
            Where to run the detector.

    Returns:
        `list[Proposal]`: by decreasing score; empty when the prompt has no noun phrase or nothing is detected.

    Examples:

    ```python
    >>> propose_regions(image, "Is the cup left of the red plate?", detector="owlv2", top_k=1)  # doctest: +SKIP
    [Proposal(box=(120.5, 60.2, 210.0, 140.8), score=0.46, phrase='red plate'), Proposal(..., phrase='cup')]
    ```
    """
    phrases = extract_noun_phrases(phrases_or_text) if isinstance(phrases_or_text, str) else list(phrases_or_text)
    if isinstance(phrases_or_text, str) and not phrases:
        logger.info("no noun phrase in %r: no regions proposed", phrases_or_text)
    options = {
        "threshold": threshold,
        "text_threshold": text_threshold,
        "model": model,
        "nms_iou": nms_iou,
        "device": device,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if top_k is not _DEFAULT:
        options["top_k"] = top_k  # an explicit None (keep all) reaches the proposer
    if isinstance(detector, str):
        proposer = get_proposer(detector, **options)
    elif callable(detector):
        if any(v is not None for v in options.values()):
            raise ValueError(f"options {sorted(options)} apply to a detector name, not to `detector` (={detector!r})")
        proposer = detector
    else:
        raise TypeError(f"`detector` (={detector!r}) has to be a registered name or a RegionProposer")
    return list(proposer(image, _clean_phrases(phrases)))
