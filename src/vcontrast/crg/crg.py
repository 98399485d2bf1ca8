"""The `CRG` front end: from an image, a prompt and regions to guided answers, scores, re-ranked boxes and matches."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessorList

from vcontrast.candidates import CandidateTokens, candidate_tokens, shared_suffix_length
from vcontrast.crg.decode import stack_streams, two_stream_generate
from vcontrast.crg.guidance import check_alpha, check_beta
from vcontrast.crg.processor import CRGLogitsProcessor, check_generation_config
from vcontrast.crg.scoring import ScoreJob, check_chunk_bytes, score_jobs
from vcontrast.models import get_adapter
from vcontrast.models.loading import check_text_length
from vcontrast.regions import (
    _check_fill,
    _check_pixel_boxes,
    _is_mask,
    blackout,
    blackout_all,
    blackout_each,
    combined_box,
    draw_boxes,
    mask_box,
    parse_boxes,
    region_masks,
    split_regions,
    to_rgb,
)

logger = logging.getLogger(__name__)

MODES = ("union", "each", "combined", "whole")
IMPLEMENTATIONS = ("auto", "batched", "processor")
MATCH_TEMPLATE = "Does this image match: {text}?"
MATCH_ANSWERS = ("yes", "no")
RERANK_PROMPT = "Describe the image."
# How many of the prompt's last tokens an error message shows.
_TAIL_CHECK = 8
# Decoding modes CRG runs: one token per sequence and step, from the guided scores.
_SUPPORTED_MODES = ("greedy_search", "sample", "beam_search", "beam_sample")


@dataclass
class CRGInputs:
    """A prepared CRG batch: the reference rows (one per example), the contrast rows, and which contrast rows
    belong to each example (one, or one per region in the `"each"` mode)."""

    reference: dict
    contrast: dict
    groups: list[list[int]]


class CRG:
    r"""
    Contrastive Region Guidance (arXiv 2403.02325) for a transformers VLM: generation, candidate scoring, proposal
    re-ranking and image-text matching, guided by `g = (1 + alpha) * lp(. | I) - alpha * lp(. | I')`, where `I'` is
    the image with the regions blacked out.

    Args:
        model (`PreTrainedModel`):
            A supported VLM (`vcontrast.supported_model_types()`), in eval mode.
        processor (`ProcessorMixin`):
            Its processor. Prompts go through its chat template (one user turn: the image, then the prompt, plus the
            generation prompt); a processor without a chat template (PaliGemma) gets the prompt as is.
        alpha (`float`, *optional*, defaults to 1.0):
            Guidance strength, >= 0; 0 turns guidance off (plain decoding and log-likelihoods).
        fill (`tuple[int, int, int]`, *optional*, defaults to `(0, 0, 0)`):
            RGB colour painted over the regions.
        mode (`str`, *optional*, defaults to `"union"`):
            How regions make the contrast image: `"union"` (all regions in one image, the paper's default),
            `"combined"` (one box enclosing them all), `"whole"` (the whole image, regions not needed) or `"each"`
            (one contrast image per region, their log-probs averaged; scoring and matching only).
        plausibility_beta (`float`, *optional*):
            VCD's plausibility cutoff in (0, 1]; off by default.
        proposer (`str` or `RegionProposer`, *optional*):
            Where regions come from when a call passes none, run on the noun phrases of the prompt: a proposer
            object (`GroundingDinoProposer(path, threshold=..., text_threshold=..., top_k=1)`, `Owlv2Proposer`, any
            `RegionProposer`) or a registered name (`"grounding-dino"`, `"owlv2"`), built with its defaults on first
            use and kept by this CRG. Without one, regions are required (except in `"whole"` mode).
        overlay (`bool`, *optional*, defaults to `False`):
            Draw the regions on the image as rectangle outlines (visual prompting, ViP-Bench's bounding-box setting)
            before anything else: the reference image carries the overlay, and the contrast image is made from the
            overlaid image. With `alpha=0` this is the paper's "overlay" baseline; with `alpha > 0`, "CRG + overlay".
            A mask region is outlined by its bounding box.
        overlay_color (`tuple[int, int, int]`, *optional*, defaults to `(255, 0, 0)`):
            RGB colour of the overlay outlines.
        overlay_width (`int`, *optional*, defaults to 2):
            Outline width in pixels (drawn inside each box).
        contrast (`VisualCondition`, *optional*):
            Make the contrast image with a `vcontrast.conditions` condition instead of blacking out regions, e.g.
            `DiffusionNoise(500)` for VCD (arXiv 2311.16922; with VCD's `alpha=1, plausibility_beta=0.1`), or
            `GaussianBlur(10)`. Regions are then not needed (except for `overlay`). The noise is seeded by the
            condition's `seed`, the same for every image of a call. `NoImage()` is the "no image" contrast: the
            contrast stream has the same tokens, but its image tokens are masked out of the attention (every text
            token keeps its position), as the CAL paper's attention-mask ablation does.
        chunk_bytes (`int`, *optional*):
            Memory budget of candidate scoring: the most bytes the per-candidate copies of the prompt's KV cache may
            take at once (`vcontrast.crg.scoring`); `None` (default) allows four times the prompts' own cache, so
            scoring needs about five times that whatever the number of candidates.
        normalized (`bool`, *optional*, defaults to `False`):
            Whether the boxes passed to this CRG's methods are fractions of the image's width and height in `[0, 1]`
            instead of pixels (as `vcontrast.regions.parse_boxes` takes them; masks are always in pixels). With
            `False`, boxes that all lie inside `[0, 1]` on an image of 8 pixels or more a side raise `ValueError`:
            they would black out at most one pixel, and are almost surely normalised coordinates.

    Examples:

    ```python
    >>> crg = CRG(model, processor, alpha=1.0)
    >>> crg.generate(image, "What is in the box?", [(10, 10, 60, 40)], max_new_tokens=16)
    'a red cup'
    >>> crg.score(image, "Which is right?", ["the cup is left of the plate", "the cup is right of the plate"],
    ...           regions=[(10, 10, 60, 40), (70, 10, 120, 40)])
    [-3.2, -5.9]
    ```
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        alpha: float = 1.0,
        fill: tuple[int, int, int] = (0, 0, 0),
        mode: str = "union",
        plausibility_beta: float | None = None,
        proposer: Any = None,
        overlay: bool = False,
        overlay_color: tuple[int, int, int] = (255, 0, 0),
        overlay_width: int = 2,
        contrast: Any = None,
        chunk_bytes: int | None = None,
        normalized: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"`mode` (={mode!r}) has to be one of {MODES}")
        self.model = model
        self.processor = processor
        self.adapter = get_adapter(model)
        self.adapter.check_processor(processor)
        self.alpha = check_alpha(alpha)
        self.fill = _check_fill(fill)
        self.mode = mode
        self.plausibility_beta = check_beta(plausibility_beta)
        if proposer is not None and not isinstance(proposer, str) and not callable(proposer):
            raise ValueError(f"`proposer` (={proposer!r}) has to be a proposer name, a RegionProposer or None")
        self.proposer = proposer
        self._built_proposer = None if isinstance(proposer, str) else proposer
        self.chunk_bytes = check_chunk_bytes(chunk_bytes)
        if not isinstance(overlay, bool):
            raise ValueError(f"`overlay` (={overlay!r}) has to be True or False")  # noqa: TRY004
        self.overlay = overlay
        self.overlay_color = _check_fill(overlay_color)
        if isinstance(overlay_width, bool) or not isinstance(overlay_width, int) or overlay_width < 1:
            raise ValueError(f"`overlay_width` (={overlay_width!r}) has to be a positive integer")
        self.overlay_width = overlay_width
        self.contrast = _check_condition(contrast)
        if not isinstance(normalized, bool):
            raise ValueError(f"`normalized` (={normalized!r}) has to be True or False")  # noqa: TRY004
        self.normalized = normalized

    # ------------------------------------------------------------------ inputs

    def prompt_text(self, prompt: str) -> str:
        """The model's text for one user turn (the image, then `prompt`) plus the generation prompt."""
        if not isinstance(prompt, str):
            raise ValueError(f"`prompt` (={prompt!r}) has to be a string")  # noqa: TRY004 (one error type for bad input)
        if getattr(self.processor, "chat_template", None) is None:
            return prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def regions_for(self, image: Image.Image, prompt: str, regions: Any = None) -> list[Any]:
        """The regions of `image` to black out: `regions` checked against the image (boxes clipped to it, as pixel
        tuples; masks as `(H, W)` bool arrays), or the proposer's boxes for `prompt` when `regions` is empty.

        Regions may be boxes `(x0, y0, x1, y1)` (in pixels, or fractions of the size with `normalized=True`),
        boolean masks `(H, W)` or mode-`"L"` mask images, alone or mixed (see `vcontrast.regions.split_regions`).

        Raises:
            `ValueError`: a box is malformed or lies entirely outside the image, every box lies inside `[0, 1]` on an
            image of 8 pixels or more a side while `normalized` is False, a mask has the wrong size or is empty, or
            there are no regions (and no proposer found any), except in `"whole"` mode, which needs none.
        """
        normalized = self.normalized
        if _is_empty(regions):
            if self.mode == "whole":
                return []
            if self.proposer is None:
                raise ValueError(
                    f"no regions given (regions={regions!r}) for prompt {prompt!r}: pass boxes (x0, y0, x1, y1) or "
                    "masks, a `proposer`, a `contrast_image`, or use mode='whole'"
                )
            from vcontrast.crg.proposals import propose_regions

            proposals = propose_regions(image, prompt, detector=self._get_proposer())
            if not proposals:
                raise ValueError(f"no regions given and the proposer found none for prompt {prompt!r}")
            regions = [proposal.box for proposal in proposals]
            normalized = False  # a detector's boxes are in pixels
        elif not normalized:
            _check_pixel_boxes([region for region in split_regions(regions) if not _is_mask(region)], image.size)
        out = []
        for region in split_regions(regions):
            if _is_mask(region):
                out += region_masks(image.size, [region])
            else:
                out.append(tuple(parse_boxes([region], image.size, normalized=normalized)[0].tolist()))
        return out

    def _get_proposer(self) -> Any:
        # A named proposer loads its detector once per CRG, on first use (a built-in one with the VLM's image backend).
        if self._built_proposer is None:
            from vcontrast.crg.proposals import get_proposer_for

            self._built_proposer = get_proposer_for(self.proposer, self.processor)
        return self._built_proposer

    def contrast_images(
        self, image: Image.Image, regions: Any, prompt: str = "", mode: str | None = None
    ) -> list[Image.Image]:
        """The contrast image(s) of `image` under `mode` (defaults to this CRG's): one, or one per region for
        `"each"`."""
        mode = self.mode if mode is None else mode
        found = self.regions_for(image, prompt, regions)
        if mode == "whole":
            return [blackout_all(image, fill=self.fill)]
        if not found:
            raise ValueError(f"no regions given (regions={regions!r}) for prompt {prompt!r}")
        if mode == "each":
            return blackout_each(image, found, fill=self.fill)
        if mode == "combined":
            boxes = [mask_box(r) if isinstance(r, np.ndarray) else r for r in found]
            return [blackout(image, combined_box(boxes), fill=self.fill)]
        return [blackout(image, found, fill=self.fill)]

    def _process(self, images: list[Image.Image], texts: list[str]) -> dict:
        tokenizer = getattr(self.processor, "tokenizer", None)
        side = getattr(tokenizer, "padding_side", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoding and prefix caching want every prompt to end at the same column
        try:
            # One image per text, nested: the form every supported processor reads unambiguously (SmolVLM and
            # Idefics3 read a flat list of several images as several images per text).
            nested = [[image] for image in images]
            batch = self.processor(images=nested, text=texts, return_tensors="pt", padding=True)
        finally:
            if tokenizer is not None:
                tokenizer.padding_side = side
        dtype = getattr(self.adapter.model, "dtype", torch.float32)
        device = getattr(self.adapter.model, "device", torch.device("cpu"))
        out = {}
        for key, value in batch.items():
            if key == "labels":  # PaliGemma's processor adds its own
                continue
            if isinstance(value, torch.Tensor):
                value = value.to(device, dtype=dtype if value.is_floating_point() else None)
            out[key] = value
        return out

    def prepare(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        regions: Sequence[Any] | None = None,
        mode: str | None = None,
        contrast_images: Sequence[Image.Image | None] | None = None,
    ) -> CRGInputs:
        """Reference and contrast batches for lists of images, prompts and per-example regions (left-padded), with
        the contrast images of `mode` (defaults to this CRG's), or the given `contrast_images` (one per example, of
        its image's size; `None` entries fall back to the regions)."""
        images, prompts = list(images), list(prompts)
        if not images or len(images) != len(prompts):
            raise ValueError(f"need as many images as prompts, at least one; got {len(images)} and {len(prompts)}")
        regions = [None] * len(images) if regions is None else list(regions)
        if len(regions) != len(images):
            raise ValueError(f"need one region list per image; got {len(regions)} for {len(images)} images")
        given = [None] * len(images) if contrast_images is None else list(contrast_images)
        if len(given) != len(images):
            raise ValueError(f"need one contrast image per image; got {len(given)} for {len(images)} images")
        for image in images:
            if not isinstance(image, Image.Image):
                raise ValueError(f"images have to be PIL images; got {image!r}")  # noqa: TRY004
        texts = [self.prompt_text(prompt) for prompt in prompts]
        references, contrast, contrast_texts, groups = [], [], [], []
        for image, prompt, text, boxes, own in zip(images, prompts, texts, regions, given, strict=True):
            # The same RGB conversion as the contrast images get (transparency composited onto white).
            reference = to_rgb(image)
            if self.overlay:
                boxes = self.regions_for(image, prompt, boxes)
                outlines = [mask_box(r) if isinstance(r, np.ndarray) else r for r in boxes]
                reference = draw_boxes(reference, outlines, color=self.overlay_color, width=self.overlay_width)
            if own is not None:
                masked = [_check_own(own, image)]
            elif self.contrast is not None and self.contrast.drops_image:
                masked = [reference]  # the same pixels; the image tokens leave the attention below
            elif self.contrast is not None:
                masked = [self.contrast.apply(reference)]
            else:
                masked = self.contrast_images(reference, boxes, prompt, mode=mode)
            references.append(reference)
            groups.append(list(range(len(contrast), len(contrast) + len(masked))))
            contrast += masked
            contrast_texts += [text] * len(masked)
        contrast_batch = self._process(contrast, contrast_texts)
        if self.contrast is not None and self.contrast.drops_image:
            image_tokens = self.adapter.image_token_mask(contrast_batch["input_ids"])
            own_rows = torch.tensor([own is not None for own in given], device=image_tokens.device)
            hide = image_tokens & ~own_rows[:, None]  # one contrast row per example here
            contrast_batch["attention_mask"] = contrast_batch["attention_mask"].masked_fill(hide, 0)
        return CRGInputs(self._process(references, texts), contrast_batch, groups)

    def build_inputs(
        self, image: Image.Image, prompt: str, regions: Any = None, contrast_image: Image.Image | None = None
    ) -> tuple[dict, dict]:
        """Model-ready `(reference, contrast)` batches for one image: identical `input_ids`, and the contrast
        pixels from the image with the regions blacked out (one row, or one row per region in `"each"` mode).

        Examples:

        ```python
        >>> reference, contrast = crg.build_inputs(image, "What is in the box?", [(0, 0, 8, 8)])
        >>> torch.equal(reference["input_ids"], contrast["input_ids"])
        True
        ```
        """
        prepared = self.prepare([image], [prompt], [regions], contrast_images=[contrast_image])
        return prepared.reference, prepared.contrast

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        image: Image.Image,
        prompt: str,
        regions: Any = None,
        implementation: str = "auto",
        contrast_image: Image.Image | None = None,
        **generate_kwargs,
    ) -> str:
        """Answer `prompt` about `image` with CRG decoding (greedy by default; sampling and beam search through the
        usual `generate` arguments). Every path decodes from the guided distribution's log-probabilities
        `log_softmax(g_t)`, so beam search ranks beams by the sum `score` computes by default.

        Args:
            image (`PIL.Image.Image`): the image.
            prompt (`str`): the question or instruction.
            regions (*optional*): boxes `(x0, y0, x1, y1)` in pixels or masks; see `regions_for`.
            implementation (`str`, *optional*, defaults to `"auto"`): `"batched"` runs both streams in one forward
                per step (greedy and sampling), `"processor"` uses `CRGLogitsProcessor` (two forwards per step; also
                beam search); `"auto"` picks `"batched"` unless beams are asked for.
            contrast_image (`PIL.Image.Image`, *optional*): the contrast stream's image, given directly (e.g. an
                inpainted one, or VCD's noised image), of the image's size; `regions` are then not used.
            **generate_kwargs: passed to `model.generate` (`max_new_tokens`, `do_sample`, `num_beams`, ...).

        Returns:
            `str`: the decoded new tokens, special tokens skipped.

        Raises:
            `ValueError`: for decoding modes CRG does not support (assisted generation, contrastive search, DoLa,
            group or constrained beam search, `use_cache=False`), a static cache (`cache_implementation="static"`)
            or chunked prefill (`prefill_chunk_size`), or the `"each"` mode.
        """
        return self.generate_batch(
            [image], [prompt], [regions], implementation=implementation, contrast_images=[contrast_image],
            **generate_kwargs,
        )[0]  # fmt: skip

    def generate_batch(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        regions: Sequence[Any] | None = None,
        implementation: str = "auto",
        contrast_images: Sequence[Image.Image | None] | None = None,
        **generate_kwargs,
    ) -> list[str]:
        """`generate` for lists of images, prompts and per-example regions, as one left-padded batch.

        Returns:
            `list[str]`: one answer per example (the first of each example's `num_return_sequences`).
        """
        ids = self.generate_ids(
            images, prompts, regions, implementation=implementation, contrast_images=contrast_images, **generate_kwargs
        )
        prompt_length = ids.prompt_length
        repeats = ids.sequences.shape[0] // len(images)
        new = ids.sequences[::repeats, prompt_length:]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]

    def generate_ids(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        regions: Sequence[Any] | None = None,
        implementation: str = "auto",
        contrast_images: Sequence[Image.Image | None] | None = None,
        **generate_kwargs,
    ) -> GeneratedIds:
        """Token ids of CRG generation (prompt included), for callers that decode themselves."""
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"`implementation` (={implementation!r}) has to be one of {IMPLEMENTATIONS}")
        if self.mode == "each":
            raise ValueError(
                "mode 'each' makes one contrast image per region, which is for scoring and re-ranking; generation "
                "needs one contrast stream: use mode 'union' or 'combined'"
            )
        decoding = self.decoding_mode(**generate_kwargs)
        prepared = self.prepare(images, prompts, regions, contrast_images=contrast_images)
        reference, contrast = prepared.reference, prepared.contrast
        new_tokens = generate_kwargs.get("max_new_tokens")
        if isinstance(new_tokens, int) and not isinstance(new_tokens, bool):  # positions past the limit: refused
            check_text_length(self.model, reference["input_ids"], reference["attention_mask"], new_tokens=new_tokens)
        generate_kwargs.setdefault("pad_token_id", _pad_token_id(self.model, self.processor))
        if implementation == "auto":
            implementation = "processor" if decoding.startswith("beam") else "batched"
        if implementation == "batched" and decoding.startswith("beam"):
            raise ValueError(
                "implementation 'batched' does greedy decoding and sampling; beam search needs 'processor'"
            )
        with torch.no_grad():
            if self.alpha == 0:
                out = self.adapter.model.generate(**reference, **generate_kwargs)
            elif implementation == "batched":
                out = two_stream_generate(
                    self.model, reference, contrast, self.alpha, self.plausibility_beta, **generate_kwargs
                )
            else:
                user = generate_kwargs.pop("logits_processor", None) or []
                with CRGLogitsProcessor(self.model, contrast, self.alpha, self.plausibility_beta) as crg:
                    processors = LogitsProcessorList([crg, *user])
                    out = self.adapter.model.generate(**reference, logits_processor=processors, **generate_kwargs)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        return GeneratedIds(sequences=sequences, prompt_length=reference["input_ids"].shape[1])

    def decoding_mode(self, **generate_kwargs) -> str:
        """The decoding mode `generate_kwargs` ask for; raises ValueError naming it if CRG cannot run it."""
        for key in ("assistant_model", "custom_generate", "negative_prompt_ids"):
            if generate_kwargs.get(key) is not None:
                raise ValueError(f"CRG generation does not support `{key}` (={generate_kwargs[key]!r})")
        config = copy.deepcopy(generate_kwargs.get("generation_config") or self.adapter.model.generation_config)
        options = {key: value for key, value in generate_kwargs.items() if hasattr(config, key)}
        config.update(**options)
        # Both implementations keep the contrast stream's cache themselves, as a dynamic cache prefilled at once: a
        # static cache would crash the processor path and be ignored by the batched one (see `CRGLogitsProcessor`).
        check_generation_config(config)
        if config.use_cache is False:
            raise ValueError("CRG generation needs `use_cache=True` (got use_cache=False)")
        if getattr(config, "guidance_scale", None) not in (None, 1, 1.0):
            raise ValueError(
                f"`guidance_scale` (={config.guidance_scale!r}) would add a second guidance; leave it unset"
            )
        mode = str(config.get_generation_mode(generate_kwargs.get("assistant_model")).value)
        if mode not in _SUPPORTED_MODES:
            raise ValueError(
                f"decoding mode {mode!r} is not supported by CRG generation; supported: greedy, sampling and beam "
                "search (num_beams > 1, optionally with do_sample)"
            )
        return mode

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        image: Image.Image,
        prompt: str,
        candidates: Sequence[str],
        regions: Any = None,
        reduce: str = "sum",
        normalize: bool = True,
        contrast_image: Image.Image | None = None,
    ) -> list[float]:
        """Guided log-likelihood of each candidate answer to `prompt`.

        Each candidate's tokens are the ones the model itself would produce after the generation prompt (no EOS):
        the tail of the joint tokenization of the rendered prompt, a separator and the candidate
        (`vcontrast.candidates.candidate_tokens`; `▁yes`/`Ġyes` after `ASSISTANT:`, not a bare `yes`). The score
        sums (or averages, `reduce="mean"`) over those tokens
        `log_softmax((1 + alpha) * lp_ref - alpha * lp_con)[y_t]` (`normalize=True`), or the unnormalised
        `(1 + alpha) * lp_ref[y_t] - alpha * lp_con[y_t]` (`normalize=False`). The prompt with its image is
        prefilled once per condition and all candidates run as one batch on that cache.

        Args:
            image (`PIL.Image.Image`): the image.
            prompt (`str`): the question.
            candidates (`Sequence[str]`): the answers to score, at least one.
            regions (*optional*): boxes `(x0, y0, x1, y1)` in pixels.
            reduce (`str`, *optional*, defaults to `"sum"`): `"sum"` or `"mean"` over the candidate's tokens.
            normalize (`bool`, *optional*, defaults to `True`): renormalise the guided distribution.
            contrast_image (`PIL.Image.Image`, *optional*): the contrast image, given directly (see `generate`).

        Returns:
            `list[float]`: one score per candidate, higher is better.

        Examples:

        ```python
        >>> crg.score(image, "What colour is the cup?", ["red", "blue"], regions=[(10, 10, 60, 40)])
        [-0.4, -2.1]
        ```
        """
        return self.score_batch(
            [image], [prompt], [candidates], [regions], reduce=reduce, normalize=normalize,
            contrast_images=[contrast_image],
        )[0]  # fmt: skip

    def score_batch(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        candidates: Sequence[Sequence[str]],
        regions: Sequence[Any] | None = None,
        reduce: str = "sum",
        normalize: bool = True,
        contrast_images: Sequence[Image.Image | None] | None = None,
    ) -> list[list[float]]:
        """`score` for lists of images, prompts, candidate lists and per-example regions, in one prefill."""
        if reduce not in ("sum", "mean"):
            raise ValueError(f"`reduce` (={reduce!r}) has to be 'sum' or 'mean'")
        candidates = [self._check_candidates(c) for c in candidates]
        if len(candidates) != len(images):
            raise ValueError(f"need one candidate list per image; got {len(candidates)} for {len(images)} images")
        prepared = self.prepare(images, prompts, regions, contrast_images=contrast_images)
        count = prepared.reference["input_ids"].shape[0]
        tokens = [
            self._tokens(prepared, example, prompt, c)
            for example, (prompt, c) in enumerate(zip(prompts, candidates, strict=True))
        ]
        jobs = [
            (ScoreJob(example, tuple(count + row for row in prepared.groups[example]), ct.ids), ct.drop)
            for example, example_tokens in enumerate(tokens)
            for ct in example_tokens
        ]
        scores = self._run(prepared, jobs, "normalized" if normalize else "guided")
        out, start = [], 0
        for example_candidates in candidates:
            chunk = scores[start : start + len(example_candidates)]
            start += len(example_candidates)
            out.append([float(s.sum() if reduce == "sum" else s.mean()) for s in chunk])
        return out

    def _run(self, prepared: CRGInputs, jobs: list[tuple[ScoreJob, int]], score: str) -> list[torch.Tensor]:
        # Jobs are (job, drop): a candidate whose first token merges with the prompt's last `drop` tokens is scored
        # after the prompt with those tokens removed (see `vcontrast.candidates`); one prefill per distinct drop.
        prefix = stack_streams(prepared.reference, prepared.contrast)
        results: list[torch.Tensor | None] = [None] * len(jobs)
        for drop in sorted({drop for _, drop in jobs}):
            index = [i for i, (_, d) in enumerate(jobs) if d == drop]
            batch = prefix if drop == 0 else _drop_last_tokens(prefix, self.adapter, drop)
            scores = score_jobs(
                self.model, batch, [jobs[i][0] for i in index], self.alpha, self.plausibility_beta, score,
                self.chunk_bytes,
            )  # fmt: skip
            for i, value in zip(index, scores, strict=True):
                results[i] = value
        return results

    def _check_candidates(self, candidates: Sequence[str]) -> list[str]:
        if isinstance(candidates, str) or not isinstance(candidates, Sequence) or len(candidates) == 0:
            raise ValueError(f"`candidates` (={candidates!r}) has to be a non-empty list of strings")
        for candidate in candidates:
            if not isinstance(candidate, str):
                raise ValueError(f"candidate {candidate!r} has to be a string")  # noqa: TRY004
        return list(candidates)

    def rendered_prompt(self, prompt: str) -> str:
        """The text the model reads before an answer: `prompt_text(prompt)` plus what the processor appends after a
        prompt (PaliGemma's newline)."""
        return self.prompt_text(prompt) + self.adapter.text_after_prompt

    def _tokens(
        self, prepared: CRGInputs, example: int, prompt: str, candidates: Sequence[str]
    ) -> list[CandidateTokens]:
        # The one candidate-token rule, after checking that the processor's prompt ends in the tokenizer's tokens of
        # the rendered prompt, at least from its last special token on (before it, the processor may expand the
        # image), so that the rule's split point is where the model's prompt ends.
        rendered = self.rendered_prompt(prompt)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        row = prepared.reference["input_ids"][example].tolist()
        shared = shared_suffix_length(ids, row)
        specials = set(tokenizer.all_special_ids)
        last_special = max((i for i, token in enumerate(ids) if token in specials), default=-1)
        if shared < max(len(ids) - last_special - 1, 1):
            raise ValueError(
                f"the processor's tokens for prompt {prompt!r} end in {row[-_TAIL_CHECK:]}, the tokenizer's in "
                f"{ids[-_TAIL_CHECK:]}: candidate tokens cannot be placed after the prompt (does the model's adapter "
                "know what the processor appends after the prompt?)"
            )
        out = candidate_tokens(tokenizer, rendered, candidates)
        for candidate, tokens in zip(candidates, out, strict=True):
            if tokens.drop >= shared:
                raise ValueError(f"candidate {candidate!r} merges with the prompt's tokens before {rendered[-20:]!r}")
        return out

    def rerank(
        self,
        image: Image.Image,
        text: str,
        proposals: Sequence[Any],
        prompt: str = RERANK_PROMPT,
        reduce: str = "sum",
        normalize: bool = False,
    ) -> tuple[int, list[float]]:
        """Pick the region proposal that `text` refers to, by the CRG paper's rule: the proposal whose blackout
        lowers the likelihood of `text` the most.

        Proposal i scores `sum_t [lp(y_t | I) - lp(y_t | I with only box i blacked out)]` (default). The
        unnormalised guided score `sum_t [(1 + alpha) lp(y_t | I) - alpha lp(y_t | I_i)]` is that times `alpha` plus
        a constant, so it ranks the same for any `alpha > 0`; the log-ratio itself does not depend on `alpha`. The
        renormalised guided score (`normalize=True`, the log-likelihood of `text` under `log_softmax` of the guided
        scores) subtracts from it a per-token divergence between the two distributions, which is not the paper's
        rule and picks a different proposal on some items (docs/crg.md). The reference prompt is prefilled once
        and all K contrast images run in one batch.

        Args:
            image (`PIL.Image.Image`): the image.
            text (`str`): the referring expression or phrase, scored as the answer to `prompt`.
            proposals (`Sequence`): boxes `(x0, y0, x1, y1)` in pixels, masks (see `vcontrast.regions`), or objects
                with a `.box` (`Proposal`).
            prompt (`str`, *optional*, defaults to `"Describe the image."`): the prompt `text` answers.
            reduce (`str`, *optional*, defaults to `"sum"`): `"sum"` or `"mean"` over the tokens of `text`.
            normalize (`bool`, *optional*, defaults to `False`): score by the renormalised guided log-likelihood
                instead of the log-ratio.

        Returns:
            `tuple[int, list[float]]`: the best proposal's index and every proposal's score.

        Raises:
            `ValueError`: this CRG was built with `contrast=` (its contrast image would not depend on the proposals;
            re-ranking needs a CRG without it), or a proposal is malformed.

        Examples:

        ```python
        >>> best, scores = crg.rerank(image, "the red cup on the left", [(0, 0, 40, 40), (50, 0, 90, 40)])
        ```
        """
        return self.rerank_batch([image], [text], [proposals], prompt=prompt, reduce=reduce, normalize=normalize)[0]

    def rerank_batch(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        proposals: Sequence[Sequence[Any]],
        prompt: str = RERANK_PROMPT,
        reduce: str = "sum",
        normalize: bool = False,
    ) -> list[tuple[int, list[float]]]:
        """`rerank` for lists of images, texts and per-example proposals, in one prefill (the eval runner's path).

        Returns:
            `list[tuple[int, list[float]]]`: per example, the best proposal's index and every proposal's score.
        """
        if self.contrast is not None:
            raise ValueError(
                f"re-ranking blacks out each proposal alone, but this CRG makes its contrast image with `contrast` "
                f"(={self.contrast!r}), which does not depend on the proposals: build a CRG without `contrast=` for "
                "re-ranking"
            )
        if reduce not in ("sum", "mean"):
            raise ValueError(f"`reduce` (={reduce!r}) has to be 'sum' or 'mean'")
        images, texts, proposals = list(images), list(texts), list(proposals)
        if not (len(images) == len(texts) == len(proposals)):
            raise ValueError(
                f"need as many texts and proposal lists as images; got {len(images)} images, {len(texts)} texts and "
                f"{len(proposals)} proposal lists"
            )
        boxes = [_proposal_regions(p) for p in proposals]
        prompts = [prompt] * len(images)
        prepared = self.prepare(images, prompts, boxes, mode="each")
        count = len(images)
        jobs = []
        for example, text in enumerate(texts):
            (tokens,) = self._tokens(prepared, example, prompt, [text])
            jobs += [(ScoreJob(example, (count + row,), tokens.ids), tokens.drop) for row in prepared.groups[example]]
        scores = self._run(prepared, jobs, "normalized" if normalize else "log_ratio")
        out, start = [], 0
        for group in prepared.groups:
            chunk = [float(s.sum() if reduce == "sum" else s.mean()) for s in scores[start : start + len(group)]]
            start += len(group)
            out.append((max(range(len(chunk)), key=chunk.__getitem__), chunk))
        return out

    def match(
        self,
        image: Image.Image,
        text: str,
        regions: Any = None,
        template: str = MATCH_TEMPLATE,
        answers: tuple[str, str] = MATCH_ANSWERS,
        normalize_yes_no: bool = True,
        contrast_image: Image.Image | None = None,
    ) -> float:
        """Image-text agreement (SeeTRUE style): `P(yes) / (P(yes) + P(no))` for `template` filled with `text`,
        under the guided distribution.

        Args:
            image (`PIL.Image.Image`): the image.
            text (`str`): the text to check against the image.
            regions (*optional*): boxes `(x0, y0, x1, y1)` in pixels, or masks (see `vcontrast.regions`).
            template (`str`, *optional*, defaults to `"Does this image match: {text}?"`): the question.
            answers (`tuple[str, str]`, *optional*, defaults to `("yes", "no")`): the positive and the negative
                answer, tokenized as the model would produce them after the generation prompt.
            normalize_yes_no (`bool`, *optional*, defaults to `True`): renormalise over the two answers, as image-text
                match benchmarks do; `False` gives the raw `P(yes)` under the guided distribution (a product over its
                tokens), which also counts the mass on every other word.
            contrast_image (`PIL.Image.Image`, *optional*): the contrast image, given directly (see `generate`).

        Returns:
            `float`: a probability in [0, 1].

        Examples:

        ```python
        >>> crg.match(image, "a red cup left of a plate", regions=[(10, 10, 60, 40)])
        0.73
        ```
        """
        return self.match_batch(
            [image], [text], [regions], template=template, answers=answers, normalize_yes_no=normalize_yes_no,
            contrast_images=[contrast_image],
        )[0]  # fmt: skip

    def match_batch(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        regions: Sequence[Any] | None = None,
        template: str = MATCH_TEMPLATE,
        answers: tuple[str, str] = MATCH_ANSWERS,
        normalize_yes_no: bool = True,
        contrast_images: Sequence[Image.Image | None] | None = None,
    ) -> list[float]:
        """`match` for lists of images, texts and per-example regions, in one prefill."""
        if "{text}" not in template:
            raise ValueError(f"`template` (={template!r}) needs a '{{text}}' field")
        if isinstance(answers, str) or len(answers) != 2 or not all(isinstance(a, str) and a for a in answers):
            raise ValueError(f"`answers` (={answers!r}) has to be two non-empty strings: (positive, negative)")
        prompts = [template.format(text=text) for text in texts]
        scores = self.score_batch(
            images, prompts, [list(answers)] * len(prompts), regions, reduce="sum", contrast_images=contrast_images
        )
        if not normalize_yes_no:
            return [math.exp(yes) for yes, _ in scores]
        return [yes_probability(yes, no) for yes, no in scores]


def yes_probability(yes: float, no: float) -> float:
    """`P(yes) / (P(yes) + P(no))` from the two log-probabilities, computed stably; 0.5 when both are `-inf`."""
    top = max(yes, no)
    if top == -math.inf:
        return 0.5
    return math.exp(yes - top) / (math.exp(yes - top) + math.exp(no - top))


@dataclass
class GeneratedIds:
    """Token ids from CRG generation: `sequences` (rows, prompt_length + new) and the padded prompt length."""

    sequences: torch.Tensor
    prompt_length: int


def _check_condition(condition: Any) -> Any:
    # A pixel-space visual condition (vcontrast.conditions), or None.
    if condition is None:
        return None
    from vcontrast.conditions import VisualCondition

    if not isinstance(condition, VisualCondition):
        raise ValueError(f"`contrast` (={condition!r}) has to be a vcontrast.conditions.VisualCondition or None")  # noqa: TRY004
    return condition


def _check_own(contrast: Any, image: Image.Image) -> Image.Image:
    # A user's contrast image: a PIL image of the reference image's size (so both streams get the same token layout).
    if not isinstance(contrast, Image.Image):
        raise ValueError(f"`contrast_image` (={contrast!r}) has to be a PIL image")  # noqa: TRY004
    if contrast.size != image.size:
        raise ValueError(
            f"`contrast_image` has size {contrast.size} but the image has {image.size}: both streams need the same "
            "size (the same image-token layout); resize it to the image's size"
        )
    return to_rgb(contrast)


def _proposal_regions(proposals: Any) -> Any:
    # Proposals as regions: `Proposal` objects give their `.box`; boxes and masks pass through.
    regions = [getattr(p, "box", p) for p in proposals] if isinstance(proposals, Sequence) else proposals
    if _is_empty(regions):
        raise ValueError(f"`proposals` (={proposals!r}) is empty: nothing to re-rank")
    return regions


def _is_empty(regions: Any) -> bool:
    if regions is None:
        return True
    try:
        return len(regions) == 0
    except TypeError:
        return False


def _drop_last_tokens(batch: dict, adapter, drop: int) -> dict:
    """The left-padded prompt batch with each row's last `drop` tokens removed (the row shifts right by `drop`,
    padding enters on the left), pixel inputs unchanged: positions from the attention mask stay the same."""
    out = dict(batch)
    for key in adapter.token_keys:
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            # Masked out by the attention mask; the prompt's last token stands in as a pad id that no family reads
            # as an image token.
            pad = value[:, -1:].expand(-1, drop) if key == "input_ids" else value.new_zeros(value.shape[0], drop)
            out[key] = torch.cat([pad, value[:, :-drop]], dim=1)
    if bool(adapter.image_token_mask(batch["input_ids"][:, -drop:]).any()):
        raise ValueError(f"a candidate merges with the prompt's last {drop} tokens, which include image tokens")
    return out


def _pad_token_id(model: torch.nn.Module, processor: Any) -> int | None:
    # generate warns (and guesses EOS) without a pad token; the processor's tokenizer knows the right one.
    config_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if config_pad is not None:
        return config_pad
    return getattr(getattr(processor, "tokenizer", None), "pad_token_id", None)
