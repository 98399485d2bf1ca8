"""CALSFTTrainer on a tiny LLaVA: completion-only labels by default, and it trains with CAL's loss, not plain NLL."""

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


def test_cal_sft_trainer_labels_completions_only_and_trains(tmp_path):
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
    # Completion-only labels by default (as LLaVA trains): the answers and their end-of-turn, never the prompt.
    assert not isinstance(trainer.data_collator, DataCollatorForVisionLanguageModeling)
    batch = trainer.data_collator(rows(4))
    tokenizer = proc.tokenizer
    for b, row in enumerate(rows(4)):
        labelled = tokenizer.decode(batch["input_ids"][b][batch["labels"][b] != -100])
        # The answer, then the template's end of turn and eos: nothing of the user's turn.
        answer, prompt = row["messages"][1]["content"][0]["text"], row["messages"][0]["content"][1]["text"]
        assert labelled.replace(" ", "").startswith(answer.replace(" ", ""))
        assert labelled.endswith(tokenizer.eos_token) and len(labelled) <= len(answer) + len(" .") + 1 + 4
        assert prompt.replace(" ", "") not in labelled.replace(" ", "")
    assert not (batch["labels"][batch["input_ids"] == model.config.image_token_id] != -100).any()
    # TRL's own collator labels the prompt too: what CALSFTTrainer avoids by default.
    trl_batch = DataCollatorForVisionLanguageModeling(proc)(rows(1))
    assert (trl_batch["labels"] != -100).sum() > (batch["labels"][0] != -100).sum()

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


def test_a_streaming_dataset_gets_the_completion_only_collator_too():
    # The collator is chosen from the first row; a streaming dataset has no `[0]`, so its first row is peeked at.
    from vcontrast.cal.data import ConversationCollator
    from vcontrast.cal.sft import _completion_only_collator

    proc = tm.build("llava")[1]
    args = trl.SFTConfig(output_dir="unused", report_to="none", use_cpu=True, bf16=False)
    streaming = datasets.Dataset.from_list(rows(2)).to_iterable_dataset()
    chosen = _completion_only_collator({"train_dataset": streaming, "args": args, "processing_class": proc})
    assert isinstance(chosen, ConversationCollator)
    assert len(list(streaming)) == 2  # peeking consumed nothing
    # A one-shot iterator is not peeked at (training would miss its first row): TRL's default then applies.
    one_shot = iter(rows(2))
    assert _completion_only_collator({"train_dataset": one_shot, "args": args, "processing_class": proc}) is None
    assert len(list(one_shot)) == 2


def test_refuses_trl_loss_types_it_would_ignore(tmp_path):
    from vcontrast.cal import CALSFTTrainer

    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_length=None, report_to="none", use_cpu=True, bf16=False, loss_type="dft"
    )
    with pytest.raises(ValueError, match="loss_type='dft'"):
        CALSFTTrainer(
            model=train_copy("llava"),
            args=args,
            train_dataset=datasets.Dataset.from_list(rows()),
            processing_class=tm.build("llava")[1],
        )
