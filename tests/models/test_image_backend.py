"""The image-processing backend (PIL or torchvision): asking for one when loading, reading it off a processor, and the
clear errors where it cannot be had. Tests that need torchvision run only where it is installed (not in CI)."""

import pytest
import transformers.utils

from tests import tiny_models as tm
from vcontrast.models.image_backend import check_image_backend, image_backend_of
from vcontrast.models.loading import load_model, load_processor

HAS_TORCHVISION = transformers.utils.is_torchvision_available()
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")


def test_check_image_backend():
    assert check_image_backend(None) is None and check_image_backend("pil") == "pil"
    with pytest.raises(ValueError, match="image backend 'opencv' is not one of 'pil', 'torchvision'"):
        check_image_backend("opencv")


def test_torchvision_is_refused_where_it_is_not_installed(monkeypatch, tmp_path):
    # transformers itself would fall back to PIL with a warning, and the numbers would silently be PIL's
    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: False)
    with pytest.raises(ValueError, match="needs torchvision, which is not installed here; install it, or use 'pil'"):
        check_image_backend("torchvision")
    with pytest.raises(ValueError, match="needs torchvision"):
        load_model(tm.save_checkpoint(tmp_path), image_backend="torchvision")


def test_image_backend_of():
    _, processor = tm.build("llava")
    assert image_backend_of(processor) == "pil" and image_backend_of(processor.image_processor) == "pil"
    assert image_backend_of(processor.tokenizer) is None  # no image processor


def test_load_model_with_the_pil_backend(tmp_path):
    folder = tm.save_checkpoint(tmp_path)
    _, processor = load_model(folder, image_backend="pil")
    assert image_backend_of(processor) == "pil"
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    with pytest.raises(ValueError, match="image backend 'fast' is not one of"):
        load_model(folder, image_backend="fast")


def test_the_toy_model_loads_the_backend_it_was_trained_with():
    _, processor = load_model()
    assert image_backend_of(processor) == "pil"  # also where torchvision is installed


@pytest.mark.skipif(HAS_TORCHVISION, reason="needs a machine without torchvision")
def test_a_backend_the_processor_falls_back_from_is_refused(monkeypatch, tmp_path):
    # With the installed check passed, transformers gives the PIL class for "torchvision": caught, not used.
    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: True)
    with pytest.raises(ValueError, match="the image processor has no 'torchvision' backend .*CLIPImageProcessorPil"):
        load_processor(tm.save_checkpoint(tmp_path), image_backend="torchvision")


@needs_torchvision
def test_both_backends_where_torchvision_is_installed(tmp_path):
    folder = tm.save_checkpoint(tmp_path)
    assert image_backend_of(load_processor(folder)) == "torchvision"  # transformers' default
    assert image_backend_of(load_processor(folder, image_backend="torchvision")) == "torchvision"
    assert image_backend_of(load_model(image_backend="torchvision")[1]) == "torchvision"  # the toy model, on request
    _, processor = load_model(folder, image_backend="pil")
    _, in_memory = tm.build("llava")
    for seed in (0, 1):
        got = processor.image_processor(tm.image(seed), return_tensors="pt")["pixel_values"]
        expected = in_memory.image_processor(tm.image(seed), return_tensors="pt")["pixel_values"]
        assert got.equal(expected)
