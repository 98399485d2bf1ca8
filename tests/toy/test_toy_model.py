"""The toy VLM: tokenizer, processor, model config, collator, training loop and the shipped weights."""

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from vcontrast.toy import train as toy_train
from vcontrast.toy.grammar import PROMPTS, vocabulary, words
from vcontrast.toy.model import WEIGHTS_DIR, build_model, load, toy_config
from vcontrast.toy.scenes import COLORS, SHAPES, make_scene
from vcontrast.toy.tokenizer import NUM_IMAGE_TOKENS, ROLE_TOKENS, SPECIAL_TOKENS, build_tokenizer, chat_prompt

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "vision_hidden_size": 32, "vision_layers": 2}
TRAIN_KW = {"batch_size": 4, "lr": 3e-3, "seed": 0, "stage": "it", "log_every": 1, "warmup": 1, "model_kwargs": TINY}


@pytest.fixture(scope="module")
def processor():
    return toy_train.toy_processor()


@pytest.fixture
def tiny_model(processor):
    return build_model(processor, **TINY).eval()


def _examples(seeds, stage="it"):
    return toy_train.task_examples(seeds, stage=stage, rng=random.Random(0))


# ---------------------------------------------------------------- tokenizer and processor


def test_every_vocabulary_word_is_one_token_and_text_round_trips():
    vocab = vocabulary()
    tok = build_tokenizer(vocab)
    assert tok.convert_ids_to_tokens(list(range(7))) == SPECIAL_TOKENS + ROLE_TOKENS
    for w in vocab + ROLE_TOKENS:
        assert tok.convert_ids_to_tokens(tok(w, add_special_tokens=False)["input_ids"]) == [w], w
    text = "a small red circle at the top left , the word cat in the middle and a large blue square on the right ."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids[1:]) == words(text)
    assert tok.decode(ids, skip_special_tokens=True) == text  # toy text decodes back to itself
    # the tokenizer splits and lower-cases like `words`, so free-form text reaches the same tokens
    free = "What color is the CIRCLE? 42"
    assert tok(free)["input_ids"] == tok(" ".join(words(free)))["input_ids"]
    assert tok("a zebra")["input_ids"][-1] == tok.unk_token_id


@pytest.mark.parametrize("bad", ["", "two words", None])
def test_tokenizer_rejects_bad_words(bad):
    with pytest.raises(ValueError, match="vocabulary word"):
        build_tokenizer(["red", bad])


def test_chat_template(processor):
    assert chat_prompt(processor, "what color is it ?") == "USER: <image>\nwhat color is it ? ASSISTANT:"
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    assert processor.apply_chat_template(messages, tokenize=False) == "USER: <image>\nwhat color ? ASSISTANT: red</s>"


def test_black_image_gives_same_input_ids(processor):
    prompt = chat_prompt(processor, "what color is the square ?")
    a = processor(images=Image.new("RGB", (80, 80), (220, 40, 40)), text=prompt, return_tensors="pt")
    b = processor(images=Image.new("RGB", (80, 80)), text=prompt, return_tensors="pt")
    torch.testing.assert_close(a["input_ids"], b["input_ids"])
    assert a["pixel_values"].shape == (1, 3, 64, 64)
    assert torch.all(b["pixel_values"] == -1)


def test_image_token_count_matches_model_features(processor, tiny_model):
    inputs = processor(images=Image.new("RGB", (70, 70)), text=chat_prompt(processor, "a"), return_tensors="pt")
    n_tokens = int((inputs["input_ids"] == tiny_model.config.image_token_id).sum())
    feats = tiny_model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert n_tokens == NUM_IMAGE_TOKENS == feats[0].shape[0] == tiny_model.config.image_seq_length
    tiny_model(**inputs)  # LLaVA raises if the placeholders and the features disagree


def test_processor_save_load_round_trip(processor, tmp_path):
    from transformers import AutoProcessor

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    prompt = chat_prompt(loaded, "what color is the square ?")
    assert prompt == chat_prompt(processor, "what color is the square ?")
    img = Image.new("RGB", (90, 90), (40, 90, 230))
    a = processor(images=img, text=prompt, return_tensors="pt")
    b = loaded(images=img, text=prompt, return_tensors="pt")
    torch.testing.assert_close(a["input_ids"], b["input_ids"])
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"])


# ---------------------------------------------------------------- model


def test_toy_config_rejects_bad_values():
    with pytest.raises(ValueError, match="vocab_size"):
        toy_config(3)
    with pytest.raises(ValueError, match="patch_size"):
        toy_config(100, image_size=64, patch_size=7)
    with pytest.raises(ValueError, match="num_heads"):
        toy_config(100, hidden_size=30, num_heads=4)


def test_default_size_is_small(processor):
    model = build_model(processor)
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 2e6  # ~1.5M, so fp32 safetensors stay well under 10 MB
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_model_save_load_gives_identical_logits(processor, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, loaded_processor = load(tmp_path)
    assert not model.training
    batch = toy_train.collate(loaded_processor, _examples([1, 2]))
    batch.pop("labels")
    torch.testing.assert_close(model(**batch).logits, tiny_model(**batch).logits, rtol=0, atol=0)


def test_load_missing_weights_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no toy model"):
        load(tmp_path)


# ---------------------------------------------------------------- data and collator


def test_task_examples_cover_the_mix():
    examples = toy_train.task_examples(range(200), rng=random.Random(0))
    prompts = {ex["item"].task for ex in examples}
    assert prompts == {"caption", "vqa", "region_vqa", "choice", "match"}
    assert {ex["prompt"] for ex in examples} >= {PROMPTS["relations"], PROMPTS["region_caption"]}
    text_only = toy_train.task_examples(range(5), stage="lm")
    assert all(ex["image"] is None for ex in text_only) and all(ex["answer"] for ex in text_only)
    for ex in examples:
        assert set(words(ex["prompt"] + " " + ex["answer"])) <= set(vocabulary()), ex
    pt = toy_train.task_examples(range(3), stage="pt")
    assert [ex["prompt"] for ex in pt] == [PROMPTS["caption"]] * 3
    with pytest.raises(ValueError, match="mix"):
        toy_train.task_examples([0], mix={"vqa": 0.0})


def test_read_examples_from_task_jsonl(tmp_path):
    from vcontrast.toy.tasks import make_split

    path = make_split("spatial", 3, seed=0, split="train", out_dir=tmp_path)
    examples = toy_train.read_examples(path)
    assert len(examples) == 3 and all(ex["image"].mode == "RGB" for ex in examples)
    item = examples[0]["item"]
    assert examples[0]["answer"] == item.candidates[item.answer]


def test_collate_masks_prompt_image_and_padding(processor):
    img, _ = make_scene(0)
    examples = [
        {"image": img, "prompt": "what color is the square ?", "answer": "red"},
        {"image": img, "prompt": "what color ?", "answer": "a red square on the left ."},
    ]
    tok = processor.tokenizer
    for side in ("right", "left"):
        batch = toy_train.collate(processor, examples, padding_side=side)
        labels, ids = batch["labels"], batch["input_ids"]
        assert labels.shape == ids.shape and batch["pixel_values"].shape == (2, 3, 64, 64)
        kept = labels != -100
        assert not (kept & (ids == processor.image_token_id)).any()
        assert not (kept & (batch["attention_mask"] == 0)).any()
        torch.testing.assert_close(labels[kept], ids[kept])
        assert tok.convert_ids_to_tokens(ids[0][kept[0]]) == ["red", "</s>"]
        answer = ids[1][kept[1]]
        assert tok.decode(answer, skip_special_tokens=True) == "a red square on the left ."
        assert answer[-1] == tok.eos_token_id
        for row in range(2):  # everything up to and including "ASSISTANT:" is masked
            first = int(kept[row].nonzero()[0])
            assert tok.convert_ids_to_tokens(ids[row, first - 1 : first]) == ["ASSISTANT:"]
            assert int(kept[row].sum()) == int((ids[row, first:] != tok.pad_token_id).sum())


def test_text_only_batch_is_the_no_image_pass(processor, tiny_model):
    # A text-only batch must give the language model exactly what CAL's no-image pass gives it: same tokens, same
    # position ids (the image's placeholders skipped), so its gold logits equal NoImage's on the image batch.
    from vcontrast.conditions import NoImage
    from vcontrast.contrast import gold_token_logits

    img, _ = make_scene(1)
    examples = [
        {"image": img, "prompt": "what color is the square ?", "answer": "red"},
        {"image": img, "prompt": "describe the image .", "answer": "a red square on the left ."},
    ]
    for side in ("right", "left"):
        with_image = toy_train.collate(processor, examples, padding_side=side)
        text = toy_train.collate(processor, [ex | {"image": None} for ex in examples], padding_side=side)
        assert "pixel_values" not in text and text["input_ids"].shape[1] == with_image["input_ids"].shape[1] - 64
        with torch.no_grad():
            expected = gold_token_logits(tiny_model, with_image, with_image["labels"], NoImage()).logits
            logits = tiny_model(**{k: v for k, v in text.items() if k != "labels"}).logits  # (B, T, V)
        for row in range(2):
            keep = text["labels"][row] != -100
            gold = text["labels"][row][keep]
            got = logits[row, :-1][keep[1:]].gather(-1, gold[:, None]).squeeze(-1)
            want = expected[row][with_image["labels"][row] != -100]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="mixes"):
        toy_train.collate(processor, [examples[0], examples[1] | {"image": None}])


def test_it_data_follows_the_spatial_curriculum_and_replays_text():
    assert toy_train.curriculum_mix({"spatial": 1.0}, 0.0) == {"spatial_lr": 1.0}
    assert toy_train.curriculum_mix({"spatial": 1.0}, 0.2) == {"spatial_pair": 1.0}
    assert toy_train.curriculum_mix({"spatial": 1.0, "vqa": 1.0}, 0.99) == {"spatial": 1.0, "vqa": 1.0}
    fn = toy_train._data_fn(None, "it", 0, None, 100)
    replay = fn(toy_train.TEXT_REPLAY_EVERY - 1, 4)
    assert all(ex["image"] is None for ex in replay)
    first = fn(0, 64)
    spatial = [ex for ex in first if ex["item"].task == "choice" and ex["item"].meta["kind"] == "relation"]
    assert spatial and all(len(ex["item"].meta["scene"]["objects"]) == 2 for ex in spatial)
    assert {ex["answer"].split(" is ")[1].split(" the ")[0] for ex in spatial} <= {"left of", "right of"}


def test_collate_rejects_bad_input(processor):
    with pytest.raises(ValueError, match="examples"):
        toy_train.collate(processor, [])
    with pytest.raises(ValueError, match="answer"):
        toy_train.collate(processor, [{"image": Image.new("RGB", (8, 8)), "prompt": "a"}])
    with pytest.raises(ValueError, match="padding_side"):
        toy_train.collate(processor, [{"image": None, "prompt": "a", "answer": "b"}], padding_side="up")


# ---------------------------------------------------------------- training


def test_train_steps_change_parameters(tmp_path):
    out = toy_train.train(tmp_path, steps=3, save_every=2, **TRAIN_KW)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["loss"] > 0 for r in log)
    assert not (out / toy_train.CHECKPOINT_DIR).exists()  # a finished run removes its checkpoint
    model, _ = load(out)
    torch.manual_seed(0)  # what `train` does before building the model
    fresh = build_model(toy_train.toy_processor(), **TINY)
    pairs = list(zip(model.parameters(), fresh.parameters(), strict=True))
    assert sum(not p.equal(q) for p, q in pairs) > 0.9 * len(pairs)
    assert toy_train.train(out, steps=3, **TRAIN_KW) == out  # finished: returns at once


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight, _ = load(toy_train.train(tmp_path / "straight", steps=3, save_every=2, **TRAIN_KW))
    calls = []

    def crash_on_third_step(model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return toy_train.mle_loss(model, batch)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        toy_train.train(out, steps=3, save_every=2, loss_fn=crash_on_third_step, **TRAIN_KW)
    assert (out / toy_train.CHECKPOINT_DIR / "trainer_state.pt").is_file()
    resumed, _ = load(toy_train.train(out, steps=3, save_every=2, **TRAIN_KW))
    for (name, p), q in zip(resumed.named_parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_recipe_grounding_phases_chain_between_pt_and_it(tmp_path, monkeypatch):
    calls, real_train = [], toy_train.train

    def recording_train(out_dir, **kwargs):
        calls.append((Path(out_dir), kwargs))
        return real_train(out_dir, **kwargs)

    monkeypatch.setattr(toy_train, "train", recording_train)
    steps = {"lm_steps": 1, "vision_steps": 1, "pt_steps": 1, "it_steps": 1, "batch_size": 2}
    grounding = [("where", 2), ("spatial_lr", 1)]
    out = toy_train.train_recipe(
        tmp_path, **steps, grounding=grounding, num_threads=1, snapshot_every=None, model_kwargs=TINY, log_every=1
    )
    assert [c[0].name for c in calls] == ["lm", "pt", "ground-1-where", "ground-2-spatial_lr", tmp_path.name]
    (where_dir, where), (lr_dir, lr), (_, it) = calls[2:]
    assert where["init"] == tmp_path / "pt" and lr["init"] == where_dir and it["init"] == lr_dir
    assert where["mix"] == {"where": 1.0} and lr["mix"] == {"spatial_lr": 1.0} and it.get("mix") is None
    assert where["batch_size"] == lr["batch_size"] == toy_train.GROUNDING_BATCH_SIZE and it["batch_size"] == 2
    assert where["lr"] == lr["lr"] == it["lr"] and where["trainable"] == it["trainable"] == "projector+lm"
    for folder, n in ((where_dir, 2), (lr_dir, 1)):
        assert len((folder / "log.jsonl").read_text().splitlines()) == n
    grounded, _ = load(lr_dir)
    aligned, _ = load(tmp_path / "pt")
    assert any(not p.equal(q) for p, q in zip(grounded.parameters(), aligned.parameters(), strict=True))
    assert out == tmp_path


@pytest.mark.parametrize("phase", [("wher", 10), ("where", 0), ("where",), ("where", 1.5), "where", 7])
def test_recipe_rejects_a_bad_grounding_phase_before_training(tmp_path, phase):
    with pytest.raises(ValueError, match="grounding"):
        toy_train.train_recipe(tmp_path, grounding=[phase])
    assert not any(tmp_path.iterdir())


def test_patch_labels_cover_objects_and_outline():
    _, scene = make_scene(3, n_objects=2)
    labels = toy_train.patch_labels(scene, 8, boxed=scene.objects[0].box)
    assert {k: v.shape for k, v in labels.items()} == dict.fromkeys(
        ["shape", "color", "size", "text", "kind", "boxed", "row", "col"], (64,)
    )
    assert labels["row"].tolist() == [k // 8 for k in range(64)]
    assert labels["col"].tolist() == [k % 8 for k in range(64)]
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        cx, cy = int((x0 + x1) / 2 * 8 / scene.size), int((y0 + y1) / 2 * 8 / scene.size)
        patch = cy * 8 + cx  # the patch holding the object's centre
        assert toy_train.VISION_KINDS[labels["kind"][patch]] == "shape"
        assert SHAPES[labels["shape"][patch]] == obj.shape and list(COLORS)[labels["color"][patch]] == obj.color
    background = labels["kind"] == 0
    assert background.sum() > 32 and (labels["shape"][background] == -100).all()
    assert labels["boxed"].sum() >= 1 and (labels["boxed"].bool() <= (labels["kind"] > 0)).all()


def test_vision_stage_trains_only_the_vision_tower_and_later_stages_freeze_it(tmp_path):
    vision = toy_train.pretrain_vision(tmp_path / "vision", steps=2, batch_size=4, model_kwargs=TINY, log_every=1)
    torch.manual_seed(0)
    fresh = build_model(toy_train.toy_processor(), **TINY)
    stage0, _ = load(vision)
    for (name, p), q in zip(stage0.named_parameters(), fresh.parameters(), strict=True):
        assert p.equal(q) != ("vision_tower" in name and "post_layernorm" not in name), name
    kw = {**TRAIN_KW, "model_kwargs": None}
    pt, _ = load(toy_train.train(tmp_path / "pt", steps=2, init=vision, trainable="projector+lm", **kw))
    for (name, p), q in zip(pt.named_parameters(), stage0.parameters(), strict=True):
        assert p.equal(q) == ("vision_tower" in name), name


def test_train_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        toy_train.train(tmp_path, steps=0)
    with pytest.raises(ValueError, match="stage"):
        toy_train.train(tmp_path, steps=1, stage="sft")
    with pytest.raises(ValueError, match="lr"):
        toy_train.train(tmp_path, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="trainable"):
        toy_train.train(tmp_path, steps=1, trainable="vision", model_kwargs=TINY)


def test_train_on_fixed_pool_with_custom_loss(tmp_path):
    pool = _examples(range(6))
    seen = []

    def loss_fn(model, batch):
        seen.append(batch["input_ids"].shape[0])
        return toy_train.mle_loss(model, batch)

    toy_train.train(tmp_path, steps=2, batch_size=4, data=pool, loss_fn=loss_fn, model_kwargs=TINY, log_every=1)
    assert seen == [4, 4]


def test_evaluate_returns_fractions(tiny_model, processor):
    metrics = toy_train.evaluate(tiny_model, processor, n=4, batch_size=4)
    assert metrics["n_words"] > 0
    for key in ("word_acc", "word_acc/color", "vqa_exact_match", "region_vqa_exact_match"):
        assert 0 <= metrics[key] <= 1, key


# ---------------------------------------------------------------- the shipped model

shipped = pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").is_file(), reason="no shipped toy weights yet")


@shipped
def test_shipped_weights_are_small_and_load_offline():
    assert (WEIGHTS_DIR / "model.safetensors").stat().st_size <= 25 * 2**20  # issue #14's budget
    model, processor = load()
    assert not model.training and processor.image_processor.size["height"] == 64


@shipped
def test_shipped_model_names_the_colour_and_shape_of_a_single_object():
    # Shape questions ask about objects whose colour carries no shape prior: "what shape is the red object ?" is
    # where the train split's 80%-red circles pull the answer to "circle" (the prior CRG and CAL are about).
    from vcontrast.toy.tasks import BIASES

    prior_colors = {color for color, _ in BIASES["shape_color"].values()}
    model, processor = load()
    colour, shape = [], []
    for seed in range(40):
        image, scene = make_scene(seed, n_objects=1)
        (obj,) = scene.objects
        if len(colour) < 5:
            colour.append({"image": image, "prompt": PROMPTS["color"].format(shape=obj.shape), "answer": obj.color})
        if len(shape) < 5 and obj.color not in prior_colors:
            shape.append({"image": image, "prompt": PROMPTS["shape"].format(color=obj.color), "answer": obj.shape})
    answers = toy_train.generate_answers(model, processor, colour + shape)
    right = [a == ex["answer"] for a, ex in zip(answers, colour + shape, strict=True)]
    assert len(shape) == 5 and sum(right[:5]) >= 4 and sum(right[5:]) >= 4, answers


@pytest.mark.slow
def test_short_recipe_learns_colours(tmp_path):
    # The whole four-stage recipe at a small budget and the first toy model's size (~6 min on one core): enough to
    # name the one colour in a scene.
    recipe = {"lm_steps": 200, "vision_steps": 300, "pt_steps": 200, "it_steps": 300, "log_every": 100}
    recipe |= {"num_threads": 1, "snapshot_every": None, "model_kwargs": {"hidden_size": 128, "num_layers": 4}}
    out = toy_train.train_recipe(tmp_path, **recipe)
    model, processor = load(out)
    examples = []
    for seed in range(20):
        image, scene = make_scene(seed, n_objects=1)
        (obj,) = scene.objects
        examples.append({"image": image, "prompt": PROMPTS["color"].format(shape=obj.shape), "answer": obj.color})
    answers = toy_train.generate_answers(model, processor, examples)
    assert sum(a == ex["answer"] for a, ex in zip(answers, examples, strict=True)) >= 16, answers
