"""InternVL (2.5 / 3 / 3.5 `-hf` checkpoints): tiles of 448-px crops plus a thumbnail, `<IMG_CONTEXT>` tokens, 1-D
positions of a Qwen2 (or Llama) language model."""

from vcontrast.models.base import ModelAdapter


class InternVLAdapter(ModelAdapter):
    """InternVL (`internvl`): `pixel_values` (total tiles, 3, H, W) over the batch, one `<IMG_CONTEXT>` run per image
    between `<img>` and `</img>`. The no-image condition drops the `<IMG_CONTEXT>` tokens (what the vision features
    replace); the `<img>`/`</img>` markers stay as text, as Idefics3's markers do. Images cropped into several tiles
    give `pixel_values` more rows than the batch has samples; every path passes them whole."""

    model_types = ("internvl",)
