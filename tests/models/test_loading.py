"""The real loading code (`from_pretrained` on a local folder) on tiny models we save ourselves."""

import copy

import pytest
import torch

from tests import tiny_models as tm
from tests.models.test_contrast import make_batch
from vcontrast.contrast import gold_token_logits
from vcontrast.models.loading import load_model


# Left out: families whose processors cannot be saved and loaded without torchvision, which has no CPU wheel here
# (checked): Qwen2/2.5/3-VL, SmolVLM, LLaVA-OneVision, InternVL and Gemma 4 (their in-process processors have no
# video processor, so `save_pretrained` fails) and Mistral 3 (`AutoProcessor` imports Pixtral's torchvision module).
@pytest.mark.parametrize("family", ["llava", "llava_next", "vipllava", "idefics3", "paligemma", "gemma3"])
@torch.no_grad()
def test_save_and_load_round_trip(family, tmp_path):
    model, proc, batch, labels = make_batch(family)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded, loaded_proc = load_model(tmp_path, image_backend="pil")  # the in-memory processors are PIL ones
    assert type(loaded) is type(model) and not loaded.training
    texts = get_texts(proc, family)
    again = dict(loaded_proc(images=get_images(loaded, family), **texts, return_tensors="pt", padding=True))
    again.pop("labels", None)
    torch.testing.assert_close(again["input_ids"], batch["input_ids"])
    torch.testing.assert_close(
        gold_token_logits(loaded, again, labels).logits, gold_token_logits(model, batch, labels).logits
    )


def get_texts(proc, family):
    # The processor's text arguments of `make_batch`'s batch (PaliGemma's answers go in `suffix=`).
    from tests.models.test_contrast import ANSWERS, PROMPTS

    if family == "paligemma":
        return {"text": [tm.chat(proc, p) for p in PROMPTS], "suffix": list(ANSWERS)}
    return {"text": [tm.chat(proc, p) + " " + a for p, a in zip(PROMPTS, ANSWERS, strict=True)]}


def get_images(model, family):
    from vcontrast.models import get_adapter

    return get_adapter(model).batch_images([tm.image(0), tm.image(1)])


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_dtype_applies_to_the_toy_model(monkeypatch):
    # The shipped toy model is what `path=None` loads; a tiny LLaVA stands in for it here.
    import vcontrast.toy

    model, proc = tm.build("llava")
    model = copy.deepcopy(model)  # the builder's model is cached
    monkeypatch.setattr(vcontrast.toy, "load", lambda device=None, image_backend=None: (model, proc))
    loaded, _ = load_model(None, dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="`dtype` \\(='half-ish'\\)"):
        load_model(None, dtype="half-ish")


@pytest.mark.parametrize(
    ("family", "expected"),
    [("llava", "family: llava (LlavaAdapter), tested"), ("mistral3", "family: mistral3 (Mistral3Adapter), tested")],
)
def test_info_names_the_family_of_a_saved_model(family, expected, tmp_path, capsys):
    from vcontrast.cli import main

    tm.build(family)[0].config.save_pretrained(tmp_path)  # the config is all `info` reads
    with pytest.raises(SystemExit) as exc:
        main(["info", "--model", str(tmp_path)])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert expected in out and f"model type '{family}'" in out


def test_info_says_generic_and_untested_or_refused(tmp_path, monkeypatch, capsys):
    from vcontrast import models
    from vcontrast.cli import main

    monkeypatch.setattr(
        models, "ADAPTERS", {k: v for k, v in models.ADAPTERS.items() if k not in ("llava", "qwen2_vl")}
    )
    for family, expected in (("llava", "untested: the generic adapter"), ("qwen2_vl", "not supported: Qwen2VL")):
        folder = tmp_path / family
        tm.build(family)[0].config.save_pretrained(folder)
        with pytest.raises(SystemExit):
            main(["info", "--model", str(folder)])
        assert expected in capsys.readouterr().out


def test_model_support_refuses_what_is_not_an_image_text_to_text_model(tmp_path):
    import transformers as tf

    from vcontrast.models.loading import model_support

    with pytest.raises(ValueError, match="does not exist"):
        model_support(tmp_path / "nope")
    tf.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"not an image-text-to-text model \('gpt2'\)"):
        model_support(tmp_path)
