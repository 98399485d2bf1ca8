"""LLaVA-style data: reading and validation, and the chat-template collator's labels (single and multi-turn)."""

import json
import types

import pytest
import torch
from PIL import Image

from tests import tiny_models as tm
from tests.cal.conversations import RECORDS, toy_processor, write_data
from vcontrast.cal.data import ConversationCollator, read_conversations


def labelled(processor, batch, row):
    ids = batch["input_ids"][row][batch["labels"][row] != -100]
    return processor.tokenizer.decode(ids)


def test_read_jsonl_resolves_images_and_builds_messages(tmp_path):
    examples = read_conversations(write_data(tmp_path))
    assert [e["id"] for e in examples] == ["a", "b", "c", "d", "e"]
    assert [e["index"] for e in examples] == [0, 1, 2, 3, 4]
    assert examples[0]["image"] == str(tmp_path / "images" / "red.png")
    first = examples[0]["messages"]
    assert first == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    # The marker moves to the front of the first turn (as LLaVA's preprocessing does), or is added there.
    for example in examples[1:3]:
        assert example["messages"][0]["content"][0] == {"type": "image"}
        assert "<image>" not in json.dumps(example["messages"])
    assert [m["role"] for m in examples[1]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert examples[1]["messages"][2]["content"] == [{"type": "text", "text": "what shape is it ?"}]
    assert examples[3]["image"] is None and examples[3]["messages"][0]["content"] == [
        {"type": "text", "text": "what is red ?"}
    ]


def test_read_json_array_and_image_folder(tmp_path):
    write_data(tmp_path)
    data = tmp_path / "sub" / "data.json"
    data.parent.mkdir()
    data.write_text(json.dumps(RECORDS, indent=1))
    examples = read_conversations(data, image_folder=tmp_path)
    assert examples == read_conversations(tmp_path / "data.jsonl")
    with pytest.raises(ValueError, match="images/red.png' not found"):
        read_conversations(data)  # relative to the file's own folder by default


def test_repeated_ids_are_made_unique(tmp_path):
    path = write_data(tmp_path, [RECORDS[0], RECORDS[0], {k: v for k, v in RECORDS[3].items() if k != "id"}])
    assert [e["id"] for e in read_conversations(path)] == ["a", "a#2", "2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "conversations": [', r"data.jsonl:2: not valid JSON"),
        ("[1, 2]", r"data.jsonl:2: a record has to be a JSON object"),
        ('{"id": "x"}', r"data.jsonl:2: the record has no `conversations`"),
        ('{"id": "x", "image": "images/nope.png", "conversations": []}', r"data.jsonl:2: image file .*nope.png"),
        ('{"conversations": [{"from": "human", "value": "hi"}]}', r"data.jsonl:2: no assistant \('gpt'\) turn"),
        ('{"conversations": [{"from": "gpt", "value": "hi"}]}', r"turn 0 is an assistant \('gpt'\) turn"),
        ('{"conversations": [{"from": "bot", "value": "hi"}]}', r"unknown speaker `from` \(='bot'\)"),
        ('{"conversations": [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "x"}]}', "no image"),
        ('{"image": [], "conversations": []}', r"`image` \(=\[\]\) has to be a path or a non-empty list"),
        ('{"image": ["images/red.png", 3], "conversations": []}', r"has to be a path or a non-empty list of paths"),
        ('{"conversations": [{"from": "human", "value": 3}]}', r"turn 0 \(=.*\) has to be an object with a text"),
    ],
)
def test_malformed_records_name_the_line(tmp_path, line, message):
    path = write_data(tmp_path, [RECORDS[0]])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_conversations(path)


def test_missing_files_raise(tmp_path):
    with pytest.raises(ValueError, match="no data file at"):
        read_conversations(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        read_conversations(tmp_path / "empty.jsonl")


def test_single_turn_batches_equal_the_toy_collate():
    from vcontrast.toy.train import collate

    proc = toy_processor()
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    examples = [
        {"image": image, "prompt": "what color is the circle ?", "answer": "red"},
        {"image": image, "prompt": "describe the image .", "answer": "a red circle on the left"},
    ]
    expected, batch = collate(proc, examples), ConversationCollator(proc)(examples)
    assert set(batch) == set(expected)
    for key in expected:
        torch.testing.assert_close(batch[key], expected[key])


def test_multi_turn_labels_every_assistant_turn_on_the_toy_processor(tmp_path):
    proc = toy_processor()
    examples = read_conversations(write_data(tmp_path))
    for side in ("right", "left"):
        batch = ConversationCollator(proc, padding_side=side)(examples)
        assert [labelled(proc, batch, b) for b in range(len(examples))] == [
            "red </s>",
            "blue </s> a square </s>",
            "a green circle on the left </s>",
            "a color </s>",
            "a small red square </s>",
        ]
        image_tokens = (batch["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<image>")).sum(-1)
        assert image_tokens.tolist() == [64, 64, 64, 0, 64]  # the text-only record has no image
        assert not ((batch["attention_mask"] == 0) & (batch["labels"] != -100)).any()


@pytest.mark.parametrize(
    ("family", "turns", "decoded"),
    [
        # The template closes a turn with a special token: labelled as it is (not the newline after it).
        ("qwen2_vl", ["blue<|im_end|>", "a square<|im_end|>"], "blue<|im_end|>a square<|im_end|>"),
        # No special token in the template's turn: eos is added; the space after the turn (where SentencePiece's
        # `▁USER:` starts) stays unlabelled.
        ("llava", ["blue</s>", "a square</s>"], "blue</s> a square</s>"),
    ],
)
def test_multi_turn_labels_with_other_chat_templates(tmp_path, family, turns, decoded):
    _, proc = tm.build(family)
    example = read_conversations(write_data(tmp_path))[1]
    example["image"] = tm.image(0)
    text, spans = ConversationCollator(proc).render(example["messages"])
    assert [text[s:e].strip() for s, e in spans] == turns
    batch = ConversationCollator(proc)([example, dict(example, id="z")])
    assert labelled(proc, batch, 0) == labelled(proc, batch, 1) == decoded


def _two_turns(sid, images, turns):
    messages = []
    for k, (question, answer) in enumerate(turns):
        content = [{"type": "image"}] * (len(images) if k == 0 else 0) + [{"type": "text", "text": question}]
        reply = [{"type": "text", "text": answer}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]
    return {"id": sid, "messages": messages, **({"images": images} if images else {})}


@pytest.mark.parametrize("family", [f for f in tm.FAMILIES if f != "paligemma"])  # the collator refuses PaliGemma
def test_batches_mixing_image_and_text_only_records_collate_on_every_family(family):
    # SmolVLM's, Gemma 3's and Gemma 4's processors refuse a flat image list for such a batch: it is passed nested.
    _, proc = tm.build(family)
    with_image = _two_turns("a", [tm.image(0)], [("what is it ?", "a red cat"), ("and the colour ?", "red")])
    text_only = _two_turns("b", [], [("say hi", "hi there"), ("again", "hello")])
    two_images = _two_turns("c", [tm.image(1), tm.image(2)], [("which is left ?", "the dog")])
    collate = ConversationCollator(proc)
    alone = {}
    for example in (with_image, text_only, two_images):
        batch = collate([example])
        alone[example["id"]] = batch["labels"][0][batch["attention_mask"][0].bool()]
    for order in ([with_image, text_only], [text_only, with_image], [with_image, with_image], [text_only, two_images]):
        batch = collate(order)
        for row, example in enumerate(order):
            labels = batch["labels"][row][batch["attention_mask"][row].bool()]
            assert torch.equal(labels, alone[example["id"]]), (family, [e["id"] for e in order], row)


def test_contrast_pixels_for_image_space_conditions(tmp_path):
    from vcontrast.conditions import PatchMask

    examples = read_conversations(write_data(tmp_path))[:2]
    batch = ConversationCollator(toy_processor(), contrast=PatchMask(0.5))(examples)
    assert batch["contrast_pixel_values"].shape == batch["pixel_values"].shape
    assert not torch.equal(batch["contrast_pixel_values"], batch["pixel_values"])
    again = ConversationCollator(toy_processor(), contrast=PatchMask(0.5))(examples)
    torch.testing.assert_close(again["contrast_pixel_values"], batch["contrast_pixel_values"])  # keyed by index


def test_collator_errors(tmp_path):
    proc = toy_processor()
    examples = read_conversations(write_data(tmp_path))
    with pytest.raises(ValueError, match=r"sample 'a': no assistant token left within `max_length` \(=70\)"):
        ConversationCollator(proc, max_length=70)(examples[:1])  # the answer starts at token 73
    batch = ConversationCollator(proc, max_length=76)(examples[:2])
    assert batch["input_ids"].shape[1] == 76 and labelled(proc, batch, 0) == "red </s>"
    with pytest.raises(ValueError, match=r"cuts into the image tokens"):
        ConversationCollator(proc, max_length=40)(examples[:1])
    (tmp_path / "images" / "red.png").unlink()
    with pytest.raises(ValueError, match=r"image file .*red.png' not found"):
        ConversationCollator(proc)(examples[:1])
    with pytest.raises(ValueError, match=r"`padding_side` \(='middle'\)"):
        ConversationCollator(proc, padding_side="middle")
    with pytest.raises(ValueError, match=r"`max_length` \(=0\)"):
        ConversationCollator(proc, max_length=0)
    with pytest.raises(ValueError, match="has neither `messages` nor `prompt`"):
        ConversationCollator(proc)([{"id": "q", "image": None}])
    with pytest.raises(ValueError, match="no chat template"):
        ConversationCollator(types.SimpleNamespace(chat_template=None, tokenizer=proc.tokenizer))
    # PaliGemma's answer has to be the processor's suffix (a chat-rendered one lands in its bidirectional prefix).
    with pytest.raises(ValueError, match="does not support PaliGemma .*suffix="):
        ConversationCollator(tm.build("paligemma")[1])
