"""`vcontrast train` / `finetune`: a few real Trainer steps on a tiny toy VLM from a LLaVA-style JSONL file, with CAL
and with MLE; checkpoints, exact resume, a final model that `load_model` reads, and clear errors."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.cal.conversations import RECORDS, run, save_toy_model, write_data
from vcontrast.models.loading import load_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_toy_model(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


def train_args(data, model_dir, out, *extra):
    return ("train", "--data", data, "--model", model_dir, "--output-dir", out, "--lr", "1e-2", "--batch-size", "2",
            "--save-steps", "1", "--logging-steps", "1", *extra)  # fmt: skip


def state(folder):
    model, _ = load_model(folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_train_sets_the_schedule(tmp_path, data, model_dir):
    # LLaVA's schedule is cosine with 3% warmup; the options reach the Trainer (its saved arguments say so).
    out = tmp_path / "run"
    run(*train_args(data, model_dir, out, "--max-steps", "1", "--lr-scheduler", "cosine", "--warmup-ratio", "0.03"))
    saved = torch.load(out / "training_args.bin", weights_only=False)
    assert str(saved.lr_scheduler_type) in ("cosine", "SchedulerType.COSINE") and saved.warmup_steps == 0.03
    result = run(*train_args(data, model_dir, tmp_path / "bad", "--max-steps", "1", "--warmup-ratio", "1.5"), code=2)
    assert "--warmup-ratio" in result.output


@pytest.mark.parametrize("method", ["cal", "mle"])
def test_train_writes_checkpoints_and_a_loadable_model(tmp_path, data, model_dir, method):
    out = tmp_path / "run"
    result = run(*train_args(data, model_dir, out, "--method", method, "--max-steps", "2"))
    assert f"trained 2 steps ({method})" in result.stdout
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    model, processor = load_model(out)  # model + processor saved with save_pretrained
    assert type(model).__name__ == "LlavaForConditionalGeneration" and processor.chat_template
    assert changed(state(model_dir), state(out))
    logged = (out / "trainer_state.json").read_text()
    assert ("cal/mean_weight" in logged) == (method == "cal")


def test_resume_continues_to_the_uninterrupted_result(tmp_path, data, model_dir):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(*train_args(data, model_dir, full, "--max-steps", "3", "--grad-accum", "2"))
    # A run killed after its second checkpoint: only checkpoint-2 is on disk.
    cut.mkdir()
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")
    refused = run(*train_args(data, model_dir, cut, "--max-steps", "3", "--grad-accum", "2"), code=2).output
    assert "already holds checkpoint-2: resume from it" in refused  # nothing is overwritten without --resume
    result = run(*train_args(data, model_dir, cut, "--max-steps", "3", "--grad-accum", "2", "--resume"))
    assert "trained 3 steps" in result.stdout
    # Exact: transformers' own resume would restart from the initial weights here (see finetune._restore_weights).
    expected, resumed = state(full), state(cut)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], msg=key)


def test_train_with_precomputed_weights(tmp_path, data, model_dir):
    weights = tmp_path / "w.cal.jsonl"
    run("cal", "precompute", data, "--model", model_dir, "--out", weights, "--no-progress")
    out = tmp_path / "run"
    run(*train_args(data, model_dir, out, "--max-steps", "1", "--cal-weights", weights))
    assert changed(state(model_dir), state(out))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--method", "sgd"), "`--method` (='sgd') has to be one of cal, mle"),
        (("--method", "mle", "--cal-weights", "w.jsonl"), "only applies to --method cal"),
        (("--beta", "0.5"), "`beta` (=0.5)"),
        (("--max-length", "70"), "no assistant token left within `max_length` (=70)"),  # every label cut off
        (("--cal-weights", "nope.jsonl"), "no precomputed CAL weights at nope.jsonl"),
        (("--image-backend", "opencv"), "image backend 'opencv' is not one of 'pil', 'torchvision'"),
    ],
)
def test_train_bad_input(tmp_path, data, model_dir, extra, message):
    assert message in run(*train_args(data, model_dir, tmp_path / "run", "--max-steps", "1", *extra), code=2).output


def test_image_backend_is_for_a_model_finetune_loads(tmp_path, data, model_dir):
    from transformers import TrainingArguments

    from vcontrast.cal.finetune import finetune

    model, processor = load_model(model_dir, image_backend="pil")
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="`image_backend` applies to a model `finetune` loads"):
        finetune(data, args, model=model, processor=processor, image_backend="pil")


@pytest.mark.parametrize("lora", [0, 4])
def test_only_the_main_process_writes_the_final_model(tmp_path, data, model_dir, monkeypatch, lora):
    # Under `accelerate launch` every process runs `finetune`: another process waits for all, then writes nothing.
    if lora:
        pytest.importorskip("peft")
    from accelerate import Accelerator
    from transformers import Trainer, TrainingArguments

    from vcontrast.cal.finetune import finetune

    waits = []
    monkeypatch.setattr(Trainer, "is_world_process_zero", lambda self: False)
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda self: False))  # what process 1 sees
    monkeypatch.setattr(Accelerator, "wait_for_everyone", lambda self: waits.append(1))
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=1, report_to="none", use_cpu=True, save_strategy="no")
    finetune(data, args, model=model_dir, lora_r=lora, lora_targets=["q_proj"])
    assert waits and not [path for path in out.rglob("*") if path.is_file()]


def test_train_missing_image(tmp_path, data, model_dir):
    (data.parent / "images" / "green.png").unlink()
    result = run(*train_args(data, model_dir, tmp_path / "run", "--max-steps", "1"), code=2)
    assert "data.jsonl:3: image file" in result.output and "green.png' not found" in result.output


PT_RECORDS = [  # LLaVA's pre-training data: an image and its caption
    {"id": f"p{i}", "image": f"images/{c}.png", "conversations": [{"from": "human", "value": "<image>\n"},
     {"from": "gpt", "value": f"a {c} circle"}]}
    for i, c in enumerate(["red", "blue", "green", "red"])
]  # fmt: skip
TWO_IMAGES = {
    "id": "two",
    "image": ["images/red.png", "images/blue.png"],
    "conversations": [
        {"from": "human", "value": "<image>\n<image>\nwhat color is the circle ?"},
        {"from": "gpt", "value": "red"},
    ],
}


def parts(state_dict):
    from vcontrast.cal.stages import model_part

    return {name: model_part(name) for name in state_dict}


def test_two_stage_recipe_pt_then_cal_it_end_to_end(tmp_path, model_dir):
    pt_data = write_data(tmp_path, PT_RECORDS, name="pt.jsonl")
    it_data = write_data(tmp_path, [*RECORDS, TWO_IMAGES], name="it.jsonl")
    pt, it = tmp_path / "pt", tmp_path / "it"
    run(*train_args(pt_data, model_dir, pt, "--stage", "pt", "--method", "mle", "--max-steps", "2"))
    before, after_pt = state(model_dir), state(pt)
    assert {parts(before)[k] for k in changed(before, after_pt)} == {"projector"}  # PT: the projector only

    extra = (
        "--stage",
        "it",
        "--max-steps",
        "2",
        "--eval-data",
        it_data,
        "--eval-steps",
        "1",
        "--gradient-checkpointing",
    )
    result = run(*train_args(it_data, pt, it, *extra))
    assert "trained 2 steps (cal)" in result.stdout
    after_it = state(it)
    assert {parts(before)[k] for k in changed(after_pt, after_it)} == {"projector", "language"}  # tower frozen
    logs = json.loads((it / "trainer_state.json").read_text())["log_history"]
    evals = [log for log in logs if "eval_loss" in log]
    assert len(evals) == 2 and all("eval_cal/mean_weight" in log for log in evals)


def test_plain_format_labels_the_caption_only():
    from tests.cal.conversations import toy_processor
    from vcontrast.cal import ConversationCollator

    proc = toy_processor()
    example = {"image": Image.new("RGB", (64, 64)), "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image ."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]}  # fmt: skip
    batch = ConversationCollator(proc, plain=True)([example])
    tokens = proc.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    labelled = proc.tokenizer.convert_ids_to_tokens(batch["input_ids"][0][batch["labels"][0] != -100])
    assert labelled == ["a", "red", "circle", proc.tokenizer.eos_token]
    assert "describe" not in tokens and tokens.count(proc.image_token) > 0  # no prompt, no chat template


def test_lora_and_tower_learning_rate(tmp_path, data, model_dir):
    pytest.importorskip("peft")
    lora = tmp_path / "lora"
    run(*train_args(data, model_dir, lora, "--max-steps", "2", "--lora-r", "4", "--lora-targets", "q_proj,v_proj"))
    before, after = state(model_dir), state(lora)  # merged: a plain model
    moved = changed(before, after)
    assert {parts(before)[k] for k in moved} == {"projector", "language"}
    language = [k for k in moved if parts(before)[k] == "language"]
    assert language and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in language)

    tower = tmp_path / "tower"
    run(*train_args(data, model_dir, tower, "--max-steps", "1", "--tower-lr-ratio", "0.5"))
    assert "tower" in {parts(before)[k] for k in changed(before, state(tower))}


def test_stages_set_what_trains_on_every_family():
    from tests import tiny_models as tm
    from vcontrast.cal.cli import LORA_TARGETS_DEFAULT
    from vcontrast.cal.stages import LORA_TARGETS, apply_stage, stage_optimizer

    assert LORA_TARGETS_DEFAULT == LORA_TARGETS
    for family in ("llava", "qwen2_vl", "idefics3", "paligemma"):
        model = copy.deepcopy(tm.build(family)[0])
        counts = apply_stage(model, "pt")
        assert counts["projector"] > 0 and counts["tower"] == counts["language"] == 0
        counts = apply_stage(model, "it")
        assert counts["tower"] == 0 and counts["language"] > 0
        assert all(v > 0 for v in apply_stage(model, "all").values())
        apply_stage(model, "it", tower_lr_ratio=0.1)
        optimizer = stage_optimizer(model, 1e-3, 0.1)
        assert [group["lr"] for group in optimizer.param_groups] == [1e-3, pytest.approx(1e-4)]
    with pytest.raises(ValueError, match="stage"):
        apply_stage(model, "sft")
    with pytest.raises(ValueError, match="tower_lr_ratio"):
        apply_stage(model, "pt", tower_lr_ratio=0.5)


def test_connector_parameters_outside_the_projector_module_train_with_it():
    # Qwen3-VL's deepstack mergers and LLaVA-NeXT's image_newline connect tower and LM: PT trains them.
    from tests import tiny_models as tm
    from vcontrast.cal.stages import apply_stage, model_part

    for family, marker in (("qwen3_vl", "deepstack_merger_list"), ("llava_next", "image_newline")):
        model = copy.deepcopy(tm.build(family)[0])
        names = [name for name, _ in model.named_parameters() if marker in name]
        assert names and {model_part(name) for name in names} == {"projector"}
        apply_stage(model, "pt")
        trained = {name for name, param in model.named_parameters() if param.requires_grad}
        assert set(names) <= trained


def test_lora_trains_qwen3_vl_deepstack_mergers_in_full():
    # PEFT refuses an nn.ModuleList in `modules_to_save` (a TypeError deep in get_peft_model): list its children.
    peft = pytest.importorskip("peft")
    from tests import tiny_models as tm
    from vcontrast.cal.stages import apply_stage, lora_config

    model = copy.deepcopy(tm.build("qwen3_vl")[0])
    apply_stage(model, "it")
    config = lora_config(model, 4, ["q_proj", "v_proj"])
    listed = sorted(n for n in config.modules_to_save if "deepstack_merger_list" in n)
    count = len(model.model.visual.deepstack_merger_list)
    assert count > 0 and listed == [f"model.visual.deepstack_merger_list.{i}" for i in range(count)]
    mergers = {f"base_model.model.{n}" for n, _ in model.named_parameters() if "deepstack_merger_list" in n}
    peft_model = peft.get_peft_model(model, config)
    params = dict(peft_model.named_parameters())
    trained = [n for n in params if "deepstack_merger_list" in n and ".modules_to_save." in n]
    assert all(params[n].requires_grad for n in trained)
    assert {n.replace(".modules_to_save.default.", ".") for n in trained} == mergers  # every one trains in full


def test_lora_leaves_image_newline_frozen_as_the_docs_say():
    # `image_newline` is a bare nn.Parameter: `modules_to_save` cannot hold it, so under LoRA it does not train.
    peft = pytest.importorskip("peft")
    from tests import tiny_models as tm
    from vcontrast.cal.stages import apply_stage, lora_config

    docs = " ".join((Path(__file__).parents[2] / "docs" / "cal.md").read_text().split())
    assert "under LoRA, `image_newline` (a bare parameter) stays frozen" in docs
    for family in ("llava_next", "llava_onevision"):
        model = copy.deepcopy(tm.build(family)[0])
        apply_stage(model, "it")
        peft_model = peft.get_peft_model(model, lora_config(model, 4, ["q_proj", "v_proj"]))
        newline = {n: p for n, p in peft_model.named_parameters() if "image_newline" in n}
        assert newline and not any(p.requires_grad for p in newline.values())
        projector = [p for n, p in peft_model.named_parameters() if "multi_modal_projector.modules_to_save" in n]
        assert projector and all(p.requires_grad for p in projector)


def test_records_with_several_images_collate_and_train(tmp_path, model_dir):
    from vcontrast.cal import ConversationCollator, cal_loss, read_conversations

    examples = read_conversations(write_data(tmp_path, [RECORDS[0], TWO_IMAGES]))
    assert isinstance(examples[1]["image"], list) and len(examples[1]["image"]) == 2
    assert [c["type"] for c in examples[1]["messages"][0]["content"]] == ["image", "image", "text"]
    model, proc = load_model(model_dir)
    batch = ConversationCollator(proc)(examples)
    per_row = (batch["input_ids"] == model.config.image_token_id).sum(1)
    assert per_row[1] == 2 * per_row[0] > 0 and batch["pixel_values"].shape[0] == 3
    out = cal_loss(model.train(), batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.mask[1].any()
    bad = {
        **TWO_IMAGES,
        "conversations": [{"from": "human", "value": "<image>\nwhat ?"}, {"from": "gpt", "value": "red"}],
    }
    with pytest.raises(ValueError, match="1 times for 2 image"):
        read_conversations(write_data(tmp_path, [bad], name="bad.jsonl"))


def test_pt_refuses_a_model_without_a_projector():
    from vcontrast.cal.stages import apply_stage

    text_only = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="stage 'pt' trains the projector"):
        apply_stage(text_only, "pt")
    assert apply_stage(text_only, "all")["language"] == 6
