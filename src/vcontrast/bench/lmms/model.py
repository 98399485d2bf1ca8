"""`vcontrast_crg`: an lmms-eval model that answers with Contrastive Region Guidance.

model_args (`--model_args key=value,...`):

- `pretrained` (default: the toy model): checkpoint folder or hub id of a supported VLM (`load_model`).
- `alpha` (1.0): CRG's guidance strength (0: the plain model).
- `contrast` (`blackout`): the contrast image. `blackout`: the proposer's boxes for the question's noun phrases
  blacked out (the whole image when it finds none); `no-image`: the whole image blacked out; `noise`: VCD's
  diffusion noise at step `noise_step` of 1000.
- `proposer` (`grounding-dino`): region proposer for `blackout`, a `vcontrast.crg.proposals` name, or `none`.
- `proposer_model`: local checkpoint of the proposer.
- `noise_step` (500): diffusion step of the `noise` contrast.
- `max_new_tokens` (32): generation length when the task sets none.
- `image_backend`: the image processor's backend, `pil` or `torchvision` (default: transformers' choice,
  torchvision where installed); they resize differently (`load_model`).

lmms-eval's `--batch_size N` batches `generate_until` requests (N at a time); loglikelihood requests run one by one.

`generate_until` decodes greedily with CRG (`until` strings cut the answer; sampling settings are ignored, CRG's
lmms-eval model is greedy); `loglikelihood` returns, as lmms-eval's models do, a loss: the negative CRG-guided
log-probability of the continuation (the summed log-softmax of `(1 + alpha) * lp(. | image) - alpha * lp(. |
contrast)` over its tokens, as `CRG.score`; lmms-eval picks the choice with the lowest value), and whether greedy CRG
decoding of as many tokens gives the continuation. The continuation's leading whitespace (lmms-eval's
`target_delimiter`, " " by default) is dropped: the candidate-token rule (`vcontrast.candidates`) puts the separator
the model writes after the rendered prompt (a space after LLaVA's `ASSISTANT:`, none after Qwen's
`assistant\\n`). Regions come from the question (the request's context), never from the answer candidates.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from vcontrast.bench.items import Item
from vcontrast.bench.methods import CRGMethod
from vcontrast.candidates import candidate_tokens
from vcontrast.crg.crg import CRG
from vcontrast.regions import open_image

CONTRASTS = ("blackout", "no-image", "noise")
# What lmms-eval passes besides model_args (evaluator.simple_evaluate's additional config).
_LMMS_EVAL_KWARGS = ("batch_size", "max_batch_size", "device")


def _loglikelihood_output(result: tuple[float, bool]) -> Any:
    # lmms-eval 0.7.3's evaluator passes every response through `unwrap_generation_output`, which turns a
    # `(logprob, is_greedy)` tuple into its string, so multiple-choice tasks fail for every model ("too many values to
    # unpack"). Its `GenerationResult` wrapper is unwrapped to `.text` unchanged, so the tuple travels in one.
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:  # versions without the wrapper keep tuples as they are
        return result
    if isinstance(unwrap_generation_output(result)[0], tuple):
        return result
    return GenerationResult(text=result)


class NoiseContrastCRG(CRG):
    """CRG whose contrast image is the image under a visual condition (e.g. `DiffusionNoise`), regions ignored."""

    def __init__(self, model: Any, processor: Any, condition: Any, alpha: float = 1.0):
        super().__init__(model, processor, alpha=alpha, mode="whole")
        self.condition = condition

    def contrast_images(self, image: Image.Image, regions: Any, prompt: str = "", mode: str | None = None) -> list:
        return [self.condition.apply(image)]


class VContrastCRG(lmms):
    """lmms-eval model running a vcontrast-supported VLM with CRG (model_args in the module docstring)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        alpha: float = 1.0,
        contrast: str = "blackout",
        proposer: str | None = "grounding-dino",
        proposer_model: str | None = None,
        noise_step: int = 500,
        max_new_tokens: int = 32,
        image_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(_LMMS_EVAL_KWARGS))
        if unknown:
            raise ValueError(
                f"vcontrast_crg: unknown model_args {unknown}; known: pretrained, alpha, contrast, proposer, "
                "proposer_model, noise_step, max_new_tokens, image_backend"
            )
        if contrast not in CONTRASTS:
            raise ValueError(f"vcontrast_crg: `contrast` (={contrast!r}) must be one of {', '.join(CONTRASTS)}")
        from vcontrast.models.loading import load_model

        self.batch_size_per_gpu = _batch_size(kwargs.get("batch_size"))
        pretrained = None if pretrained in (None, "", "toy") else str(pretrained)
        model, processor = load_model(pretrained, image_backend=image_backend or None)
        if isinstance(proposer, str) and proposer.lower() == "none":
            proposer = None
        self.contrast = contrast
        self.method = CRGMethod(
            model,
            processor,
            alpha=float(alpha),
            proposer=proposer if contrast == "blackout" else None,
            proposer_model=proposer_model,
            max_new_tokens=int(max_new_tokens),
        )
        if contrast == "noise":
            from vcontrast.conditions import DiffusionNoise

            self.method.crg = NoiseContrastCRG(model, processor, DiffusionNoise(int(noise_step)), alpha=float(alpha))
        self.default_max_new_tokens = int(max_new_tokens)

    # ------------------------------------------------------------------ helpers

    def _image(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Image.Image:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]
        if not visuals:
            raise ValueError(f"vcontrast_crg: task {task!r} doc {doc_id} has no image; CRG needs one")
        if len(visuals) > 1:
            # Scoring the first alone would answer a multi-image question about one image, silently.
            raise ValueError(
                f"vcontrast_crg: task {task!r} doc {doc_id} has {len(visuals)} images; vcontrast_crg takes one image "
                "per request"
            )
        (visual,) = visuals
        if not isinstance(visual, (str, Image.Image)):
            raise ValueError(  # noqa: TRY004
                f"vcontrast_crg: task {task!r} doc {doc_id}: the image is a {type(visual).__name__}, not a PIL image "
                "or a path (videos and audio are not supported)"
            )
        return open_image(visual) if isinstance(visual, str) else visual.convert("RGB")

    def _question_regions(self, prompt: str, image: Image.Image) -> list[list[float]]:
        # Regions from the question's noun phrases (never from answers); the whole image when none are found.
        boxes, _ = self.method.regions(Item(id="q", task="vqa", image="-", prompt=prompt), image)
        return boxes

    # ------------------------------------------------------------------ lmms-eval API

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy CRG answers, cut at the first `until` string; consecutive requests with the same answer length run
        as one batch of at most `batch_size`."""
        out: list[str] = []
        args = [r.args for r in requests]
        start = 0
        while start < len(args):
            max_new = self._max_new_tokens(args[start][1])
            end = start + 1
            while (
                end < len(args)
                and end - start < self.batch_size_per_gpu
                and self._max_new_tokens(args[end][1]) == max_new
            ):
                end += 1
            chunk = args[start:end]
            images = [self._image(v, doc_id, task, split) for _, _, v, doc_id, task, split in chunk]
            contexts = [context for context, *_ in chunk]
            regions = [self._question_regions(c, image) for c, image in zip(contexts, images, strict=True)]
            answers = self.method.crg.generate_batch(
                images, contexts, regions, max_new_tokens=max_new, do_sample=False
            )
            for (context, gen_kwargs, *_), answer in zip(chunk, answers, strict=True):
                until = (gen_kwargs or {}).get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop and stop in answer:
                        answer = answer.split(stop, 1)[0]
                out.append(answer)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
            start = end
        return out

    def _max_new_tokens(self, gen_kwargs: dict | None) -> int:
        return int((gen_kwargs or {}).get("max_new_tokens") or self.default_max_new_tokens)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """`(loss, is_greedy)` per request: the negative CRG-guided log-probability of the continuation (lmms-eval
        ranks choices by the lowest value) and whether greedy CRG decoding of as many tokens gives it."""
        out = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            # lmms-eval passes f"{target_delimiter}{choice}" (" yes"): its delimiter is the candidate rule's
            # separator, which `candidate_tokens` decides from the rendered prompt. Kept, the space would give
            # `Ġyes` after a template ending in a newline (Qwen's `assistant\n`), a token the model does not write.
            answer = continuation.lstrip()
            image = self._image(doc_to_visual, doc_id, task, split)
            regions = self._question_regions(context, image)
            crg = self.method.crg
            score = crg.score_batch([image], [context], [[answer]], [regions])[0][0]
            # as many tokens as the continuation has after the prompt (the one candidate-token rule)
            n_tokens = len(candidate_tokens(crg.processor, crg.rendered_prompt(context), [answer])[0].ids)
            greedy = crg.generate_batch([image], [context], [regions], max_new_tokens=n_tokens, do_sample=False)[0]
            # lmms-eval's multiple-choice scoring takes the argmin ("we return the actual loss"): a loss, so the
            # negative guided log-probability, summed over the continuation's tokens.
            result = (-float(score), greedy.strip() == answer.strip())
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
            out.append(_loglikelihood_output(result))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        """Not supported: CRG answers one turn."""
        raise NotImplementedError("vcontrast_crg answers single-turn requests only")


def _batch_size(value: Any) -> int:
    """lmms-eval's `--batch_size` as a positive int; its "auto" (a memory probe) is not supported by this model."""
    if value is None or value == "":
        return 1
    if isinstance(value, str) and value.strip().lower().startswith("auto"):
        raise ValueError(f"vcontrast_crg: `--batch_size {value}` is not supported; give a number (e.g. 8)")
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"vcontrast_crg: `--batch_size` (={value!r}) has to be a positive integer") from None
    if size < 1:
        raise ValueError(f"vcontrast_crg: `--batch_size` (={value!r}) has to be a positive integer")
    return size
