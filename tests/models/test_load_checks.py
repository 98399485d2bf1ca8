"""API checks around loading: devices, quiet loading, mismatched processors, over-long inputs, label types."""

import pytest
import torch

from tests import tiny_models as tm
from vcontrast.models import get_adapter
from vcontrast.models.loading import check_device, check_text_length, load_model


def test_check_device():
    assert check_device(None) is None
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device 'banana' is not a torch device; use 'cpu'"):
        check_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:0': this torch build has no usable CUDA GPU"):
            check_device("cuda:0")


def test_small_models_load_without_progress_bars(capsys, tmp_path):
    from transformers.utils import logging as hf_logging

    model, processor = tm.build("llava")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    capsys.readouterr()
    load_model(None)
    load_model(tmp_path)
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # switched off for the load only


@pytest.mark.parametrize(("model_family", "processor_family"), [("llava", "qwen2_vl"), ("qwen2_vl", "llava")])
def test_crg_refuses_a_processor_of_another_family(model_family, processor_family):
    from vcontrast.crg import CRG

    model, _ = tm.build(model_family)
    _, processor = tm.build(processor_family)
    with pytest.raises(ValueError, match=r"does not match model .*load both from the same checkpoint folder"):
        CRG(model, processor)


def test_matching_processor_passes():
    for family in tm.FAMILIES:  # every family the tiny builders cover
        model, processor = tm.build(family)
        get_adapter(model).check_processor(processor)


def test_over_long_input_names_the_limit():
    from vcontrast.crg import CRG

    model, processor = tm.build("llava")
    limit = model.config.text_config.max_position_embeddings
    crg = CRG(model, processor)
    with pytest.raises(ValueError, match=f"more than the model's limit of {limit}"):
        crg.generate(tm.image(0), " ".join(["red"] * limit), regions=[(2, 2, 12, 10)], max_new_tokens=2)
    with pytest.raises(ValueError, match=f"more than the model's limit of {limit}"):
        crg.score(tm.image(0), " ".join(["red"] * limit), ["a"], regions=[(2, 2, 12, 10)])
    # a prompt that fits, with more new tokens than the positions left: refused before generating
    prompt = crg.prepare([tm.image(0)], ["what is red ?"], [[(2, 2, 12, 10)]]).reference
    length = int(prompt["attention_mask"].sum())
    answer = crg.generate(tm.image(0), "what is red ?", regions=[(2, 2, 12, 10)], max_new_tokens=limit - length)
    assert isinstance(answer, str)
    with pytest.raises(ValueError, match=f"plus max_new_tokens={limit - length + 1} is more than the model's limit"):
        crg.generate(tm.image(0), "what is red ?", regions=[(2, 2, 12, 10)], max_new_tokens=limit - length + 1)
    check_text_length(model, prompt["input_ids"], prompt["attention_mask"], new_tokens=limit - length)
    ids = torch.zeros(2, limit + 1, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[:, :2] = 0  # left padding: the real length is what counts
    check_text_length(model, ids, mask)
    with pytest.raises(ValueError, match=f"an input has {limit + 1} tokens"):
        check_text_length(model, ids)


def test_cal_weights_refuses_float_or_list_labels():
    from vcontrast.cal import cal_weights

    model, processor = tm.build("llava")
    batch = dict(
        processor(images=[tm.image(0)], text=[tm.chat(processor, "what is it ?") + " red"], return_tensors="pt")
    )
    labels = batch["input_ids"].clone()
    labels[:, :-1] = -100
    with pytest.raises(TypeError, match="integer token ids .* got dtype torch.float32; use labels.long()"):
        cal_weights(model, {**batch, "labels": labels.float()})
    with pytest.raises(TypeError, match="torch.Tensor of token ids .* got list; use torch.tensor"):
        cal_weights(model, {**batch, "labels": labels.tolist()})
    with pytest.raises(ValueError, match="labels shape"):
        cal_weights(model, {**batch, "labels": labels[:, 1:]})
    assert cal_weights(model, {**batch, "labels": labels}).shape == labels.shape
