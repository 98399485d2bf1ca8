"""CAL under FSDP on 2 CPU processes over gloo, run by `test_fsdp.py`: FSDP2 (`fully_shard`) or FSDP1 (the
`FullyShardedDataParallel` wrapper, `use_orig_params=True`), chosen by the second argument.

accelerate enables FSDP only on accelerators (its MULTI_CPU state has no FSDP plugin), so this script shards the
model itself, as accelerate's FSDP paths do: each decoder layer, then the root (embeddings, vision tower,
projector, `lm_head`). Each rank takes 2 of the 4 rows, computes `cal_loss` with the step-wide normaliser,
backpropagates as `CALTrainer` does, rescales the gradients with the trainer's own function, and saves its loss,
gains and the full gradients for the test to compare with one unsharded process.
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6 keeps FSDP2 under its composable namespace
    from torch.distributed._composable.fsdp import fully_shard

from tests.cal.utils import cal_batch, scaled
from vcontrast.cal import CALConfig, cal_deltas, cal_label_mask, cal_loss
from vcontrast.cal.trainer import CALTrainerMixin

CONFIG = CALConfig(alpha=0.5, beta=3.0)


def setup():
    """(unsharded model, batch of 4 rows) identical on every process."""
    model, _, batch = cal_batch("llava", n=4)
    return scaled(model).train(), batch


def rows(batch: dict, rank: int, world: int = 2) -> dict:
    """This rank's contiguous share of the batch's rows."""
    size = batch["input_ids"].shape[0] // world
    return {k: v[rank * size : (rank + 1) * size] for k, v in batch.items()}


def shard(model: torch.nn.Module, version: str, world: int) -> torch.nn.Module:
    """The model sharded over `world` processes by FSDP `version` ("1" or "2")."""
    if version == "2":
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.language_model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert type(model.lm_head.weight).__name__ == "DTensor"  # the head really is a shard outside the forward
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    layer = type(model.model.language_model.layers[0])
    policy = ModuleWrapPolicy({layer})
    wrapped = FullyShardedDataParallel(
        model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
    )
    # The head is split between the ranks outside the forward, not replicated: its pieces add up to one head.
    pieces = torch.tensor(model.lm_head.weight.numel())
    dist.all_reduce(pieces)
    assert int(pieces) == model.lm_head.out_features * model.lm_head.in_features
    return wrapped


def full_grads(model: torch.nn.Module, version: str) -> dict[str, torch.Tensor]:
    """Every gradient, gathered whole, under the unwrapped model's parameter names."""
    if version == "2":
        return {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.grad is not None}
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(model, with_grads=True):
        return {
            name.replace("_fsdp_wrapped_module.", ""): p.grad.clone()
            for name, p in model.named_parameters()
            if p.grad is not None
        }


def main(out: str, version: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, batch = setup()
    model = shard(model, version, world)

    local = rows(batch, rank, world)
    # Before any forward of the root: every parameter outside the decoder layers (the head included) is a shard.
    deltas = cal_deltas(model, local, CONFIG)[0]

    num_items = cal_label_mask(model, batch).sum()  # the step's label tokens over both ranks
    result = cal_loss(model, local, CONFIG, num_items=num_items)
    (result.loss * world).backward()  # FSDP averages gradients over ranks; the loss is normalised over both
    weight_sum = result.weights.sum().double()
    dist.all_reduce(weight_sum)
    CALTrainerMixin._scale_gradients(model, num_items / weight_sum)
    grads = full_grads(model, version)
    loss = result.loss.detach().double() * num_items / weight_sum
    dist.all_reduce(loss)
    saved = {"loss": loss.item(), "delta": result.delta, "eval_delta": deltas, "grads": grads, "world": world}
    torch.save(saved, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
