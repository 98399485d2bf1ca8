"""CALSFTTrainer with TRL's VLM collator on a tiny LLaVA: it trains with CAL's loss, not plain NLL."""

import pytest
import torch

from tests import tiny_models as tm
from tests.cal.utils import ANSWERS, PROMPTS, train_copy
from vcontrast.cal import CALConfig, cal_loss

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def rows(n=4):
    return [
        {
            "images": [tm.image(i)],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[i % 3]}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[i % 3]}]},
            ],
        }
        for i in range(n)
    ]


def test_cal_sft_trainer_trains_with_trls_vlm_collator(tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vcontrast.cal import CALSFTTrainer

    model = train_copy("llava")
    proc = tm.build("llava")[1]
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_length=None,
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = CALSFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows()),
        processing_class=proc,
        cal_config=CALConfig(alpha=0.5, beta=3.0),
    )
    assert isinstance(trainer.data_collator, DataCollatorForVisionLanguageModeling)

    # The loss of a collated batch is CAL's, not the model's plain NLL.
    batch = trainer.data_collator(rows(2))
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        expected = cal_loss(model, dict(batch), CALConfig(alpha=0.5, beta=3.0)).loss
        plain = model(**batch).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(loss.item() - plain.item()) > 1e-3
    model.train()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all("cal/mean_weight" in log for log in logs)
