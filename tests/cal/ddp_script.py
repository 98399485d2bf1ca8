"""One CAL training step on 2 CPU processes under `accelerate launch` (DDP over gloo), run by `test_ddp.py`.

Each rank trains on 2 of the 4 rows, evaluates on 3 rows, and writes its log history, its eval metrics and a
parameter checksum to `OUT/rank{i}.json`; rank 0 also saves the parameters, which the test compares with one
single-process step on all 4 rows.
"""

import json
import sys

import torch
import transformers as tf

from tests import tiny_models as tm
from tests.cal.utils import RowCollator, sft_rows, train_copy
from vcontrast.cal import CALConfig, CALTrainer

LONG_ANSWER = "two small green triangle near the big blue square"
CONFIG = CALConfig(alpha=0.5, beta=3.0)


def rows():
    data = sft_rows(tm.build("llava")[1], 4)
    data[1]["answer"] = LONG_ANSWER  # uneven label counts and weights between the ranks
    return data


def training_args(out: str, batch_size: int) -> tf.TrainingArguments:
    return tf.TrainingArguments(
        output_dir=out,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        remove_unused_columns=False,
        per_device_train_batch_size=batch_size,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        ddp_find_unused_parameters=True,
        seed=0,
    )


def train(out: str, batch_size: int) -> tuple[torch.nn.Module, CALTrainer]:
    model = train_copy("llava")
    trainer = CALTrainer(
        model=model,
        args=training_args(out, batch_size),
        train_dataset=rows(),
        data_collator=RowCollator(tm.build("llava")[1]),
        cal_config=CONFIG,
    )
    trainer.train()
    return model, trainer


def evaluate(trainer: CALTrainer) -> dict:
    # 3 rows on 2 ranks: accelerate pads the last batch with a duplicate row, which the cal/* metrics must not count.
    return trainer.evaluate(eval_dataset=rows()[:3])


def main(out: str) -> None:
    model, trainer = train(out, batch_size=2)
    rank = trainer.args.process_index
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    result = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "log_history": trainer.state.log_history,
        "eval": evaluate(trainer),
        "checksum": [float(flat.sum()), float(flat.abs().sum())],
    }
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    if rank == 0:
        torch.save({n: p.detach() for n, p in model.named_parameters()}, f"{out}/params.pt")


if __name__ == "__main__":
    main(sys.argv[1])
