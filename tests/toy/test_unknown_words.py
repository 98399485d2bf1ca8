"""The toy model's tokenizer warns once, listing them, when a prompt has words outside its vocabulary."""

import logging

import pytest

import vcontrast.toy
from vcontrast.toy import tokenizer as toy_tokenizer
from vcontrast.toy.tokenizer import chat_prompt, unknown_words


@pytest.fixture(scope="module")
def processor():
    return vcontrast.toy.load()[1]


def test_unknown_words_are_listed_in_order(processor):
    assert unknown_words(processor.tokenizer, "What colour is the Zebra? zebra, and the circle") == ["colour", "Zebra"]
    assert unknown_words(processor.tokenizer, "what color is the circle ?") == []


def test_warns_once_per_word_through_the_processor(processor, caplog, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(toy_tokenizer._WarnsUnknownWords, "_warned_words", set())
    image = Image.new("RGB", (64, 64))
    with caplog.at_level(logging.WARNING, logger="vcontrast.toy.tokenizer"):
        processor(images=[image], text=[chat_prompt(processor, "what color is the circle ?")])
        assert caplog.records == []  # known words: nothing to say
        processor(images=[image], text=[chat_prompt(processor, "Is the zebra left of the gnu?")])
        processor(images=[image], text=[chat_prompt(processor, "is the zebra left of the circle ?")])  # already said
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "'zebra', 'gnu'" in messages[0] and "<unk>" in messages[0]


def test_saved_processor_files_are_unchanged(processor, tmp_path):
    import json

    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    shipped = json.loads((vcontrast.toy.model.WEIGHTS_DIR / "tokenizer_config.json").read_text())
    assert config.get("tokenizer_class") == shipped.get("tokenizer_class")


def test_processor_still_pickles(processor):
    import pickle

    again = pickle.loads(pickle.dumps(processor))
    assert (
        again.tokenizer("what color is the circle ?")["input_ids"]
        == processor.tokenizer("what color is the circle ?")["input_ids"]
    )
