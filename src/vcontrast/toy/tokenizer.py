"""The toy model's word-level tokenizer and its `LlavaProcessor` (image processor + tokenizer + chat template).

Every word the toy templates emit is one token, so per-token metrics (teacher-forced accuracy on colour words, CAL's
per-token weights) are per-word metrics. Everything is built offline from `tokenizers` and transformers' own classes
and round-trips through `save_pretrained` / `AutoProcessor.from_pretrained`:

- tokenizer: `tokenizers.models.WordLevel` over specials + role markers + the toy vocabulary, a lower-casing
  normaliser and a pre-tokenizer that split text the way `vcontrast.toy.grammar.words` does (letter runs, single
  digits, single punctuation marks), `<s>` prepended, wrapped in `PreTrainedTokenizerFast`;
- image processor: `CLIPImageProcessorPil` (transformers' PIL backend, no torchvision), resizing to a fixed
  `IMAGE_SIZE` square with mean = std = 0.5, so black is -1 after normalisation;
- `LlavaProcessor` with `patch_size`, `vision_feature_select_strategy="default"` and one CLS token, so it expands
  `<image>` into `(IMAGE_SIZE // PATCH_SIZE) ** 2` placeholder tokens, exactly the number of features the vision tower
  yields after dropping CLS.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable
from typing import ClassVar

logger = logging.getLogger(__name__)

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IMAGE]  # ids 0..4, in this order
USER, ASSISTANT = "USER:", "ASSISTANT:"
ROLE_TOKENS = [USER, ASSISTANT]  # ids 5, 6: the chat template's role markers, special so decoding skips them

# Lower-case letter runs, single digits, single other non-space characters, after lower-casing: the same split as
# `vcontrast.toy.grammar.words`, so every vocabulary word is one token and "What" reads as "what".
WORD_PATTERN = r"[a-z]+|[0-9]|[^\sa-z0-9]"

IMAGE_SIZE = 64
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 64: patches only, the CLS token is dropped ("default")

# LLaVA-1.5 style: "USER: <image>\n{question} ASSISTANT: {answer}</s>". The assistant turn ends with </s>, which the
# model learns to emit; `add_generation_prompt` leaves the text at "ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\\n' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}"
    "{% if not loop.last %}{{ ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


def build_tokenizer(words: Iterable[str]):
    """Build the word-level tokenizer over `words` (plus the special tokens and role markers).

    Args:
        words (`Iterable[str]`): the vocabulary, e.g. `vcontrast.toy.scenes.vocabulary()`. Duplicates are dropped;
            the order of first appearance sets the ids, after `SPECIAL_TOKENS` (0..4) and `ROLE_TOKENS` (5, 6).

    Returns:
        `PreTrainedTokenizerFast`: lower-cases, prepends `<s>`, pads with `<pad>` (id 0) on the right, maps unknown
        words to `<unk>`.

    Examples:

    ```python
    >>> tok = build_tokenizer(["what", "color", "is", "the", "circle", "?", "red"])
    >>> tok.convert_ids_to_tokens(tok("What color is the circle?")["input_ids"])
    ['<s>', 'what', 'color', 'is', 'the', 'circle', '?']
    ```
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [*SPECIAL_TOKENS, *ROLE_TOKENS, *words]:
        if not isinstance(w, str) or not w or any(c.isspace() for c in w):
            raise ValueError(f"vocabulary word {w!r} must be a non-empty string without whitespace")
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Specials are matched on the raw text, before the normaliser and pre-tokenizer could split "<image>" or
    # lower-case "USER:".
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in [*SPECIAL_TOKENS, *ROLE_TOKENS]])
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    # WordPiece's decoder without `cleanup` joins tokens with single spaces, which is exactly how the toy grammar
    # writes text ("a red circle , and ..."), so toy text decodes back to itself; no toy word starts with "##".
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="right",
        model_max_length=512,
    )


def build_image_processor(image_size: int = IMAGE_SIZE):
    """The PIL-backend CLIP image processor resizing to a fixed `image_size` square (mean = std = 0.5).

    Args:
        image_size (`int`, *optional*, defaults to `IMAGE_SIZE`): output height and width in pixels.

    Returns:
        `CLIPImageProcessorPil`: works without torchvision; a black image becomes all -1.
    """
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if image_size <= 0:
        raise ValueError(f"`image_size` (={image_size}) must be positive")
    square = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(
        size=square,
        crop_size=square,
        do_center_crop=False,
        resample=2,  # bilinear: keeps thin shapes visible when large scenes are shrunk
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_processor(words: Iterable[str], *, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE):
    """Build the toy `LlavaProcessor`: word-level tokenizer, PIL image processor and the LLaVA-1.5 chat template.

    Args:
        words (`Iterable[str]`): the vocabulary (see `build_tokenizer`).
        image_size (`int`, *optional*, defaults to `IMAGE_SIZE`): square input size of the vision tower.
        patch_size (`int`, *optional*, defaults to `PATCH_SIZE`): the vision tower's patch size; must divide
            `image_size`.

    Returns:
        `LlavaProcessor`: `processor(images=img, text=prompt)` expands `<image>` into `(image_size // patch_size) ** 2`
        placeholder tokens.

    Examples:

    ```python
    >>> processor = build_processor(vocabulary())
    >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is it?"}]}]
    >>> processor.apply_chat_template(messages, add_generation_prompt=True)
    'USER: <image>\\nwhat color is it? ASSISTANT:'
    ```
    """
    from transformers import LlavaProcessor

    if patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"`patch_size` (={patch_size}) must be positive and divide `image_size` (={image_size})")
    return LlavaProcessor(
        image_processor=build_image_processor(image_size),
        tokenizer=build_tokenizer(words),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of `text` that `tokenizer` maps to its unknown token, in order, without repeats (ignoring case).

    Examples:

    ```python
    >>> unknown_words(build_tokenizer(["what", "is", "the", "?"]), "What is in the box?")
    ['in', 'box']
    ```
    """
    unk = tokenizer.unk_token_id
    if unk is None or not isinstance(text, str):
        return []
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    words = [text[start:end] for i, (start, end) in zip(encoding.ids, encoding.offsets, strict=True) if i == unk]
    first = {}  # the tokenizer lower-cases: "Zebra" and "zebra" are one word
    for word in words:
        first.setdefault(word.lower(), word)
    return [w for w in first.values() if w]


def warn_unknown_words(tokenizer) -> None:
    """Make `tokenizer` (the toy one, loaded) warn once per new word it does not know when it encodes text.

    The toy model's word-level vocabulary maps every other word to `<unk>`, and a prompt such as "What is in the
    box?" then gets an answer without any sign that the model never read "in" and "box". The warning lists them.
    """
    if isinstance(tokenizer, _WarnsUnknownWords):
        return
    base = type(tokenizer)
    cls = getattr(_WARNING_CLASSES, base.__name__, None)
    if cls is None or cls.__mro__[2] is not base:
        # Same name as the base (save_pretrained writes the same files); pickle finds it by its qualified name.
        namespace = {"__module__": __name__, "__qualname__": f"_WARNING_CLASSES.{base.__name__}"}
        cls = type(base.__name__, (_WarnsUnknownWords, base), namespace)
        setattr(_WARNING_CLASSES, base.__name__, cls)
    tokenizer.__class__ = cls


_WARNING_CLASSES = types.SimpleNamespace()  # the tokenizer classes `warn_unknown_words` made, by base name


class _WarnsUnknownWords:
    # Mixed into the loaded tokenizer's class by `warn_unknown_words`.
    _warned_words: ClassVar[set[str]] = set()  # once per process

    def __call__(self, text=None, *args, **kwargs):
        texts = [text] if isinstance(text, str) else text if isinstance(text, list | tuple) else []
        new = [w for t in texts for w in unknown_words(self, t) if w.lower() not in _WarnsUnknownWords._warned_words]
        if new:
            new = list(dict.fromkeys(new))
            _WarnsUnknownWords._warned_words.update(w.lower() for w in new)
            logger.warning(
                "the toy model does not know the word(s) %s and reads them as %s; its vocabulary is the toy "
                "grammar's (docs/toy_model.md)",
                ", ".join(repr(w) for w in new),
                UNK,
            )
        return super().__call__(text, *args, **kwargs)


def chat_prompt(processor, question: str) -> str:
    """The generation prompt for one image and one question: ``"USER: <image>\\n{question} ASSISTANT:"``.

    Args:
        processor (`ProcessorMixin`): any processor with a chat template (the toy one, or a real LLaVA's).
        question (`str`): the user's text.

    Returns:
        `str`: the prompt text, not yet tokenized.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
