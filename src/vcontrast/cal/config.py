"""`CALConfig`: the hyperparameters of Contrastive ALignment (arXiv 2405.17871), checked when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from vcontrast.conditions import VisualCondition, _is_int, _is_real, parse_condition

ATTENTION_MASK = "attention_mask"  # the paper's own no-image form (same name as in `vcontrast.contrast`)
NORMALIZE = ("batch", "sample")


def parse_contrast(spec: str | VisualCondition) -> VisualCondition | str:
    """A CAL contrast condition from a condition object or a CLI text.

    Besides [`vcontrast.conditions.parse_condition`]'s grammar (`none`, `patch:0.5`, `blur:10`, `noise:500`), the
    text `attention_mask` (or `paper`) selects the paper's own no-image form: the full sequence with the image tokens
    masked out of the attention mask (the vision tower runs; for exact reproduction).

    Examples:

    ```python
    >>> parse_contrast("patch:0.7")
    PatchMask(ratio=0.7, grid=(10, 20), seed=0, fill=(0, 0, 0))
    >>> parse_contrast("paper")
    'attention_mask'
    ```
    """
    if isinstance(spec, VisualCondition):
        return spec
    if isinstance(spec, str) and "".join(spec.split()).lower() in (ATTENTION_MASK, "attention-mask", "paper"):
        return ATTENTION_MASK
    if not isinstance(spec, str):
        # ValueError like every other bad value, so a CLI catches one exception type.
        raise ValueError(f"`contrast` (={spec!r}) has to be a VisualCondition or a text like 'patch:0.5'")  # noqa: TRY004
    return parse_condition(spec)


@dataclass
class CALConfig:
    """
    Configuration of CAL's token weights and loss (DESIGN.md §1).

    For each label token `j`: `delta_j = l(t_j | image) - l(t_j | contrast)` (raw gold-token logits, float32, no
    gradient, dropout off in the contrast pass), `w_j = clamp(delta_j, alpha, beta)`, `w~ = avgpool_window(w)` over the
    label tokens of the same sample only, and `loss = sum(w~ * CE) / sum(w~)` (over the batch or per sample, see
    `normalize`).

    Args:
        alpha (`float`, *optional*, defaults to `1.0`):
            Lower clamp of the logit gain; the weight of tokens the image does not support. Must be `>= 0`.
        beta (`float`, *optional*, defaults to `5.0`):
            Upper clamp of the logit gain. Must be `> alpha`.
        window (`int`, *optional*, defaults to `3`):
            Width of the average pooling over neighbouring label tokens (stride 1, same length). Odd and `>= 1`;
            `1` turns pooling off.
        contrast (`VisualCondition` or `str`, *optional*, defaults to `"none"`, i.e. `NoImage()`):
            The contrast condition: `NoImage()` (image tokens dropped, vision tower skipped: the cheap exact form),
            `"attention_mask"` (the paper's form: image tokens masked out of the attention), or an image-space
            condition (`PatchMask`, `GaussianBlur`, `DiffusionNoise`), whose contrast pixels the batch must carry as
            `contrast_pixel_values` etc. (see [`ContrastCollator`]). Texts are parsed by [`parse_contrast`].
        normalize (`str`, *optional*, defaults to `"batch"`):
            `"batch"`: `sum(w * CE) / sum(w)` over all label tokens of the (accumulated, all-device) batch, as the
            official code does (it produced the paper's tables, hence the default). `"sample"`: the mean over samples
            of each sample's own `sum(w * CE) / sum(w)`, as the paper's Eq. 5 writes it.

    Examples:

    ```python
    >>> CALConfig(alpha=1.0, beta=5.0, window=3).contrast
    NoImage()
    >>> CALConfig(contrast="blur:10").contrast.sigma
    10.0
    ```
    """

    alpha: float = field(
        default=1.0, metadata={"help": "Lower clamp of the image's logit gain (weight of non-visual tokens), >= 0."}
    )
    beta: float = field(default=5.0, metadata={"help": "Upper clamp of the image's logit gain, > alpha."})
    window: int = field(
        default=3, metadata={"help": "Average-pooling window over neighbouring label tokens (odd, >= 1)."}
    )
    # Typed `str` so that `HfArgumentParser` makes it a text flag; `__post_init__` turns it into a condition.
    contrast: str = field(
        default="none",
        metadata={
            "help": "Contrast condition: 'none' (no image, default), 'attention_mask' (the paper's form), "
            "'patch:RATIO', 'blur:SIGMA' or 'noise:STEP'."
        },
    )
    normalize: str = field(
        default="batch",
        metadata={
            "help": "'batch': sum(w*CE)/sum(w) over the whole (accumulated) batch, the official code's (default); "
            "'sample': mean of per-sample weighted means, the paper's Eq. 5.",
            "choices": list(NORMALIZE),
        },
    )

    def __post_init__(self) -> None:
        if not _is_real(self.alpha) or self.alpha < 0:
            raise ValueError(f"`alpha` (={self.alpha!r}) has to be a finite number >= 0")
        if not _is_real(self.beta) or self.beta <= self.alpha:
            raise ValueError(f"`beta` (={self.beta!r}) has to be a finite number > alpha (={self.alpha!r})")
        if not _is_int(self.window) or self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"`window` (={self.window!r}) has to be an odd integer >= 1")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"`normalize` (={self.normalize!r}) has to be one of {', '.join(NORMALIZE)}")
        self.alpha, self.beta, self.window = float(self.alpha), float(self.beta), int(self.window)
        self.contrast = parse_contrast(self.contrast)

    @property
    def drops_image(self) -> bool:
        """Whether the contrast pass drops the image tokens (`NoImage`): text tokens only, no vision tower."""
        return getattr(self.contrast, "drops_image", False)

    @property
    def uses_pixels(self) -> bool:
        """Whether the contrast pass needs contrast pixels in the batch (an image-space condition)."""
        return isinstance(self.contrast, VisualCondition) and not self.drops_image
