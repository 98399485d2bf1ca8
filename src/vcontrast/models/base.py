"""What every model family shares: where the image tokens are, which inputs carry pixels, how positions are built.

An adapter wraps one loaded transformers VLM. The generic machinery in `vcontrast.contrast` asks it only these
questions, so supporting a new family means answering them in a small subclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn

# Processor outputs that carry a video (Qwen2-VL family, LLaVA-OneVision, LLaVA-NeXT-Video, Gemma 4, ...). No
# condition removes or masks a video, so a batch with one would be contrasted with the video in both passes or, where
# only `pixel_keys` travel, in neither: `check_inputs` refuses it.
VIDEO_KEYS = (
    "pixel_values_videos",
    "video_grid_thw",
    "image_sizes_videos",
    "second_per_grid_ts",
    "video_position_ids",
    "pixel_values_video",
)


class ModelAdapter:
    """Family-specific knowledge about a transformers VLM, keyed by `config.model_type`.

    Args:
        model (`PreTrainedModel`): a `*ForConditionalGeneration` VLM. PEFT-, DDP- or FSDP-wrapped models are
            unwrapped for what the adapter reads (`.model`); forwards run through `.forward_model`, which keeps the
            wrappers whose hooks gather sharded parameters (FSDP), see [`forward_model`].
    """

    model_types: tuple[str, ...] = ()
    # Whether the family's parity suite runs in vcontrast's tests (False only for the generic adapter).
    tested: bool = True
    # Inputs that carry the image (dropped for the no-image condition, swapped for a contrast image).
    pixel_keys: tuple[str, ...] = ("pixel_values",)
    # Inputs aligned with the tokens, shape (B, T): compacted together with `input_ids` when image tokens are dropped.
    token_keys: tuple[str, ...] = ("input_ids", "attention_mask")
    # Position id of the first token (PaliGemma counts from 1).
    first_position: int = 0
    # Value of each token-aligned type input (`token_type_ids`, `mm_token_type_ids`) for a generated or appended text
    # token: PaliGemma's suffix is causal (1), Qwen2-VL's text is 0, Gemma 3's text is 0 (1 marks image tokens).
    generated_token_types: Mapping[str, int] = MappingProxyType({})
    # Text the processor itself appends after the (rendered) prompt, which the answer follows (PaliGemma's "\n").
    text_after_prompt: str = ""

    def __init__(self, model: nn.Module):
        self.model = unwrap_model(model)
        self.forward_model = forward_model(model)
        self.config = self.model.config

    @property
    def image_token_id(self) -> int:
        """The placeholder token id whose embeddings the vision features replace."""
        token_id = getattr(self.config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(self.config, "image_token_index", None)
        if token_id is None:
            raise ValueError(f"{type(self.model).__name__} config has no `image_token_id`")
        return int(token_id)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean (B, T): True where a token is an image placeholder (what "no image" removes)."""
        return input_ids == self.image_token_id

    def batch_images(self, images: list) -> list:
        """Images in the layout the family's processor expects for a batch with one image per sample."""
        return list(images)

    def backbone(self) -> nn.Module:
        """The base VLM model (vision tower + projector + language model) returning `last_hidden_state`."""
        return self.model.model

    def position_ids(self, inputs: dict) -> torch.Tensor:
        """Position ids the model uses with the image, (B, T), from the attention mask so that left and right padding
        give the same positions (what `generate` does, rather than the plain forward's `arange`)."""
        mask = inputs["attention_mask"].long()
        pos = mask.cumsum(-1) - 1 + self.first_position
        return pos.masked_fill(mask == 0, self.first_position)

    @staticmethod
    def gather_positions(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Select token positions `index` (B, L) from position ids of shape (B, T) or (k, B, T)."""
        if position_ids.dim() == 2:
            return position_ids.gather(1, index)
        return position_ids.gather(-1, index.unsqueeze(0).expand(position_ids.shape[0], -1, -1))

    def text_only_inputs(self, inputs: dict, order: torch.Tensor, keep: torch.Tensor) -> dict:
        """Backbone inputs for the kept tokens only (gathered in `order`), no pixels, original positions.

        Raises:
            `ValueError`: a sequence is longer than the language model's sliding window. Sliding-window layers count
            the window in sequence positions, not position ids, so once the image tokens are dropped each text token
            would see text that lay outside its window with the image (measured on tiny Gemma 3: gold logits off by
            0.1 at window 8 on 30 tokens, equal at window 128); the attention-mask condition is exact at any length.
        """
        window = self.sliding_window()
        length = int(inputs["attention_mask"].sum(-1).max())
        if window is not None and length > window:
            raise ValueError(
                f"a sequence of {length} tokens is longer than {type(self.model).__name__}'s sliding window "
                f"({window}): dropping the image tokens would change which tokens each sliding-window layer sees; "
                "use the attention-mask condition (condition='attention_mask') for the no-image pass instead"
            )
        out = {key: inputs[key].gather(1, order) for key in self.token_keys if key in inputs}
        out["attention_mask"] = keep.gather(1, order).long()
        out["position_ids"] = self.gather_positions(self.position_ids(inputs), order)
        return out

    def sliding_window(self) -> int | None:
        """The language model's sliding-window size if any of its layers use one, else None."""
        text = self.config.get_text_config()
        window = getattr(text, "sliding_window", None)
        if window is None or getattr(text, "use_sliding_window", True) is False:
            return None
        layer_types = getattr(text, "layer_types", None)
        if layer_types is not None and "sliding_attention" not in layer_types:
            return None
        return int(window)

    def check_inputs(self, inputs: dict) -> None:
        """Raise if image tokens and pixel inputs disagree (tokens without pixels would crash deep in the model), or if
        the batch carries a video (a video input or video tokens), which vcontrast does not support.

        Every path (gold-token scoring, CAL, CRG's decoding and scoring) checks its batches here.
        """
        if "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ValueError(f"inputs need `input_ids` and `attention_mask`; got keys {sorted(inputs)}")
        self.check_no_video(inputs)
        has_tokens = bool(self.image_token_mask(inputs["input_ids"]).any())
        has_pixels = inputs.get(self.pixel_keys[0]) is not None
        if has_tokens and not has_pixels:
            raise ValueError(
                f"the batch has image tokens (id {self.image_token_id}) but no `{self.pixel_keys[0]}`: "
                "pass the processor's pixel inputs along with input_ids"
            )
        if has_pixels and not has_tokens:
            raise ValueError(f"the batch has `{self.pixel_keys[0]}` but no image tokens (id {self.image_token_id})")
        from vcontrast.models.loading import check_text_length

        check_text_length(self.model, inputs["input_ids"], inputs["attention_mask"])

    def check_scored_labels(self, inputs: dict, labels: torch.Tensor) -> None:
        """Raise if a label cannot be scored causally in this batch: the position that predicts it would see it.

        Every family's attention is causal over text, so nothing to check here; PaliGemma's prefix is not.
        """

    @property
    def video_token_id(self) -> int | None:
        """The config's video placeholder token id, or None if the family has none."""
        for key in ("video_token_id", "video_token_index"):
            token_id = getattr(self.config, key, None)
            if token_id is not None:
                return int(token_id)
        return None

    def check_no_video(self, inputs: dict) -> None:
        """Raise a ValueError naming the video input if the batch carries a video: a video input (`VIDEO_KEYS`) or
        video tokens (`config.video_token_id`) in `input_ids`.

        Videos are not supported: no condition drops or masks them, so a video would take part in both passes (or,
        where only the image inputs are passed on, in neither), and every delta would ignore it, silently.
        """
        for key in VIDEO_KEYS:
            if inputs.get(key) is not None:
                raise ValueError(
                    f"the batch carries the video input `{key}`: videos are not supported by vcontrast (only "
                    "images); process images only, without `videos=`"
                )
        token_id = self.video_token_id
        if token_id is not None and bool((inputs["input_ids"] == token_id).any()):
            raise ValueError(
                f"the batch has video tokens (`video_token_id` {token_id}) in `input_ids`: videos are not supported "
                "by vcontrast (only images); process images only, without `videos=`"
            )

    def check_processor(self, processor) -> None:
        """Raise ValueError if `processor` was not made for this model: its image token or vocabulary differ.

        A processor of another family (or another checkpoint) otherwise fails deep inside the forward pass, with
        errors such as "not enough values to unpack" or mismatched tensor sizes.
        """
        from vcontrast._compat import processor_image_token_ids

        tokenizer = getattr(processor, "tokenizer", None)
        ids = processor_image_token_ids(processor)
        if not ids and getattr(processor, "image_token", None) is not None and tokenizer is not None:
            ids = [int(tokenizer.convert_tokens_to_ids(processor.image_token))]
        model_name = f"{type(self.model).__name__} ({self.config.model_type})"
        if ids and self.image_token_id not in ids:
            raise ValueError(
                f"processor {type(processor).__name__} does not match model {model_name}: its image token ids are "
                f"{ids}, the model's config says {self.image_token_id}; load both from the same checkpoint folder"
            )
        vocab_size = getattr(self.config.get_text_config(), "vocab_size", None)
        if tokenizer is not None and isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
            raise ValueError(
                f"processor {type(processor).__name__} does not match model {model_name}: its tokenizer has "
                f"{len(tokenizer)} tokens, the model's vocabulary {vocab_size}; load both from the same checkpoint "
                "folder"
            )

    def output_head(self) -> tuple[nn.Module, float | None]:
        """(the language-model head module, final logit soft-cap or None).

        The module, not its weight: calling it applies whatever wraps the projection (a PEFT LoRA layer, a quantised
        linear layer); inside the model's own forward its parameters are gathered even when sharded (FSDP).
        """
        head = self.model.get_output_embeddings()
        softcap = getattr(self.config.get_text_config(), "final_logit_softcapping", None)
        return head, softcap

    @property
    def vocab_size(self) -> int:
        """Rows of the output head (its `out_features`, which stay right when the weight is a shard)."""
        head = self.output_head()[0]
        size = getattr(head, "out_features", None)
        return int(size) if size is not None else int(head.weight.shape[0])


def forward_model(model: nn.Module) -> nn.Module:
    """What to call for a forward of `model`: `model` without the wrappers that only replicate or adapt it.

    DDP / `DataParallel` (full replicas: calling the inner module skips their gradient bookkeeping, which a no-grad
    pass does not need) and PEFT (its adapter layers live inside the base model's modules) are peeled off. Anything
    else is kept, in particular FSDP, whose forward hooks gather the sharded parameters.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a DDP-, accelerate- or PEFT-wrapped one."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model
