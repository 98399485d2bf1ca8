"""InternVL (2.5 / 3 / 3.5 `-hf` checkpoints): tiles of 448-px crops plus a thumbnail, `<IMG_CONTEXT>` tokens, 1-D
positions of a Qwen2 (or Llama) language model."""

from vcontrast.models.base import ModelAdapter


class InternVLAdapter(ModelAdapter):
    """InternVL (`internvl`): `pixel_values` (total tiles, 3, H, W) over the batch, one `<IMG_CONTEXT>` run per image
    between `<img>` and `</img>`. The no-image condition drops the `<IMG_CONTEXT>` tokens (what the vision features
    replace); the `<img>`/`</img>` markers stay as text, as Idefics3's markers do.

    Beam search with images cropped into several tiles is wrong in transformers itself: `generate` repeats the rows
    of `pixel_values` (tiles, not images) for the beams, so the beams of every image after the first get other
    images' tiles. Greedy decoding, sampling and scoring are unaffected; for beam search, process images with
    `crop_to_patches=False` (one tile each).
    """

    model_types = ("internvl",)
