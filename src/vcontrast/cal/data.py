"""LLaVA-style conversation data for training and scoring: a validated reader and a chat-template collator.

The reader takes LLaVA's instruction-tuning layout, a JSON array or JSON lines of records like

```json
{"id": "000001", "image": "coco/train2017/000000033471.jpg",
 "conversations": [{"from": "human", "value": "<image>\\nWhat is the cat doing?"},
                   {"from": "gpt", "value": "Sleeping on the sofa."},
                   {"from": "human", "value": "What colour is the sofa?"},
                   {"from": "gpt", "value": "Red."}]}
```

and turns each record into an example `{"id", "index", "image", "messages"}` whose `messages` are in the chat-template
format of transformers processors (`{"role": "user", "content": [{"type": "image"}, {"type": "text", ...}]}`).
Images stay paths until a batch is collated, so reading a large dataset (or listing its ids to resume a run) opens
no image.

[`ConversationCollator`] renders each conversation with the processor's chat template, tokenizes it with the images
once, and puts labels on the tokens of the assistant turns only (the template's end-of-turn text included, plus the
tokenizer's eos where the template writes no special token after an answer), -100 elsewhere. It is the general form
of `vcontrast.toy.train.collate`: for single-turn examples on the toy processor the batches are identical.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_MARKER", "ConversationCollator", "read_conversations", "to_messages"]

IMAGE_MARKER = "<image>"  # where LLaVA's data puts the image in a human turn
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# (B, T) tensors a processor returns aligned with input_ids: what truncation cuts.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids", "position_ids")


def _records(path: Path) -> list[tuple[str, Any]]:
    # (where, record) pairs; `where` names the line (JSON lines) or the array index (JSON) for error messages.
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
        return [(f"{path}: record {i}", record) for i, record in enumerate(data)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({error.msg})") from error
    return out


def to_messages(conversations: list, has_image: bool | int, where: str = "record") -> list[dict]:
    """LLaVA `conversations` turns -> chat-template messages, validated.

    Roles: "human"/"user" -> "user", "gpt"/"assistant" -> "assistant", "system". The first non-system turn must be
    the user's, user and assistant turns alternate, and at least one assistant turn must exist. As in LLaVA's own
    preprocessing, the images go first in the first user turn: the `<image>` markers are removed from its text (a
    record with images but no marker gets them there; markers anywhere else, more markers than images, or fewer but
    not none, are errors).

    Args:
        conversations (`list[dict]`): `[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]`.
        has_image (`bool` or `int`): whether the record has an image, or how many images it has.
        where (`str`, *optional*): names the record in error messages (e.g. "data.jsonl:12").

    Returns:
        `list[dict]`: `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}, ...]`.

    Examples:

    ```python
    >>> turns = [{"from": "human", "value": "<image>\\nwhat?"}, {"from": "gpt", "value": "a cat"}]
    >>> messages = to_messages(turns, has_image=True)
    >>> messages[0]
    {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'what?'}]}
    ```
    """
    if not isinstance(conversations, list) or not conversations:
        raise ValueError(f"{where}: `conversations` (={conversations!r}) has to be a non-empty list of turns")
    messages: list[dict] = []
    first_user = None
    n_images = int(has_image)
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            # ValueError for every bad record, so a CLI catches one exception type.
            raise ValueError(f"{where}: turn {k} (={turn!r}) has to be an object with a text `value`")  # noqa: TRY004
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(
                f"{where}: turn {k} has an unknown speaker `from` (={turn.get('from')!r}); use one of "
                f"{', '.join(ROLES)}"
            )
        previous = messages[-1]["role"] if messages else None
        if role == "system" and previous is not None:
            raise ValueError(f"{where}: turn {k} is a system turn after the first turn")
        if role == "assistant" and previous != "user":
            raise ValueError(f"{where}: turn {k} is an assistant ('gpt') turn that does not follow a human turn")
        if role == "user" and previous == "user":
            raise ValueError(f"{where}: turn {k} is a second human turn in a row")
        value = turn["value"]
        if IMAGE_MARKER in value and (role != "user" or first_user is not None or not has_image):
            reason = "the record has no image" if not has_image else "only the first human turn may hold it"
            raise ValueError(f"{where}: turn {k} contains {IMAGE_MARKER!r} but {reason}")
        if value.count(IMAGE_MARKER) not in (0, n_images) and IMAGE_MARKER in value:
            raise ValueError(
                f"{where}: turn {k} contains {IMAGE_MARKER!r} {value.count(IMAGE_MARKER)} times for {n_images} "
                "image(s)"
            )
        content: list[dict] = []
        if role == "user" and first_user is None:
            first_user = k
            content += [{"type": "image"}] * n_images
            value = value.replace(IMAGE_MARKER, "").strip()
        content.append({"type": "text", "text": value})
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: no assistant ('gpt') turn, so there is nothing to train on")
    return messages


def read_conversations(
    path: str | Path, image_folder: str | Path | None = None, *, check_images: bool = True
) -> list[dict]:
    """Read and validate LLaVA-style conversation data (a JSON array or JSON lines).

    Args:
        path (`str` or `Path`): the data file; each record has `conversations` (see [`to_messages`]), optionally
            `image` (a path, or a list of paths for several images) and `id`.
        image_folder (`str` or `Path`, *optional*): the folder relative image paths resolve against; defaults to the
            data file's folder.
        check_images (`bool`, *optional*, defaults to `True`): fail on a missing image file now rather than when its
            batch is collated.

    Returns:
        `list[dict]`: one example per record, in file order: `id` (the record's id as text, else its index; a repeated
        id gets `#2`, `#3`, ... appended, so ids are unique and stable), `index` (position in the file), `image` (the
        resolved path as text, or None for a text-only record) and `messages`.

    Raises:
        ValueError: naming the line (or array index) of a malformed record, a missing image file, a record without
            an assistant turn, or an empty file.

    Examples:

    ```python
    >>> examples = read_conversations("data/llava_v1_5_mix665k.json", image_folder="data/images")
    >>> examples[0]["messages"][0]["content"][0]
    {'type': 'image'}
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no data file at {str(path)!r}")
    folder = Path(image_folder) if image_folder is not None else path.parent
    if image_folder is not None and not folder.is_dir():
        raise ValueError(f"`image_folder` (={str(image_folder)!r}) is not a folder")
    examples, seen = [], {}
    for index, (where, record) in enumerate(_records(path)):
        if not isinstance(record, dict):
            raise ValueError(f"{where}: a record has to be a JSON object, got {type(record).__name__}")  # noqa: TRY004
        if "conversations" not in record:
            raise ValueError(f"{where}: the record has no `conversations`")
        image = record.get("image")
        paths = [] if image is None else image if isinstance(image, list) else [image]
        if not paths and image is not None or not all(isinstance(p, str) and p for p in paths):
            raise ValueError(f"{where}: `image` (={image!r}) has to be a path or a non-empty list of paths")
        resolved = [Path(p) if Path(p).is_absolute() else folder / p for p in paths]
        for path_ in resolved:
            if check_images and not path_.is_file():
                raise ValueError(f"{where}: image file {str(path_)!r} not found (resolved against {str(folder)!r})")
        # One image: its path as text (as before); several: a list of them.
        image = None if not resolved else str(resolved[0]) if isinstance(image, str) else [str(p) for p in resolved]
        messages = to_messages(record["conversations"], len(resolved), where)
        sid = str(record["id"]) if record.get("id") is not None else str(index)
        seen[sid] = seen.get(sid, 0) + 1
        if seen[sid] > 1:
            logger.warning("%s: repeated id %r renamed %r", where, sid, f"{sid}#{seen[sid]}")
            sid = f"{sid}#{seen[sid]}"
        examples.append({"id": sid, "index": index, "image": image, "messages": messages})
    if not examples:
        raise ValueError(f"{path}: no records")
    return examples


def _open_image(image):
    # Paths are opened when their batch is collated; PIL images pass through.
    if isinstance(image, (str, Path)):
        from vcontrast.regions import open_image

        return open_image(image)
    return image


_KEY_STRIDE = 1_000_003  # contrast key offset of a record's second, third, ... image


def _example_images(example: dict, sid: str) -> list:
    # The example's images, in order: `image` (one, or a list, as LLaVA-OneVision writes it) or `images` (TRL's rows).
    image, images = example.get("image"), example.get("images")
    if image is not None and images is not None:
        raise ValueError(f"example {sid!r} has both `image` and `images`; use one")
    if images is None:
        images = [] if image is None else image
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _example_messages(example: dict) -> list[dict]:
    # `vcontrast.toy.train.collate`'s examples ({"image", "prompt", "answer"}) are one user turn and one answer.
    if "messages" in example:
        return example["messages"]
    if "prompt" in example and "answer" in example:
        user = [{"type": "image"}] if example.get("image") is not None else []
        return [
            {"role": "user", "content": [*user, {"type": "text", "text": example["prompt"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": example["answer"]}]},
        ]
    raise ValueError(f"example {example.get('id', '')!r} has neither `messages` nor `prompt` and `answer`")


class ConversationCollator:
    """Batch conversation examples for a VLM: chat template, images, labels on the assistant turns only.

    Each conversation is rendered turn by turn with the processor's chat template: the text before each assistant
    turn (the template with the generation prompt) is left unlabelled, the assistant turn (its text and the
    template's end-of-turn text, e.g. `</s>` or `<|im_end|>`) is labelled. If an assistant turn as rendered contains
    no special token, the tokenizer's eos token is appended to it, so the model learns to stop. The whole
    conversation is then tokenized once with its image, and the labelled characters are mapped to tokens.

    Called on a list of examples (from [`read_conversations`], or `{"image", "prompt", "answer"}` dicts as
    `vcontrast.toy.train.collate` takes; images as PIL images or paths), it returns the processor's outputs
    (`input_ids`, `attention_mask` (B, T), pixel inputs) and `labels` (B, T), unshifted: the model shifts them.

    Args:
        processor (`ProcessorMixin`): the model's processor, with a chat template and a fast tokenizer.
        contrast (`VisualCondition`, *optional*): an image-space CAL contrast condition (`PatchMask`, `GaussianBlur`,
            `DiffusionNoise`); its pixel inputs are added as `contrast_pixel_values` etc. (see
            [`vcontrast.cal.add_contrast_pixels`]), keyed by each example's `index` so random masks are reproducible.
        max_length (`int`, *optional*): cut longer sequences on the right (right padding only); the image must stay
            whole, and a sample left without labels raises an error.
        padding_side (`str`, *optional*, defaults to `"right"`): "right" for training, "left" to continue sequences.
        pad_to_multiple_of (`int`, *optional*): pad lengths to a multiple of this (fewer shapes: faster on CPU).
        plain (`bool`, *optional*, defaults to `False`): LLaVA's *plain* format of its pre-training stage instead of
            the chat template: the image placeholder(s), then the first answer (the caption) and eos, labelled; the
            user's text is dropped, as LLaVA's `preprocess_plain` does. For image-caption pairs.

    Examples:

    ```python
    >>> collate = ConversationCollator(processor)
    >>> batch = collate(read_conversations("train.jsonl")[:8])
    >>> processor.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    'Sleeping on the sofa.</s> Red.</s>'
    ```
    """

    def __init__(
        self,
        processor,
        *,
        contrast=None,
        max_length: int | None = None,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        plain: bool = False,
    ):
        from vcontrast.conditions import VisualCondition

        if type(processor).__name__.startswith("PaliGemma"):
            # Its answer has to be the processor's `suffix=` (causal, token type 1): in the bidirectional prefix,
            # where a chat-rendered answer would land, the position predicting a label sees it.
            raise ValueError(
                f"ConversationCollator does not support PaliGemma ({type(processor).__name__}): its answer has to be "
                "the processor's `suffix=`; build batches with processor(images=..., text=prompts, suffix=answers), "
                "whose `labels` CAL takes as they are"
            )
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"the processor ({type(processor).__name__}) has no chat template")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or not getattr(tokenizer, "is_fast", False):
            raise ValueError("ConversationCollator needs a processor with a fast tokenizer (character offsets)")
        if padding_side not in ("left", "right"):
            raise ValueError(f"`padding_side` (={padding_side!r}) has to be 'left' or 'right'")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"`max_length` (={max_length!r}) has to be a positive integer")
        if max_length is not None and padding_side != "right":
            raise ValueError("`max_length` needs padding_side='right'")
        if contrast is not None and (not isinstance(contrast, VisualCondition) or contrast.drops_image):
            raise ValueError(f"`contrast` (={contrast!r}) has to be an image-space condition (or None)")
        self.processor = processor
        self.tokenizer = tokenizer
        self.contrast = contrast
        self.max_length = max_length
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.plain = plain
        if plain and not getattr(processor, "image_token", None):
            raise ValueError(
                f"the plain format needs a processor with an `image_token`; {type(processor).__name__} has none"
            )
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
        self._specials = [t for t in specials if t not in (tokenizer.pad_token, tokenizer.unk_token)]

    def _render(self, messages: list[dict], generation: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def _with_eos(self, answer: str) -> str:
        eos = self.tokenizer.eos_token
        if not eos or any(token in answer for token in self._specials):
            return answer
        body = answer.rstrip()
        return body + eos + answer[len(body) :]

    def render(self, messages: list[dict], sid: str = "") -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the character spans `[start, end)` of its labelled assistant turns.

        Examples:

        ```python
        >>> text, spans = ConversationCollator(processor).render(example["messages"])
        >>> [text[s:e] for s, e in spans]
        [' Sleeping on the sofa.</s>', ' Red.</s>']
        ```
        """
        if self.plain:
            return self._render_plain(messages, sid)
        pieces: list[tuple[str, bool]] = []
        done = ""  # the template's text up to the end of the last assistant turn placed so far
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:k], generation=True)
            turn = self._render(messages[: k + 1], generation=False)
            if not turn.startswith(done):
                raise ValueError(
                    f"sample {sid!r}: the chat template renders earlier turns differently once later turns follow, "
                    "so the assistant turns cannot be located"
                )
            if turn.startswith(before) and len(before) >= len(done):
                start = len(before)
            else:
                # The generation prompt differs from how the template writes an assistant turn: the labels start
                # where the turn's own text does, searched after the part both renderings share.
                answer = "".join(c.get("text", "") for c in message["content"] if isinstance(c, dict)).strip()
                start = turn.find(answer, max(len(_common_prefix(before, turn)), len(done))) if answer else -1
                if start < 0:
                    raise ValueError(f"sample {sid!r}: assistant turn {k} not found in the chat template's text")
            # Whitespace after the turn's last token is the template's separator before the next turn: unlabelled,
            # or a SentencePiece tokenizer's `▁USER:` (which starts at that space) would be learned as the answer's.
            answer = self._with_eos(turn[start:])
            body = answer.rstrip()
            pieces += [(turn[len(done) : start], False), (body, True), (answer[len(body) :], False)]
            done = turn
        full = self._render(messages, generation=False)
        if not full.startswith(done):
            raise ValueError(f"sample {sid!r}: the chat template's full text does not extend its last assistant turn")
        pieces.append((full[len(done) :], False))
        text, spans = "", []
        for piece, labelled in pieces:
            if labelled:
                spans.append((len(text), len(text) + len(piece)))
            text += piece
        return text, spans

    def _render_plain(self, messages: list[dict], sid: str) -> tuple[str, list[tuple[int, int]]]:
        # LLaVA's plain format: <image> (one per image) + caption + eos; only the caption and eos are labelled.
        answers = [m for m in messages if m["role"] == "assistant"]
        if len(answers) != 1:
            raise ValueError(
                f"sample {sid!r}: the plain format takes one caption (assistant turn), got {len(answers)}"
            )
        n_images = sum(1 for m in messages for c in m["content"] if isinstance(c, dict) and c.get("type") == "image")
        processor = self.processor
        image = processor.image_token
        start, end = getattr(processor, "vision_start_token", None), getattr(processor, "vision_end_token", None)
        if start and end:  # Qwen2-VL marks each image block
            image = start + image + end
        caption = "".join(c.get("text", "") for c in answers[0]["content"] if isinstance(c, dict)).strip()
        prefix = image * n_images
        text = prefix + caption + (self.tokenizer.eos_token or "")
        return text, [(len(prefix), len(text))]

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("`examples` (=[]) has to hold at least one example")
        texts, spans, images, keys, ids = [], [], [], [], []
        for n, example in enumerate(examples):
            if not isinstance(example, dict):
                raise ValueError(f"an example has to be a dict, got {type(example).__name__}")  # noqa: TRY004
            sid = str(example.get("id", n))
            text, example_spans = self.render(_example_messages(example), sid)
            texts.append(text)
            spans.append(example_spans)
            ids.append(sid)
            example_images = [_open_image(image) for image in _example_images(example, sid)]
            images.append(example_images)
            index = int(example.get("index", n))
            # Contrast keys: the record index for its first image (reproducible random masks), offset for more.
            keys += [index + j * _KEY_STRIDE for j in range(len(example_images))]
        # Always one list per example: SmolVLM's, Gemma 3's and Gemma 4's processors refuse a flat list for a batch
        # of several samples ("Found [1, 0] <image> tokens and [1] images per sample"); every other family's gives
        # the same tensors for both forms (checked on the tiny models).
        if not any(images):
            images = []
        kwargs = {
            "padding": True,
            "padding_side": self.padding_side,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "return_tensors": "pt",
        }
        batch = dict(self.processor(images=images or None, text=texts, **kwargs))
        batch.pop("labels", None)
        batch["labels"] = self._labels(batch, texts, spans, ids)
        if self.contrast is not None and images:
            from vcontrast.cal.loss import add_contrast_pixels

            batch = add_contrast_pixels(batch, self.processor, images, texts, self.contrast, keys=keys, **kwargs)
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            batch = self._truncate(batch, ids)
        return batch

    def _labels(self, batch: dict, texts: list[str], spans: list, ids: list[str]) -> torch.Tensor:
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(input_ids, -100)
        width = input_ids.shape[1]
        for b, (text, example_spans) in enumerate(zip(texts, spans, strict=True)):
            encoded = self.tokenizer(text, return_offsets_mapping=True)
            plain_ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
            length = int(attention[b].sum())
            first = width - length if self.padding_side == "left" else 0
            # The processor expands the image placeholder into many tokens; the labelled turns all come after the
            # image, so they sit at the same distance from the end in both tokenizations.
            shift = first + length - len(plain_ids)
            # A token belongs to a turn if it overlaps it: one that merges the prompt's last characters with the
            # answer's first is the answer's (the candidate-token rule of `vcontrast.candidates`).
            positions = [
                j
                for j, (start, end) in enumerate(offsets)
                if end > start and any(start < e and end > s for s, e in example_spans)
            ]
            if not positions:
                raise ValueError(f"sample {ids[b]!r}: no assistant token to train on (all labels would be -100)")
            expanded = [j + shift for j in positions]
            gold = torch.tensor([plain_ids[j] for j in positions])
            if min(expanded) < first or not torch.equal(input_ids[b, expanded], gold):
                raise ValueError(
                    f"sample {ids[b]!r}: the processor's tokens of the assistant turns differ from the tokenizer's; "
                    "cannot place the labels"
                )
            labels[b, expanded] = gold
        return labels

    def _truncate(self, batch: dict, ids: list[str]) -> dict:
        cut = self.max_length
        image_token = getattr(self.processor, "image_token_id", None)
        out = dict(batch)
        for key in _SEQUENCE_KEYS:
            if torch.is_tensor(batch.get(key)) and batch[key].shape[:2] == batch["input_ids"].shape:
                out[key] = batch[key][:, :cut]
        for b, sid in enumerate(ids):
            if image_token is not None and (batch["input_ids"][b, cut:] == image_token).any():
                raise ValueError(f"sample {sid!r}: `max_length` (={cut}) cuts into the image tokens")
            if not (out["labels"][b] != -100).any():
                raise ValueError(
                    f"sample {sid!r}: no assistant token left within `max_length` (={cut}); raise it or drop the "
                    "sample"
                )
        return out


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
