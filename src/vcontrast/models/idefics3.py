"""Idefics3 and SmolVLM: 5-D `pixel_values` with a `pixel_attention_mask`; Llama-style text model."""

from vcontrast.models.base import ModelAdapter


class Idefics3Adapter(ModelAdapter):
    """Idefics3 / SmolVLM (`idefics3`, `smolvlm`). An all-zero image counts as padding to these models, which is why
    contrast images are blacked out in raw pixels before normalisation, never zeroed in `pixel_values`."""

    model_types = ("idefics3", "smolvlm")
    pixel_keys = ("pixel_values", "pixel_attention_mask")

    def batch_images(self, images: list) -> list:
        # The processor reads a flat list as several images of one sample; one list per sample is unambiguous.
        return [[image] for image in images]
