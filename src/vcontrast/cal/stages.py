"""Training stages of the LLaVA recipe the CAL paper follows: which parts of a VLM train, and at which learning rate.

A VLM has three parts: the vision tower, the projector (the connector between tower and language model) and the
language model (embeddings, decoder, head). LLaVA trains them in two stages, and the CAL paper applies its loss to
either (its Table 3: most of the gain comes from instruction tuning):

- `"pt"` (pre-training, feature alignment): the projector only, on image-caption pairs in LLaVA's *plain* format
  (the image, then the caption; no chat template, no instruction);
- `"it"` (instruction tuning): projector and language model; the tower frozen, or trained at a fraction of the
  learning rate (`tower_lr_ratio`);
- `"all"`: every parameter at the same learning rate.

The parts are found by parameter name (`vision_tower`, `visual`, `vision_model`; `multi_modal_projector`,
`connector`, Qwen2-VL's `visual.merger`, Qwen3-VL's `visual.deepstack_merger_list`, LLaVA-NeXT's `image_newline`),
which covers every family vcontrast supports.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LORA_TARGETS", "STAGES", "apply_stage", "lora_config", "model_part", "stage_optimizer"]

STAGES = ("pt", "it", "all")
# LLaVA's LoRA recipe: every linear layer of the language model's decoder.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Qwen3-VL's `deepstack_merger_list` projects intermediate tower features into early LM layers; LLaVA-NeXT's and
# OneVision's `image_newline` is a learned embedding the connector inserts after each row of image features.
_PROJECTOR = ("multi_modal_projector", "connector", "merger", "deepstack_merger_list", "image_newline")
_TOWER = ("vision_tower", "visual", "vision_model")


def model_part(name: str) -> str:
    """`"projector"`, `"tower"` or `"language"`: the part of a VLM a parameter (by its dotted name) belongs to.

    Examples:

    ```python
    >>> model_part("model.visual.merger.mlp.0.weight"), model_part("model.vision_tower.encoder.layers.0.fc1.weight")
    ('projector', 'tower')
    ```
    """
    parts = name.split(".")
    if any(p in _PROJECTOR for p in parts):
        return "projector"
    if any(p in _TOWER for p in parts):
        return "tower"
    return "language"


def _check(stage: str, tower_lr_ratio: float | None) -> float:
    if stage not in STAGES:
        raise ValueError(f"`stage` (={stage!r}) has to be one of {', '.join(STAGES)}")
    if tower_lr_ratio is None:
        return {"pt": 0.0, "it": 0.0, "all": 1.0}[stage]
    if not isinstance(tower_lr_ratio, (int, float)) or not 0 <= tower_lr_ratio <= 1:
        raise ValueError(f"`tower_lr_ratio` (={tower_lr_ratio!r}) has to be a number in [0, 1]")
    if stage == "pt" and tower_lr_ratio > 0:
        raise ValueError(f"stage 'pt' trains the projector only: `tower_lr_ratio` (={tower_lr_ratio}) has to be 0")
    return float(tower_lr_ratio)


def apply_stage(model: nn.Module, stage: str, tower_lr_ratio: float | None = None) -> dict[str, int]:
    """Set `requires_grad` for `stage` and return the number of trainable parameters per part.

    Args:
        model (`PreTrainedModel`): the VLM.
        stage (`str`): `"pt"`, `"it"` or `"all"` (see the module docstring).
        tower_lr_ratio (`float`, *optional*): the vision tower's learning rate as a fraction of the others' (0 =
            frozen); defaults to 0 for `"pt"` and `"it"`, 1 for `"all"`.

    Examples:

    ```python
    >>> apply_stage(model, "pt")
    {'projector': 1050624, 'tower': 0, 'language': 0}
    ```
    """
    ratio = _check(stage, tower_lr_ratio)
    trains = {"projector": True, "tower": ratio > 0, "language": stage != "pt"}
    counts = {"projector": 0, "tower": 0, "language": 0}
    for name, param in model.named_parameters():
        part = model_part(name)
        param.requires_grad_(trains[part])
        counts[part] += param.numel() if trains[part] else 0
    if stage == "pt" and counts["projector"] == 0:
        raise ValueError(
            f"stage 'pt' trains the projector, but {type(model).__name__} has no parameter under "
            f"{', '.join(_PROJECTOR)}; use stage 'it' or 'all'"
        )
    return counts


def stage_optimizer(
    model: nn.Module, learning_rate: float, tower_lr_ratio: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer | None:
    """AdamW with the vision tower at `learning_rate * tower_lr_ratio`, or None when that ratio is 0 or 1 (then the
    Trainer's own optimizer, over the trainable parameters, is the same thing)."""
    if tower_lr_ratio in (0, 1):
        return None
    tower = [p for n, p in model.named_parameters() if p.requires_grad and model_part(n) == "tower"]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and model_part(n) != "tower"]
    groups = [
        {"params": rest, "lr": learning_rate},
        {"params": tower, "lr": learning_rate * tower_lr_ratio},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)


def lora_config(model: nn.Module, r: int, targets: tuple[str, ...] | list[str] = LORA_TARGETS) -> object:
    """A PEFT `LoraConfig` for instruction tuning as LLaVA's LoRA recipe does it: LoRA (rank `r`, alpha `2r`) on the
    language model's `targets` layers (never the vision tower's layers of the same names), the projector trained
    in full (`modules_to_save`; a container such as Qwen3-VL's `deepstack_merger_list` is listed by its children),
    everything else frozen. LLaVA-NeXT's and OneVision's `image_newline`, a bare parameter that `modules_to_save`
    cannot hold, stays frozen. Needs peft.

    Examples:

    ```python
    >>> model = peft.get_peft_model(model, lora_config(model, r=16, targets=["q_proj", "v_proj"]))
    ```
    """
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"`lora_r` (={r!r}) has to be a positive integer")
    targets = [t.strip() for t in targets if t.strip()]
    if not targets:
        raise ValueError("`lora_targets` names no module")
    try:
        import peft
    except ImportError as error:
        raise ValueError("LoRA needs peft: pip install peft") from error
    names = [n for n, m in model.named_modules() if n and model_part(n) == "language" and n.split(".")[-1] in targets]
    if not names:
        raise ValueError(
            f"`lora_targets` (={','.join(targets)}) matches no layer of {type(model).__name__}'s language model"
        )
    return peft.LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=names, modules_to_save=_projector_modules(model)
    )


def _projector_modules(model: nn.Module) -> list[str]:
    # PEFT's `modules_to_save` wraps a module and calls it, so a container (Qwen3-VL's `deepstack_merger_list`, an
    # nn.ModuleList) is refused with a TypeError: list its children instead. A bare parameter (LLaVA-NeXT's
    # `image_newline`) is no module and cannot be listed: it stays frozen under LoRA (docs/cal.md says so).
    modules = dict(model.named_modules())
    found = [n for n in modules if n and n.split(".")[-1] in _PROJECTOR]
    found = [n for n in found if not any(n.startswith(f"{other}.") for other in found)]  # the outermost only
    names = []
    while found:
        name = found.pop()
        if isinstance(modules[name], (nn.ModuleList, nn.ModuleDict)):
            found.extend(f"{name}.{child}" for child, _ in modules[name].named_children())
        else:
            names.append(name)
    return sorted(names)
