"""`CALTrainer`: a `transformers.Trainer` whose loss is CAL's, exact under gradient accumulation and data parallelism.

Like TRL's `GKDTrainer`, it overrides `compute_loss` (which sees the model and the inputs; `compute_loss_func` sees
neither) and calls the pure loss ([`vcontrast.cal.cal_loss`]). The one subtlety is normalisation: `"batch"` divides
by the sum of the weights over the whole batch, but with gradient accumulation (and several devices) that sum is only
known after the last micro-batch. The trainer backpropagates `sum(w * CE) / N` for each micro-batch, where `N` is the
step's number of label tokens over all micro-batches and devices (counted before the first forward, like
transformers' `num_items_in_batch`), sums `sum(w)` over the step (one all-reduce of a few scalars per optimizer step)
and rescales the synchronised gradients by `N / sum(w)` before clipping and the optimizer step. The update is then
exactly the one of a single batch holding every sample of the step.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from vcontrast._compat import CACHE_NAMES
from vcontrast.cal.config import CALConfig
from vcontrast.cal.loss import WEIGHTS_KEY, CALOutput, cal_label_mask, cal_loss
from vcontrast.models import get_adapter

logger = logging.getLogger(__name__)

__all__ = ["DELTA_BINS", "CALTrainer", "CALTrainerMixin", "gatherable_outputs"]

# Edges of the logged histogram of logit gains (the paper's Fig. 4): bins (-inf, -4), [-4, -2), ..., [10, inf).
DELTA_BINS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def _bin_names() -> list[str]:
    # `cal/delta_hist/<lo>_<hi>`: the share of label tokens whose gain falls in [lo, hi).
    edges = ["-inf", *(f"{e:g}" for e in DELTA_BINS), "inf"]
    return [f"cal/delta_hist/{lo}_{hi}" for lo, hi in itertools.pairwise(edges)]


def _is_gatherable(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value)


def gatherable_outputs(outputs: Any) -> Any:
    """The model output with only what `Trainer.evaluate`/`predict` can pad and gather across processes.

    The Trainer turns every entry of the output it gets from `compute_loss(..., return_outputs=True)` into a
    prediction and pads it with accelerate, which accepts only (nested tuples of) tensors. Releases differ in what a
    VLM returns besides the logits: transformers 5.24 adds `image_outputs` (a nested output holding lists and
    `None`s) and calls the cache `cache`, which LLaVA's `keys_to_ignore_at_inference` does not list. Kept: tensors
    and tuples of tensors (`logits`, `hidden_states`, ...); dropped: caches under any name and everything else.

    Args:
        outputs (`ModelOutput` or `dict`): the model's forward output.

    Returns:
        An output of the same class (a `dict` for a plain dict) with only the gatherable entries.
    """
    if not isinstance(outputs, dict):
        return outputs
    kept = {k: v for k, v in outputs.items() if k not in CACHE_NAMES and _is_gatherable(v)}
    if type(outputs) is dict:
        return kept
    return type(outputs)(**kept)


@dataclass
class _Step:
    # Book-keeping of one optimizer step (one gradient-accumulation window) on this process.
    size: int  # micro-batches in the window
    num_items: torch.Tensor  # global normaliser: label tokens ("batch") or samples ("sample"), all devices
    seen: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            value = value.detach().double()
            self.sums[key] = self.sums[key] + value if key in self.sums else value


def _refuse_other_losses(trainer: Any) -> None:
    # CAL's `compute_loss` replaces the Trainer's: a loss option set alongside would be silently ignored, so refuse it.
    name = type(trainer).__name__
    smoothing = getattr(trainer.args, "label_smoothing_factor", 0.0)
    if smoothing:
        raise ValueError(
            f"{name} trains with CAL's weighted token loss, which has no label smoothing; "
            f"`label_smoothing_factor` (={smoothing}) would be ignored: set it to 0"
        )
    loss_type = getattr(trainer.args, "loss_type", "nll")
    if loss_type != "nll":
        raise ValueError(
            f"{name} trains with CAL's weighted token loss; TRL's `loss_type={loss_type!r}` would be ignored: "
            "use loss_type='nll'"
        )
    if getattr(trainer, "compute_loss_func", None) is not None:
        raise ValueError(
            f"{name} trains with CAL's weighted token loss; the `compute_loss_func` passed would be ignored "
            "(subclass the trainer and call vcontrast.cal.cal_loss to change the loss)"
        )


class CALTrainerMixin:
    """Adds CAL's loss to a `transformers.Trainer` subclass (see [`CALTrainer`]); mix it in before the Trainer."""

    # The loss returned by `compute_loss` is already normalised over the whole accumulated step.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, cal_config: CALConfig | None = None, **kwargs):
        if cal_config is not None and not isinstance(cal_config, CALConfig):
            raise ValueError(f"`cal_config` (={cal_config!r}) has to be a vcontrast.cal.CALConfig")
        self.cal_config = CALConfig() if cal_config is None else cal_config
        super().__init__(*args, **kwargs)
        _refuse_other_losses(self)
        if self.args.n_gpu > 1:
            raise ValueError(
                f"{type(self).__name__} does not support `nn.DataParallel` (n_gpu={self.args.n_gpu}); launch with "
                "`accelerate launch` or `torchrun`"
            )
        get_adapter(self.model)  # fail early on an unsupported model family
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and getattr(plugin, "zero_stage", None) == 3:
            raise ValueError(
                f"{type(self).__name__} does not support DeepSpeed ZeRO-3 (the output head's parameters are "
                "partitioned, and CAL's gold-token scoring cannot gather them); use FSDP or ZeRO-1/2"
            )
        self._cal_step: _Step | None = None
        self._cal_metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._cal_counts: dict[str, dict[str, float]] = {"train": {}, "eval": {}}
        self._cal_warned = False

    # Precomputed weights are a dataset column the model's forward does not take: keep it through column removal.
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if WEIGHTS_KEY not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHTS_KEY]

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes > 1:
            return self.accelerator.reduce(values, reduction="sum")
        return values

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        adapter = get_adapter(self.model)
        count = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batch_samples:
            if batch.get("labels") is None:
                continue  # cal_loss raises a clear error on this batch
            mask = cal_label_mask(adapter, batch)
            count += (mask.sum() if self.cal_config.normalize == "batch" else mask.any(-1).sum()).to(device)
        self._cal_step = _Step(size=len(batch_samples), num_items=self._reduce(count))
        return batch_samples, num_items_in_batch

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        step = self._cal_step if model.training else None
        if step is None:
            # Evaluation, or a call outside the training loop: this batch's own normalisation.
            out = cal_loss(model, inputs, self.cal_config)
            loss = out.loss
            if not model.training:
                rows = self.accelerator.gather_for_metrics(self._row_sums(out).to(loss.device))
                self._record("eval", rows.sum(0))
        else:
            out = cal_loss(model, inputs, self.cal_config, num_items=step.num_items)
            # DDP averages gradients over processes; the loss is already normalised over all of them.
            loss = out.loss * self.accelerator.num_processes
            step.add(stats=self._sums(out), loss=out.loss)
        return (loss, gatherable_outputs(out.model_outputs)) if return_outputs else loss

    def _sums(self, out: CALOutput) -> torch.Tensor:
        # One float64 vector per batch, summed over micro-batches and processes (see `_row_sums`).
        return self._row_sums(out).sum(0)

    def _row_sums(self, out: CALOutput) -> torch.Tensor:
        # (B, K) float64, one row per sample: [sum w, sum w*CE, tokens, sum delta, negative deltas, deltas <= alpha
        # (weight at the lower clamp), deltas >= beta (upper clamp), histogram bins]. Per sample, so that evaluation
        # can gather them across processes without the samples accelerate duplicates to even out the last batch.
        mask = out.mask
        weights = out.weights * mask
        columns = [weights.sum(-1), (weights * out.token_loss.detach()).sum(-1), mask.sum(-1)]
        n_gains = 4 + len(DELTA_BINS) + 1
        if out.delta is None:
            # Precomputed weights: no gain was measured. NaN (not 0) survives the sums, so no delta metric is logged.
            gains = torch.full((mask.shape[0], n_gains), math.nan, dtype=torch.float64, device=mask.device)
        else:
            delta, config = out.delta.double(), self.cal_config
            edges = torch.tensor(DELTA_BINS, dtype=torch.float64, device=delta.device)
            bins = torch.bucketize(delta, edges, right=True)  # bin i: [edge i-1, edge i)
            histogram = (torch.nn.functional.one_hot(bins, len(DELTA_BINS) + 1) * mask[..., None]).sum(1)
            counts = [((delta < 0) & mask).sum(-1), ((delta <= config.alpha) & mask).sum(-1)]
            counts.append(((delta >= config.beta) & mask).sum(-1))
            gains = torch.cat([torch.stack([(delta * mask).sum(-1), *counts], -1).double(), histogram.double()], -1)
        return torch.cat([torch.stack(columns, -1).double(), gains], -1)

    def _record(self, mode: str, sums: torch.Tensor) -> None:
        weight_sum, _, tokens, delta_sum, negative, at_alpha, at_beta = sums[:7].tolist()
        if tokens > 0:
            self._cal_metrics[mode]["cal/mean_weight"].append(weight_sum / tokens)
            if not math.isnan(delta_sum):
                self._cal_metrics[mode]["cal/mean_delta"].append(delta_sum / tokens)
                self._cal_metrics[mode]["cal/frac_negative_delta"].append(negative / tokens)
                # Counts, not per-step shares: the logged shares are over every token of the logging window.
                counts = self._cal_counts[mode]
                counts["tokens"] = counts.get("tokens", 0.0) + tokens
                counts["cal/frac_at_alpha"] = counts.get("cal/frac_at_alpha", 0.0) + at_alpha
                counts["cal/frac_at_beta"] = counts.get("cal/frac_at_beta", 0.0) + at_beta
                for name, count in zip(_bin_names(), sums[7:].tolist(), strict=True):
                    counts[name] = counts.get(name, 0.0) + count

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        step = self._cal_step
        if step is None:
            return loss
        step.seen += 1
        if step.seen < step.size:
            # The step's loss is reported once, at its last micro-batch, when the totals are known.
            return torch.zeros_like(loss)
        stats = self._reduce(torch.cat([step.sums["stats"], step.sums["loss"][None]]).to(loss.device))
        self._record("train", stats[:-1])
        total = {"w": stats[0], "wce": stats[1], "loss": stats[-1]}
        self._cal_step = None
        if self.cal_config.normalize == "sample":
            return total["loss"].to(loss.dtype) * torch.ones_like(loss)
        # Gradients hold sum(w * dCE) / N, synchronised over processes: turn them into sum(w * dCE) / sum(w).
        factor = step.num_items / total["w"] if total["w"] > 0 else torch.zeros_like(total["w"])
        if self.is_deepspeed_enabled:
            # DeepSpeed keeps gradients in its own buffers, out of reach of `param.grad`.
            if not self._cal_warned:
                logger.warning(
                    "CAL under DeepSpeed: gradients are not rescaled by N / sum(w), so each step's update is the "
                    "exact CAL gradient times the step's mean weight"
                )
                self._cal_warned = True
        else:
            # Under FSDP each process holds its shard of the synchronised gradients; one global factor scales each.
            self._scale_gradients(model, factor)
        return (total["wce"] / total["w"] if total["w"] > 0 else total["w"] * 0).to(loss.dtype) * torch.ones_like(loss)

    @staticmethod
    @torch.no_grad()
    def _scale_gradients(model: nn.Module, factor: torch.Tensor) -> None:
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(factor.to(param.grad.dtype))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._cal_metrics[mode].items() if values}
        counts = self._cal_counts[mode]
        tokens = counts.pop("tokens", 0.0)
        if tokens > 0:
            metrics.update({key: count / tokens for key, count in counts.items()})
        counts.clear()
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)  # in place, so that `evaluate()` returns them too
        super().log(logs, start_time)
        self._cal_metrics[mode].clear()


class CALTrainer(CALTrainerMixin, Trainer):
    """
    A `transformers.Trainer` training with CAL's visually weighted token loss.

    Each training step runs the model's forward with the image (with gradient), then CAL's contrast pass (no
    gradient, eval mode, text tokens only for `NoImage()`), and minimises `sum(w * CE) / sum(w)`. The normalisation
    is over the whole optimizer step: with gradient accumulation and several processes the update equals that of one
    big batch (see the module docstring). Evaluation with labels reports the CAL loss of each eval batch. The mean
    weight, mean logit gain and share of negative gains are logged as `cal/mean_weight`, `cal/mean_delta` and
    `cal/frac_negative_delta`, the shares of tokens at the clamp bounds as `cal/frac_at_alpha` / `cal/frac_at_beta`,
    and the histogram of the gains (the paper's Fig. 4) as `cal/delta_hist/<lo>_<hi>` (share of tokens per bin of
    [`DELTA_BINS`]); all but the mean weight only for steps that ran a contrast pass, not with precomputed weights.

    Batches need `labels` (-100 = ignored) aligned with `input_ids`. A batch may carry precomputed weights under
    `cal_weights` (from [`vcontrast.cal.precompute_weights`]): then no contrast pass runs. Image-space contrast
    conditions need `contrast_pixel_values` etc. in the batch ([`vcontrast.cal.ContrastCollator`]). For datasets
    of raw rows (images, text), set `remove_unused_columns=False` as for any VLM collator.

    Args:
        cal_config (`CALConfig`, *optional*, defaults to `CALConfig()`): CAL's hyperparameters.
        *args, **kwargs: passed to `transformers.Trainer`.

    Examples:

    ```python
    >>> args = TrainingArguments("out", per_device_train_batch_size=8, remove_unused_columns=False)
    >>> trainer = CALTrainer(model=model, args=args, train_dataset=ds, data_collator=collate, cal_config=CALConfig())
    >>> trainer.train()
    ```
    """
