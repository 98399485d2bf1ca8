"""The toy VLM: transformers' own LLaVA classes (CLIP vision tower, 2-layer MLP projector, Llama LM), ~1.5M parameters.

`load()` returns the shipped, trained `(model, processor)` through `from_pretrained`, offline. `toy_config` and
`build_model` make a fresh, randomly initialised one (what `vcontrast.toy.train` starts from and what tests use).

Shapes, with the defaults (64 x 64 images, patch 8, vision hidden 96, LM hidden 128):

    pixel_values (B, 3, 64, 64) -> CLIP patches (B, 1 + 64, 96) -> drop CLS ("default") -> projector (B, 64, 128)
    -> into the 64 `<image>` placeholder positions of input_ids (B, T) -> Llama (B, T, 128) -> logits (B, T, V)
"""

from __future__ import annotations

import logging
from pathlib import Path

from vcontrast.toy.tokenizer import BOS, EOS, IMAGE, IMAGE_SIZE, PAD, PATCH_SIZE, SPECIAL_TOKENS, warn_unknown_words

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
# The image backend toy models are trained with (`tokenizer.build_image_processor`: `CLIPImageProcessorPil`), so
# the one `load` gives by default, also where transformers would take torchvision: the torchvision processor's pixels
# differ by up to one grey level on toy images, and the published numbers would not reproduce.
IMAGE_BACKEND = "pil"


def toy_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    vision_hidden_size: int = 96,
    vision_layers: int = 3,
    vision_heads: int = 4,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    max_position_embeddings: int = 256,
):
    """The `LlavaConfig` of the toy VLM.

    Args:
        vocab_size (`int`): size of the toy tokenizer (`len(processor.tokenizer)`).
        hidden_size (`int`, *optional*, defaults to 128): Llama hidden size (MLP 4x).
        num_layers (`int`, *optional*, defaults to 4): Llama decoder layers.
        num_heads (`int`, *optional*, defaults to 4): Llama attention heads (no GQA).
        vision_hidden_size (`int`, *optional*, defaults to 96): CLIP vision hidden size (MLP 4x).
        vision_layers (`int`, *optional*, defaults to 3): CLIP encoder layers.
        vision_heads (`int`, *optional*, defaults to 4): CLIP attention heads.
        image_size (`int`, *optional*, defaults to `IMAGE_SIZE`): square input size; must match the processor.
        patch_size (`int`, *optional*, defaults to `PATCH_SIZE`): CLIP patch size; must match the processor.
        max_position_embeddings (`int`, *optional*, defaults to 256): longest sequence (64 image tokens + text).

    Returns:
        `LlavaConfig`: special token ids follow `SPECIAL_TOKENS` (pad 0, bos 2, eos 3, image 4); word embeddings are
        tied to the LM head, which keeps the shipped weights small.

    Examples:

    ```python
    >>> config = toy_config(vocab_size=100)
    >>> config.image_seq_length
    64
    ```
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    for name, value in [
        ("vocab_size", vocab_size),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("vision_hidden_size", vision_hidden_size),
        ("vision_layers", vision_layers),
    ]:
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` (={value!r}) must be a positive int")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` (={vocab_size}) must exceed the {len(SPECIAL_TOKENS)} special tokens")
    if hidden_size % num_heads or vision_hidden_size % vision_heads:
        raise ValueError(
            f"`hidden_size` (={hidden_size}) / `vision_hidden_size` (={vision_hidden_size}) must be divisible by "
            f"`num_heads` (={num_heads}) / `vision_heads` (={vision_heads})"
        )
    if patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"`patch_size` (={patch_size}) must be positive and divide `image_size` (={image_size})")
    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=4 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=ids[PAD],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[IMAGE],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=True,
    )


def build_model(processor, **config_kwargs):
    """A fresh, randomly initialised toy `LlavaForConditionalGeneration` matching `processor`.

    Args:
        processor (`LlavaProcessor`): the toy processor (see `vcontrast.toy.tokenizer.build_processor`); sets the
            vocabulary size, image size and patch size.
        **config_kwargs: forwarded to `toy_config` (e.g. `hidden_size=32` for tests).

    Returns:
        `LlavaForConditionalGeneration`: in train mode, with a generation config that stops at `</s>` and pads
        with `<pad>`.
    """
    from transformers import LlavaForConditionalGeneration

    size = processor.image_processor.size["height"]
    config_kwargs.setdefault("image_size", size)
    config_kwargs.setdefault("patch_size", processor.patch_size)
    config = toy_config(len(processor.tokenizer), **config_kwargs)
    model = LlavaForConditionalGeneration(config)
    tok = processor.tokenizer
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def load(path: str | Path | None = None, *, device: str | None = None, image_backend: str | None = None):
    """Load the toy VLM and its processor through `from_pretrained`, offline.

    Args:
        path (`str | Path`, *optional*): a folder written by `save_pretrained` (a training run's output); defaults to
            the weights shipped inside the package (`WEIGHTS_DIR`).
        device (`str`, *optional*): where to put the model (e.g. "cuda"); defaults to CPU.
        image_backend (`str`, *optional*): the image processor's backend, "pil" or "torchvision" (`load_processor`);
            defaults to `IMAGE_BACKEND` ("pil"), the one toy models are trained with.

    Returns:
        `tuple[LlavaForConditionalGeneration, LlavaProcessor]`: the model in eval mode, and its processor.

    Examples:

    ```python
    >>> model, processor = vcontrast.toy.load()
    >>> inputs = processor(images=image, text=chat_prompt(processor, "what color is the circle?"), return_tensors="pt")
    >>> processor.decode(model.generate(**inputs, max_new_tokens=5)[0, inputs["input_ids"].shape[1]:],
    ...                  skip_special_tokens=True)
    'red'
    ```
    """
    from transformers import LlavaForConditionalGeneration

    folder = Path(path) if path is not None else WEIGHTS_DIR
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        hint = " Train one with `vcontrast toy train`." if path is None else ""
        raise FileNotFoundError(f"no toy model in {folder} (missing {', '.join(missing)}).{hint}")
    from vcontrast.models.loading import load_processor, quiet_progress

    with quiet_progress():  # a "Loading weights" bar for a 1 MB model is noise
        model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    processor = load_processor(folder, image_backend=image_backend or IMAGE_BACKEND, local_files_only=True)
    warn_unknown_words(processor.tokenizer)
    if device is not None:
        model = model.to(device)
    return model.eval(), processor
