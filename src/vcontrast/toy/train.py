"""The toy VLM's training recipe: plain torch loops over toy-world batches generated on the fly.

The recipe follows LLaVA's stages, adapted to a model whose parts all start random:

0. **Vision** (`pretrain_vision`): real LLaVA starts from a pretrained CLIP tower, so ours is pretrained first, on
   dense per-patch object attributes of random scenes (`patch_labels`), standing in for CLIP's own pretraining.
   Trained through the LM alone, the tower learnt colours and positions but never shapes (see `docs/toy_model.md`).
1. **PT** (`stage="pt"`): image-caption pairs ("describe the image ." -> caption, `PT_MIX`). As in LLaVA the vision
   tower is frozen; the projector and, unlike LLaVA (whose LM comes pretrained), the random LM are trained: this is
   where the image-text alignment and the language itself are learnt.
2. **IT** (`stage="it"`): instruction tuning from the PT weights on the mixed toy tasks (`IT_MIX`: captions, VQA,
   region VQA, spatial relations, attribute-swap choices, image-text match, "where is ..." questions), projector and
   LM trained, vision tower frozen.

PT and IT draw the "train" split of `vcontrast.toy.tasks`, which carries the toy world's language priors (e.g. most
circles are red); the vision stage uses unbiased scenes; evaluation uses the balanced "test" split.

`train` runs one language stage (AdamW, linear warm-up then cosine decay, gradient clipping, checkpoints that resume);
`train_recipe` runs all three and writes the final model where `vcontrast.toy.load` can read it. The loss is
pluggable (`loss_fn(model, batch) -> loss`) so CAL's loss can replace plain MLE; `collate`, `item_example`,
`read_examples` and `task_examples` are the reusable pieces for CAL's trainer and the experiments. `evaluate`
measures teacher-forced accuracy on the colour, shape and position words of clean captions and greedy-generation
exact match on VQA.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vcontrast.atomic import atomic_path
from vcontrast.toy.tokenizer import chat_prompt

logger = logging.getLogger(__name__)

# Task name (`vcontrast.toy.tasks.TASK_NAMES`) -> share of the examples of each stage.
PT_MIX: dict[str, float] = {"caption": 1.0}
IT_MIX: dict[str, float] = {
    "caption": 0.10,
    "relations": 0.05,
    "vqa": 0.12,
    "region_vqa": 0.08,
    "region_caption": 0.05,
    "spatial": 0.30,
    "where": 0.10,
    "refer": 0.05,
    "swap": 0.06,
    "match": 0.09,
}
# The spatial share of IT follows a curriculum: (end of the phase as a fraction of the run, task that fills it).
SPATIAL_CURRICULUM: tuple[tuple[float, str], ...] = ((0.15, "spatial_lr"), (0.35, "spatial_pair"), (1.0, "spatial"))
# Every TEXT_REPLAY_EVERY-th IT step is a text-only batch (LLaVA-1.5's IT mix keeps ShareGPT text conversations), so
# the no-image predictions CAL contrasts with stay those of a language model.
TEXT_REPLAY_EVERY = 10
# Optional IT grounding phases before the task mix, one task each: (task, steps). The probes of docs/results/gates.md
# learnt "where is" in ~1500 steps of 16 and then left/right only after a ~2200-step plateau; the shipped recipe (v2)
# gave two-object left/right ~4,300 examples and never learnt it. `train_recipe(grounding=GROUNDING_PHASES)` taught
# it (44% mirror flips), but the IT mix that follows erased it (test bed v3, not shipped; the shipped model has no
# grounding phases).
GROUNDING_PHASES: tuple[tuple[str, int], ...] = (("where", 1500), ("spatial_lr", 3000))
GROUNDING_BATCH_SIZE = 16  # the probes' batch
GROUNDING_WARMUP = 30
STAGES = ("lm", "pt", "it")
TRAINABLE = ("all", "projector", "projector+lm", "lm")
CHECKPOINT_DIR = "checkpoint"
SNAPSHOT_DIR = "snapshots"
# The shipped model's size (the test bed of issue #14): LM 6 x 192, CLIP tower 3 x 96.
RECIPE_MODEL: dict[str, int] = {"hidden_size": 192, "num_layers": 6, "num_heads": 6}

Example = dict[str, Any]  # {"image": PIL.Image, "prompt": str, "answer": str, ...}: one user turn, one answer
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
DataFn = Callable[[int, int], list[Example]]  # (step, batch_size) -> examples


def collate(
    processor, examples: Sequence[Example], *, padding_side: str = "right", pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Turn examples into a model batch: chat-formatted prompt + answer + `</s>`, labels only on the answer.

    Args:
        processor (`ProcessorMixin`): a LLaVA-style processor with a chat template (the toy one, or a real one).
        examples (`Sequence[dict]`): each with `"image"` (PIL image), `"prompt"` (the user's text, without the chat
            template) and `"answer"` (the target text).
        padding_side (`str`, *optional*, defaults to `"right"`): "right" for training, "left" to continue the
            sequences (e.g. scoring then generating).
        pad_to_multiple_of (`int`, *optional*): pad the length up to a multiple of this; fewer distinct shapes make
            CPU training faster (each new shape costs kernel set-up time).

    Returns:
        `dict[str, torch.Tensor]`: `input_ids` and `attention_mask` (B, T), `pixel_values` (B, 3, H, W) and `labels`
        (B, T): the input ids on the answer tokens and the closing `</s>`, -100 on the prompt, the image placeholders
        and padding. Labels are not shifted; the model shifts them. A batch whose examples all have `"image": None`
        is text-only (see `text_only_batch`).

    Examples:

    ```python
    >>> batch = collate(processor, [{"image": img, "prompt": "what color is the circle ?", "answer": "red"}])
    >>> processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][batch["labels"] != -100])
    ['red', '</s>']
    ```
    """
    if not examples:
        raise ValueError("`examples` (=[]) must hold at least one example")
    if padding_side not in ("left", "right"):
        raise ValueError(f"`padding_side` (={padding_side!r}) must be 'left' or 'right'")
    for ex in examples:
        missing = {"image", "prompt", "answer"} - set(ex)
        if missing:
            raise ValueError(f"example {ex!r} lacks {sorted(missing)}")
    tok = processor.tokenizer
    images = [ex["image"] for ex in examples]
    if all(image is None for image in images):
        return text_only_batch(processor, examples, padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of)
    if any(image is None for image in images):
        raise ValueError("a batch mixes examples with and without an image; collate them separately")
    prompts = [chat_prompt(processor, ex["prompt"]) for ex in examples]
    texts = [f"{p} {ex['answer']}{tok.eos_token}" for p, ex in zip(prompts, examples, strict=True)]
    batch = processor(
        images=images,
        text=texts,
        padding=True,
        padding_side=padding_side,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors="pt",
    )
    # The prompts alone (with the same image expansion) give how many leading tokens to mask.
    prompt_ids = processor(images=images, text=prompts, padding=False)["input_ids"]
    labels = torch.full_like(batch["input_ids"], -100)
    for i, p_ids in enumerate(prompt_ids):
        row = batch["input_ids"][i][batch["attention_mask"][i].bool()]  # (L_i,) without padding
        if row[: len(p_ids)].tolist() != list(p_ids):
            raise ValueError(f"prompt {prompts[i]!r} does not tokenize to a prefix of prompt + answer")
        start = (batch["attention_mask"].shape[1] - len(row) if padding_side == "left" else 0) + len(p_ids)
        end = start + len(row) - len(p_ids)
        labels[i, start:end] = batch["input_ids"][i, start:end]
    batch["labels"] = labels
    return dict(batch)


def text_only_batch(
    processor, examples: Sequence[Example], *, padding_side: str = "right", pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """A text-only batch laid out exactly as `vcontrast.contrast.NoImage` lays out an image batch.

    The chat turn has no image ("USER: {question} ASSISTANT: {answer}</s>") and the tokens after where the image
    would be keep the position ids they have with it (the image's placeholders are skipped, not closed up), so a
    language model trained on these batches is the one CAL's no-image pass queries.

    Args:
        processor (`LlavaProcessor`): the toy processor.
        examples (`Sequence[dict]`): `"prompt"` and `"answer"` (any `"image"` is ignored).
        padding_side (`str`, *optional*, defaults to `"right"`): "right" or "left".
        pad_to_multiple_of (`int`, *optional*): pad the length up to a multiple of this.

    Returns:
        `dict[str, torch.Tensor]`: `input_ids`, `attention_mask`, `position_ids` and `labels`, all (B, T).
    """
    tok = processor.tokenizer
    prompts = [text_prompt(processor, ex["prompt"]) for ex in examples]
    texts = [f"{p} {ex['answer']}{tok.eos_token}" for p, ex in zip(prompts, examples, strict=True)]
    batch = tok(texts, padding=True, padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of,
                return_tensors="pt")  # fmt: skip
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    at, n_image = _image_slot(processor)
    positions = positions + n_image * (positions >= at)  # (B, T): the image's positions stay free
    labels = torch.full_like(batch["input_ids"], -100)
    for i, prompt in enumerate(prompts):
        start = int((mask[i] == 0).sum()) * (padding_side == "left") + len(tok(prompt)["input_ids"])
        end = int((mask[i] == 0).sum()) * (padding_side == "left") + int(mask[i].sum())
        labels[i, start:end] = batch["input_ids"][i, start:end]
    return {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": positions, "labels": labels}


def text_prompt(processor, question: str) -> str:
    """The generation prompt of a text-only turn, ``"USER: {question} ASSISTANT:"`` (the chat template, no image)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _image_slot(processor) -> tuple[int, int]:
    # (index of the first image placeholder in a chat prompt, number of placeholders), from the processor itself.
    ids = processor(images=[_blank_image(processor)], text=[chat_prompt(processor, "?")])["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    slots = [i for i, t in enumerate(ids) if t == image_id]
    return slots[0], len(slots)


def _blank_image(processor):
    from PIL import Image

    size = processor.image_processor.size["height"]
    return Image.new("RGB", (size, size))


def item_example(image, item) -> Example | None:
    """Turn one toy task item into a training example (a user turn and the gold answer text).

    Args:
        image (`PIL.Image.Image`): the item's image (with the region outline for "region_vqa").
        item (`Item`): an item from `vcontrast.toy.tasks.build_task` or a toy JSONL file.

    Returns:
        `dict | None`: `{"image", "prompt", "answer", "item"}`: "caption", "vqa" and "region_vqa" keep prompt and
        answer; "choice" answers with the gold candidate text; "match" asks `PROMPTS["match"]` and answers "yes" /
        "no"; "refexp" becomes `PROMPTS["where"]` about the referred object, answered by its location phrase.
        `None` for items that carry no answer.
    """
    from vcontrast.toy.grammar import PROMPTS, position
    from vcontrast.toy.scenes import Scene

    if item.task in ("caption", "vqa", "region_vqa") and item.answer is not None:
        prompt, answer = item.prompt, str(item.answer)
    elif item.task == "choice" and isinstance(item.answer, int):
        prompt, answer = item.prompt, item.candidates[item.answer]
    elif item.task == "match" and item.label is not None:
        prompt, answer = PROMPTS["match"].format(text=item.prompt), "yes" if item.label else "no"
    elif item.task == "refexp" and item.target is not None and "scene" in item.meta:
        scene = Scene.from_dict(item.meta["scene"])
        (obj,) = [o for o in scene.objects if tuple(o.box) == tuple(int(v) for v in item.target)]
        prompt, answer = PROMPTS["where"].format(name=item.prompt), position(obj, scene.size)
    else:
        return None
    return {"image": image, "prompt": prompt, "answer": answer, "item": item}


def read_examples(path: str | Path) -> list[Example]:
    """Training examples from a toy task JSONL file (`vcontrast.toy.tasks.make_split`), images loaded as RGB.

    Args:
        path (`str | Path`): the JSONL file; image paths resolve against its folder.

    Returns:
        `list[dict]`: one example per item that carries an answer (see `item_example`), in file order; pass it as
        `train(..., data=...)`.
    """

    from vcontrast.bench.items import read_items
    from vcontrast.regions import open_image

    out = []
    for item in read_items(path):
        example = item_example(open_image(item.image), item)
        if example is not None:
            out.append(example)
    return out


def task_examples(
    seeds: Sequence[int],
    *,
    stage: str = "it",
    split: str = "train",
    mix: dict[str, float] | None = None,
    rng: random.Random | None = None,
) -> list[Example]:
    """Build one training example per seed from the toy tasks (`vcontrast.toy.tasks.build_task`).

    Args:
        seeds (`Sequence[int]`): item seeds, one example each.
        stage (`str`, *optional*, defaults to `"it"`): "pt" uses `PT_MIX` (captions only), "it" uses `IT_MIX`, "lm"
            uses `IT_MIX` and drops the images (text-only examples, `"image": None`).
        split (`str`, *optional*, defaults to `"train"`): the tasks' split; "train" carries the toy world's biases
            (`vcontrast.toy.tasks.BIASES`), "test" is balanced.
        mix (`dict[str, float]`, *optional*): task name -> weight, overriding the stage's mix; names are
            `vcontrast.toy.tasks.TASK_NAMES` keys ("refexp" items become "where is ... ?" questions).
        rng (`random.Random`, *optional*): picks the task of each example; defaults to one seeded from the seeds.

    Returns:
        `list[dict]`: examples for `collate` (see `item_example`).

    Examples:

    ```python
    >>> [ex["prompt"] for ex in task_examples([0, 1], stage="pt")]
    ['describe the image .', 'describe the image .']
    ```
    """
    from vcontrast.toy.tasks import build_task

    if stage not in STAGES:
        raise ValueError(f"`stage` (={stage!r}) must be one of {STAGES}")
    mix = mix if mix is not None else (PT_MIX if stage == "pt" else IT_MIX)
    text_only = stage == "lm"
    if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"`mix` (={mix!r}) needs non-negative weights with a positive sum")
    rng = rng if rng is not None else random.Random(f"tasks-{list(seeds)[:4]}")
    names, weights = list(mix), list(mix.values())
    out = []
    for seed in seeds:
        for attempt in range(100):
            image, item = build_task(rng.choices(names, weights)[0], seed + attempt * 7_919_983, split)
            example = item_example(image, item)
            if example is not None:
                out.append(example | {"image": None} if text_only else example)
                break
        else:
            raise ValueError(f"`mix` (={mix!r}) yields no trainable items")
    return out


def toy_vocabulary() -> list[str]:
    """Every word the toy model must know: `vcontrast.toy.grammar.vocabulary()`."""
    from vcontrast.toy.grammar import vocabulary

    return vocabulary()


def toy_processor():
    """A fresh toy `LlavaProcessor` over `toy_vocabulary()` (see `vcontrast.toy.tokenizer.build_processor`)."""
    from vcontrast.toy.tokenizer import build_processor

    return build_processor(toy_vocabulary())


def mle_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The default loss: the model's own token-mean cross-entropy over `labels != -100`."""
    return model(**batch).loss


def curriculum_mix(mix: dict[str, float], progress: float) -> dict[str, float]:
    """`mix` with its "spatial" share given to the task of the current phase of `SPATIAL_CURRICULUM`.

    Args:
        mix (`dict[str, float]`): task name -> weight.
        progress (`float`): the fraction of the run done, in [0, 1].

    Returns:
        `dict[str, float]`: e.g. "spatial_lr" (2 objects, left of / right of) in the first 15% of the run.
    """
    if "spatial" not in mix:
        return mix
    task = next(t for end, t in SPATIAL_CURRICULUM if progress < end or end == SPATIAL_CURRICULUM[-1][0])
    return {(task if k == "spatial" else k): w for k, w in mix.items()}


def _data_fn(
    data: DataFn | Sequence[Example] | None, stage: str, seed: int, mix: dict[str, float] | None, steps: int
) -> DataFn:
    # Every batch is a pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.
    if data is None:

        def fn(step: int, batch_size: int) -> list[Example]:
            rng = random.Random(f"{seed}-{stage}-{step}")
            seeds = [rng.randrange(2**31) for _ in range(batch_size)]
            if stage != "it":
                return task_examples(seeds, stage=stage, split="train", mix=mix, rng=rng)
            if mix is None and step % TEXT_REPLAY_EVERY == TEXT_REPLAY_EVERY - 1:
                return task_examples(seeds, stage="lm", split="train", rng=rng)
            chosen = curriculum_mix(mix if mix is not None else IT_MIX, step / steps)
            return task_examples(seeds, stage=stage, split="train", mix=chosen, rng=rng)

        return fn
    if callable(data):
        return data
    if len(data) == 0:
        raise ValueError("`data` (=[]) holds no examples")
    pool = list(data)

    def fn(step: int, batch_size: int) -> list[Example]:
        # Epoch-wise shuffling without replacement, reproducible per step.
        out = []
        for k in range(step * batch_size, (step + 1) * batch_size):
            epoch, i = divmod(k, len(pool))
            order = list(range(len(pool)))
            random.Random(f"{seed}-epoch-{epoch}").shuffle(order)
            out.append(pool[order[i]])
        return out

    return fn


def _set_trainable(model: torch.nn.Module, trainable: str) -> list[torch.nn.Parameter]:
    if trainable not in TRAINABLE:
        raise ValueError(f"`trainable` (={trainable!r}) must be one of {TRAINABLE}")
    for name, p in model.named_parameters():
        if trainable == "all":
            p.requires_grad_(True)
        elif trainable == "projector":
            p.requires_grad_("multi_modal_projector" in name)
        elif trainable == "lm":
            p.requires_grad_("vision_tower" not in name and "multi_modal_projector" not in name)
        else:
            p.requires_grad_("vision_tower" not in name)
    return [p for p in model.parameters() if p.requires_grad]


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine down to 10% of the peak


def train(
    out_dir: str | Path,
    *,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    stage: str = "it",
    init: str | Path | None = None,
    loss_fn: LossFn | None = None,
    data: DataFn | Sequence[Example] | None = None,
    mix: dict[str, float] | None = None,
    trainable: str = "all",
    warmup: int = 100,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    log_every: int = 50,
    save_every: int = 250,
    resume: bool = True,
    num_threads: int | None = None,
    model_kwargs: dict | None = None,
    snapshot_every: int | None = None,
) -> Path:
    """Train one stage of the toy VLM and save it with `save_pretrained` (model + processor) into `out_dir`.

    Args:
        out_dir (`str | Path`): output folder; holds the final model, `checkpoint/` while training and `log.jsonl`.
        steps (`int`, *optional*, defaults to 1500): optimiser steps.
        batch_size (`int`, *optional*, defaults to 32): examples per step.
        lr (`float`, *optional*, defaults to 1e-3): peak learning rate (AdamW, linear warm-up, cosine to 10%).
        seed (`int`, *optional*, defaults to 0): seeds the initialisation and the data stream.
        stage (`str`, *optional*, defaults to `"it"`): "lm" (text-only IT-mix examples), "pt" (captions) or "it"
            (mixed tasks: `IT_MIX` with its spatial curriculum and a text-only batch every `TEXT_REPLAY_EVERY`
            steps; a custom `mix` gets neither); only used when `data` is None.
        init (`str | Path`, *optional*): a folder saved by an earlier stage to start from (e.g. the PT output); a
            fresh random model is built when None.
        loss_fn (`Callable[[model, batch], Tensor]`, *optional*): the training loss; defaults to `mle_loss`. CAL
            plugs in here.
        data (`Callable[[step, batch_size], list[dict]]` or `Sequence[dict]`, *optional*): the training examples (see
            `collate`), either a function of the step (must be deterministic for resuming to be exact) or a fixed
            pool cycled in seeded epochs; defaults to fresh "train"-split items from `task_examples` every step.
        mix (`dict[str, float]`, *optional*): task mix of the generated data; defaults to `PT_MIX` / `IT_MIX`.
        trainable (`str`, *optional*, defaults to `"all"`): "all", "projector" (LLaVA's PT setting for pretrained
            parts) or "projector+lm" (vision tower frozen).
        warmup (`int`, *optional*, defaults to 100): linear warm-up steps.
        weight_decay (`float`, *optional*, defaults to 0.01): AdamW weight decay.
        max_grad_norm (`float`, *optional*, defaults to 1.0): gradient clipping norm.
        log_every (`int`, *optional*, defaults to 50): log the mean loss every this many steps.
        save_every (`int`, *optional*, defaults to 250): write `checkpoint/` every this many steps.
        resume (`bool`, *optional*, defaults to `True`): continue from `out_dir/checkpoint` if present; a finished run
            (final model for the same number of steps already there) returns at once.
        num_threads (`int`, *optional*): `torch.set_num_threads` for the run (2 on a shared 2-core machine).
        model_kwargs (`dict`, *optional*): `toy_config` overrides for a fresh model (e.g. a smaller one for tests).
        snapshot_every (`int`, *optional*): also save the model to `out_dir/snapshots/step-N` every this many steps
            (what a learning curve is measured on).

    Returns:
        `Path`: `out_dir`, now loadable with `vcontrast.toy.load(out_dir)`.

    Examples:

    ```python
    >>> pt = train("runs/toy/pt", stage="pt", steps=600)
    >>> it = train("runs/toy/it", stage="it", steps=1200, init=pt, loss_fn=my_cal_loss)
    >>> model, processor = vcontrast.toy.load(it)
    ```
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vcontrast.toy.model import build_model

    for name, value in [("steps", steps), ("batch_size", batch_size), ("log_every", log_every)]:
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` (={value!r}) must be a positive int")
    if save_every <= 0:
        raise ValueError(f"`save_every` (={save_every}) must be positive")
    if not lr > 0:
        raise ValueError(f"`lr` (={lr}) must be positive")
    if stage not in STAGES:
        raise ValueError(f"`stage` (={stage!r}) must be one of {STAGES}")
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_DIR
    state_file = out_dir / "train_state.json"
    if resume and state_file.is_file() and json.loads(state_file.read_text()).get("step") == steps:
        logger.info("%s already holds a finished %d-step run", out_dir, steps)
        return out_dir

    torch.manual_seed(seed)
    start = 0
    if resume and (ckpt / "trainer_state.pt").is_file():
        model = LlavaForConditionalGeneration.from_pretrained(ckpt, local_files_only=True)
        processor = AutoProcessor.from_pretrained(ckpt, local_files_only=True)
    elif init is not None:
        model = LlavaForConditionalGeneration.from_pretrained(init, local_files_only=True)
        processor = AutoProcessor.from_pretrained(init, local_files_only=True)
    else:
        processor = toy_processor()
        model = build_model(processor, **(model_kwargs or {}))
    model.train()
    params = _set_trainable(model, trainable)
    decay = [p for p in params if p.ndim >= 2]  # no decay on norms and biases
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    if resume and (ckpt / "trainer_state.pt").is_file():
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        logger.info("resuming %s from step %d", out_dir, start)
    loss_fn = loss_fn if loss_fn is not None else mle_loss
    batches = _data_fn(data, stage, seed, mix, steps)

    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = out_dir / "log.jsonl"
    t0, running, seen = time.perf_counter(), 0.0, 0
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        batch = collate(processor, batches(step, batch_size), pad_to_multiple_of=16)
        loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running, seen = running + loss.item(), seen + 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            record = {
                "stage": stage,
                "step": step + 1,
                "loss": running / seen,
                "grad_norm": float(grad_norm),
                "lr": optimizer.param_groups[0]["lr"],
                "elapsed_s": round(time.perf_counter() - t0, 1),
                "session_start": start,  # the step this session resumed from: sessions' times add up
            }
            logger.info("%s", record)
            with log_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            running, seen = 0.0, 0
        if (step + 1) % save_every == 0 and step + 1 < steps:
            _save_checkpoint(model, processor, optimizer, ckpt, step + 1)
        if snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            model.save_pretrained(out_dir / SNAPSHOT_DIR / f"step-{step + 1}")
            processor.save_pretrained(out_dir / SNAPSHOT_DIR / f"step-{step + 1}")

    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    state_file.write_text(json.dumps({"step": steps, "stage": stage, "seed": seed, "trainable": trainable}) + "\n")
    if ckpt.is_dir():
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    return out_dir


def _save_checkpoint(model, processor, optimizer, ckpt: Path, step: int) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    # Written last and atomically: its presence marks a complete checkpoint.
    with atomic_path(ckpt / "trainer_state.pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "step": step}, tmp)


VISION_KINDS = ("background", "shape", "text")


def patch_labels(scene, grid: int, boxed: tuple[float, float, float, float] | None = None) -> dict[str, torch.Tensor]:
    """Dense per-patch targets of a toy scene for the vision stage: what covers each patch's centre.

    Args:
        scene (`Scene`): the scene's ground truth.
        grid (`int`): patches per side (`image_size // patch_size`).
        boxed (`tuple`, *optional*): an outline box drawn on the image (`vcontrast.toy.tasks.draw_region`).

    Returns:
        `dict[str, torch.Tensor]`: each (grid * grid,) in row-major patch order: `"kind"` (index into `VISION_KINDS`),
        `"shape"`, `"color"`, `"size"` and `"text"` (indices into `SHAPES`, `COLORS`, `SIZES`, `TEXTS`; -100 where
        not applicable, so background patches, most of every image, do not drown the attributes), `"boxed"` (1
        inside the outline, 0 outside), and `"row"` / `"col"`, the patch's own grid position, so that the features
        keep where they are (a tower trained on content alone kept little of it: a linear probe read the column of
        a patch at R^2 0.34, and the LM never learnt left from right). An object too small to cover any patch
        centre labels the patch holding its centre.
    """
    from vcontrast.toy.scenes import COLORS, SHAPES, SIZES, TEXTS

    centres = (torch.arange(grid) + 0.5) * scene.size / grid  # (grid,) pixel coordinates of patch centres
    out = {k: torch.full((grid, grid), -100, dtype=torch.long) for k in ("shape", "color", "size", "text")}
    out["kind"] = torch.zeros(grid, grid, dtype=torch.long)

    def cover(box) -> torch.Tensor:
        x0, y0, x1, y1 = box
        m = ((centres >= y0) & (centres < y1))[:, None] & ((centres >= x0) & (centres < x1))[None, :]
        if not m.any():
            m[
                min(int((y0 + y1) / 2 * grid / scene.size), grid - 1),
                min(int((x0 + x1) / 2 * grid / scene.size), grid - 1),
            ] = True
        return m

    for obj in scene.objects:
        m = cover(obj.box)
        out["kind"][m] = VISION_KINDS.index("shape")
        out["shape"][m] = SHAPES.index(obj.shape)
        out["color"][m] = list(COLORS).index(obj.color)
        out["size"][m] = list(SIZES).index(obj.size_word)
    for text in scene.texts:
        m = cover(text.box)
        out["kind"][m] = VISION_KINDS.index("text")
        out["color"][m] = list(COLORS).index(text.color)
        out["text"][m] = TEXTS.index(text.text)
    out["boxed"] = cover(boxed).long() if boxed is not None else torch.zeros(grid, grid, dtype=torch.long)
    out["row"] = torch.arange(grid)[:, None].expand(grid, grid)
    out["col"] = torch.arange(grid)[None, :].expand(grid, grid)
    return {k: v.flatten() for k, v in out.items()}


def pretrain_vision(
    out_dir: str | Path,
    *,
    steps: int = 800,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    boxed_rate: float = 0.3,
    text_rate: float = 0.3,
    log_every: int = 50,
    resume: bool = True,
    num_threads: int | None = None,
    model_kwargs: dict | None = None,
    init: str | Path | None = None,
) -> Path:
    """Pretrain the CLIP vision tower on dense object attributes, standing in for CLIP's own pretraining.

    Real LLaVA starts from a pretrained CLIP tower. A tower trained from scratch through the LM alone learns colours
    and positions quickly but not shapes (a shape spans about one 8-pixel patch at a random offset; in a 2500-step
    PT + IT run shape-word accuracy stayed at chance). So the tower first learns, from linear heads on its patch
    features, what covers each patch (`patch_labels`: background / shape / text, colour, size, which word, and
    whether the patch lies inside a drawn region outline) and where the patch is (its row and column: CLIP's
    features keep position, and left/right needs it), on unbiased random scenes. The heads are dropped; the LM and
    projector are not touched.

    Args:
        out_dir (`str | Path`): output folder; gets the whole LLaVA model (`save_pretrained`) and the processor.
        steps (`int`, *optional*, defaults to 800): optimiser steps.
        batch_size (`int`, *optional*, defaults to 32): images per step.
        lr (`float`, *optional*, defaults to 1e-3): peak learning rate (warm-up, cosine to 10%).
        seed (`int`, *optional*, defaults to 0): seeds the initialisation and the scenes.
        boxed_rate (`float`, *optional*, defaults to 0.3): share of images with a region outline around one object.
        text_rate (`float`, *optional*, defaults to 0.3): share of scenes with a rendered word or digit.
        log_every (`int`, *optional*, defaults to 50): logging interval.
        resume (`bool`, *optional*, defaults to `True`): return at once if `out_dir` holds a finished run.
        num_threads (`int`, *optional*): `torch.set_num_threads` for the run.
        model_kwargs (`dict`, *optional*): `toy_config` overrides for a fresh model.
        init (`str | Path`, *optional*): a saved toy model whose tower to train (e.g. the text-only LM stage's
            output); its LM and projector are kept as they are. A fresh model when None.

    Returns:
        `Path`: `out_dir`, to pass as `train(..., init=out_dir)`.
    """
    from vcontrast.toy.model import build_model
    from vcontrast.toy.scenes import COLORS, SHAPES, SIZES, TEXTS, make_scene
    from vcontrast.toy.tasks import draw_region

    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"`steps` (={steps!r}) must be a positive int")
    out_dir = Path(out_dir)
    state_file = out_dir / "train_state.json"
    if resume and state_file.is_file() and json.loads(state_file.read_text()).get("step") == steps:
        return out_dir
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    if init is not None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(init, local_files_only=True)
        processor = AutoProcessor.from_pretrained(init, local_files_only=True)
    else:
        processor = toy_processor()
        model = build_model(processor, **(model_kwargs or {}))
    tower = model.model.vision_tower
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    sizes = {"kind": len(VISION_KINDS), "shape": len(SHAPES), "color": len(COLORS), "size": len(SIZES)}
    sizes |= {"text": len(TEXTS), "boxed": 2, "row": grid, "col": grid}
    heads = torch.nn.ModuleDict(
        {k: torch.nn.Linear(model.config.vision_config.hidden_size, n) for k, n in sizes.items()}
    )
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    tower.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0, running = time.perf_counter(), 0.0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, min(100, steps // 10 + 1))
        rng = random.Random(f"{seed}-vision-{step}")
        images, targets = [], []
        for _ in range(batch_size):
            image, scene = make_scene(rng.randrange(2**31), with_text=rng.random() < text_rate)
            boxed = None
            if scene.objects and rng.random() < boxed_rate:
                try:
                    image, boxed = draw_region(image, rng.choice(scene.objects).box)
                except ValueError:  # object too close to the border for an outline
                    boxed = None
            images.append(image)
            targets.append(patch_labels(scene, grid, boxed))
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        feats = tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # (B, grid*grid, D), CLS dropped
        loss = feats.new_zeros(())
        for k in sizes:
            target = torch.stack([t[k] for t in targets]).flatten()  # (B * grid * grid,)
            if (target != -100).any():  # e.g. no text in this batch: an all-ignored mean would be NaN
                loss = loss + torch.nn.functional.cross_entropy(heads[k](feats).flatten(0, 1), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            record = {"stage": "vision", "step": step + 1, "loss": running / ((step % log_every) + 1),
                      "elapsed_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
            logger.info("%s", record)
            with (out_dir / "log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            running = 0.0
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    state_file.write_text(json.dumps({"step": steps, "stage": "vision", "seed": seed}) + "\n")
    return out_dir


def train_recipe(
    out_dir: str | Path,
    *,
    lm_steps: int = 1250,
    vision_steps: int = 2000,
    pt_steps: int = 600,
    it_steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 50,
    num_threads: int | None = 2,
    model_kwargs: dict | None = None,
    snapshot_every: int | None = 500,
    grounding: Sequence[tuple[str, int]] = (),
) -> Path:
    """The shipped model's recipe, after LLaVA's: LM (`out_dir/lm`), vision (`out_dir/vision`), PT (`out_dir/pt`), IT.

    0. `train(stage="lm")`: the language model alone learns the toy language from text (the IT mix's questions,
       answers and captions, no image), so its no-image predictions carry the train split's language priors, as a
       pretrained LLM's do.
    1. `pretrain_vision`: the CLIP tower learns dense object attributes (the stand-in for CLIP pretraining).
    2. PT: the projector alone learns to feed the frozen LM from captions, as in LLaVA.
    3. IT on `IT_MIX` (spatial curriculum, text-only replay), vision tower frozen, projector + LM trained at half
       the learning rate, with snapshots every `snapshot_every` steps for the learning curve. With `grounding`, IT
       first runs one phase per (task, steps) on that task alone (`out_dir/ground-K-TASK`, batch
       `GROUNDING_BATCH_SIZE`, the IT learning rate and trainable parts, no text replay), each from the one before.

    Args:
        out_dir (`str | Path`): final output folder (loadable with `vcontrast.toy.load(out_dir)`).
        lm_steps (`int`, *optional*, defaults to 1250): stage-0 steps (text only).
        vision_steps (`int`, *optional*, defaults to 2000): stage-1 steps.
        pt_steps (`int`, *optional*, defaults to 600): stage-2 steps.
        it_steps (`int`, *optional*, defaults to 2000): stage-3 steps.
        batch_size (`int`, *optional*, defaults to 32): examples per step in every stage.
        lr (`float`, *optional*, defaults to 1e-3): peak learning rate of stages 0-2; IT uses half of it.
        seed (`int`, *optional*, defaults to 0): seeds every stage.
        log_every (`int`, *optional*, defaults to 50): logging interval.
        num_threads (`int`, *optional*, defaults to 2): torch threads (1 is faster when other jobs share the cores).
        model_kwargs (`dict`, *optional*): `toy_config` overrides; defaults to `RECIPE_MODEL` (LM 6 x 192).
        snapshot_every (`int`, *optional*, defaults to 500): IT snapshot interval (None: none).
        grounding (`Sequence[tuple[str, int]]`, *optional*, defaults to `()`): IT grounding phases, (task, steps)
            each, task a `vcontrast.toy.tasks.TASK_NAMES` key; e.g. `GROUNDING_PHASES`.

    Returns:
        `Path`: `out_dir`. Interrupted runs resume where they stopped when called again.
    """
    from vcontrast.toy.tasks import TASK_NAMES

    out_dir = Path(out_dir)
    for phase in grounding:
        well_formed = isinstance(phase, tuple | list) and len(phase) == 2 and phase[0] in TASK_NAMES
        if not well_formed or not isinstance(phase[1], int) or phase[1] < 1:
            raise ValueError(
                f"`grounding` phase {phase!r} must be (task, steps) with task one of {list(TASK_NAMES)} and steps >= 1"
            )
    common = {"batch_size": batch_size, "seed": seed, "log_every": log_every, "num_threads": num_threads}
    model_kwargs = RECIPE_MODEL if model_kwargs is None else model_kwargs
    lm = train(out_dir / "lm", stage="lm", steps=lm_steps, lr=lr, trainable="lm", model_kwargs=model_kwargs, **common)
    vision = pretrain_vision(out_dir / "vision", steps=vision_steps, lr=lr, init=lm, **common)
    init = train(out_dir / "pt", stage="pt", init=vision, steps=pt_steps, lr=lr, trainable="projector", **common)
    for k, (task, steps) in enumerate(grounding, start=1):
        init = train(
            out_dir / f"ground-{k}-{task}",
            stage="it",
            init=init,
            steps=steps,
            lr=lr / 2,
            trainable="projector+lm",
            mix={task: 1.0},
            warmup=GROUNDING_WARMUP,
            **(common | {"batch_size": GROUNDING_BATCH_SIZE}),
        )
    return train(
        out_dir,
        stage="it",
        init=init,
        steps=it_steps,
        lr=lr / 2,
        trainable="projector+lm",
        snapshot_every=snapshot_every,
        **common,
    )


def _attribute_words() -> dict[str, set[str]]:
    # The caption words whose prediction needs the image, by kind. Position words are the content words of the
    # 3x3 grid phrases ("top", "left", "middle", ...), without their glue ("at", "the", "on", "in").
    from vcontrast.toy.grammar import POSITIONS, words
    from vcontrast.toy.scenes import COLORS, SHAPES, SIZES

    glue = {"at", "the", "on", "in"}
    return {
        "color": set(COLORS),
        "shape": set(SHAPES),
        "position": {w for row in POSITIONS for phrase in row for w in words(phrase)} - glue,
        "size": set(SIZES),
    }


@torch.no_grad()
def caption_word_accuracy(model, processor, examples: Sequence[Example], *, batch_size: int = 32) -> dict[str, float]:
    """Teacher-forced accuracy on the colour, shape and position words of captions.

    At each answer position whose gold token is a colour / shape / position (/ size) word, the prediction is right
    if the argmax of the model's next-token logits is the gold token.

    Args:
        model (`LlavaForConditionalGeneration`): the toy model (or any model sharing its processor).
        processor (`LlavaProcessor`): its processor.
        examples (`Sequence[dict]`): caption examples (`"image"`, `"prompt"`, `"answer"`), e.g. from
            `task_examples(seeds, mix={"caption": 1.0}, split="test")`.
        batch_size (`int`, *optional*, defaults to 32): forward batch size.

    Returns:
        `dict[str, float]`: `"word_acc"` over colour, shape and position words together, `"word_acc/color"`,
        `"word_acc/shape"`, `"word_acc/position"` and `"word_acc/size"` (NaN where no such word occurred), and
        `"n_words"` (how many words `"word_acc"` averages).
    """
    kinds = _attribute_words()
    tok = processor.tokenizer
    kind_of = {tok.convert_tokens_to_ids(w): k for k, ws in kinds.items() for w in ws}
    hits = dict.fromkeys(kinds, 0)
    total = dict.fromkeys(kinds, 0)
    was_training = model.training
    model.eval()
    for i in range(0, len(examples), batch_size):
        batch = collate(processor, examples[i : i + batch_size])
        labels = batch.pop("labels")
        logits = model(**batch).logits  # (B, T, V)
        pred = logits[:, :-1].argmax(-1)  # (B, T-1): the prediction for token t+1
        gold = labels[:, 1:]
        keep = gold != -100
        for g, p in zip(gold[keep].tolist(), pred[keep].tolist(), strict=True):
            if g in kind_of:
                total[kind_of[g]] += 1
                hits[kind_of[g]] += int(g == p)
    model.train(was_training)
    out = {f"word_acc/{k}": hits[k] / total[k] if total[k] else float("nan") for k in kinds}
    n = sum(total[k] for k in ("color", "shape", "position"))
    out["word_acc"] = sum(hits[k] for k in ("color", "shape", "position")) / n if n else float("nan")
    out["n_words"] = n
    return out


@torch.no_grad()
def generate_answers(
    model, processor, examples: Sequence[Example], *, max_new_tokens: int = 12, batch_size: int = 32
) -> list[str]:
    """Greedy answers to `examples` (`"image"` + `"prompt"`), decoded without special tokens.

    Args:
        model (`LlavaForConditionalGeneration`): the model.
        processor (`LlavaProcessor`): its processor (the chat template makes the prompt).
        examples (`Sequence[dict]`): each with `"image"` and `"prompt"`.
        max_new_tokens (`int`, *optional*, defaults to 12): generation budget.
        batch_size (`int`, *optional*, defaults to 32): examples per `generate` call (left-padded).

    Returns:
        `list[str]`: one stripped answer per example.

    Examples:

    ```python
    >>> generate_answers(model, processor, [{"image": image, "prompt": "what color is the circle ?"}])
    ['red']
    ```
    """
    answers = []
    was_training = model.training
    model.eval()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        inputs = processor(
            images=[ex["image"] for ex in chunk],
            text=[chat_prompt(processor, ex["prompt"]) for ex in chunk],
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]  # (B, <= max_new_tokens)
        answers += [s.strip() for s in processor.batch_decode(new, skip_special_tokens=True)]
    model.train(was_training)
    return answers


def exact_match(prediction: str, answer: str) -> bool:
    """Whether two answers are the same sequence of toy words (case and spacing ignored)."""
    from vcontrast.toy.grammar import words

    return words(prediction) == words(str(answer))


def evaluate(
    model, processor, *, n: int = 200, seed: int = 0, split: str = "test", batch_size: int = 32
) -> dict[str, float]:
    """The toy world's two kinds of metric on `n` items each: caption word accuracy and VQA exact match.

    Args:
        model (`LlavaForConditionalGeneration`): the model.
        processor (`LlavaProcessor`): its processor.
        n (`int`, *optional*, defaults to 200): items per task ("caption", "vqa", "region_vqa").
        seed (`int`, *optional*, defaults to 0): item seeds `seed * 1_000_000 + i` (`vcontrast.toy.tasks.iter_split`).
        split (`str`, *optional*, defaults to `"test"`): "test" (balanced) or "train" (biased, as trained on).
        batch_size (`int`, *optional*, defaults to 32): batch size.

    Returns:
        `dict[str, float]`: `caption_word_accuracy`'s keys; `"vqa_exact_match"` and `"region_vqa_exact_match"` (greedy
        answer equals the gold answer, word for word) with per-question-kind breakdowns (`"vqa_exact_match/color"`,
        ...), and for the VQA items whose answer a train bias favours, `"vqa_exact_match/prior_consistent"` and
        `"vqa_exact_match/prior_inconsistent"` (gold answer equal to / different from the favoured one).

    Examples:

    ```python
    >>> evaluate(*vcontrast.toy.load(), n=100)
    {'word_acc/color': 0.99, ..., 'vqa_exact_match': 0.93, ...}
    ```
    """
    from vcontrast.toy.tasks import iter_split

    if n <= 0:
        raise ValueError(f"`n` (={n}) must be positive")
    captions = [item_example(image, item) for image, item in iter_split("caption", n, seed, split)]
    metrics: dict[str, float] = caption_word_accuracy(model, processor, captions, batch_size=batch_size)
    for task in ("vqa", "region_vqa"):
        examples = [item_example(image, item) for image, item in iter_split(task, n, seed, split)]
        answers = generate_answers(model, processor, examples, batch_size=batch_size)
        groups: dict[str, list[bool]] = {}
        for pred, ex in zip(answers, examples, strict=True):
            right = exact_match(pred, ex["answer"])
            meta = ex["item"].meta
            groups.setdefault("", []).append(right)
            groups.setdefault(f"/{meta.get('kind')}", []).append(right)
            if meta.get("prior") is not None:
                consistent = "consistent" if str(meta["prior"]) == ex["answer"] else "inconsistent"
                groups.setdefault(f"/prior_{consistent}", []).append(right)
        metrics |= {f"{task}_exact_match{k}": sum(v) / len(v) for k, v in sorted(groups.items())}
    return metrics
