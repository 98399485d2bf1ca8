"""lmms-eval integration: `vcontrast_crg` on a local task YAML over a small local dataset with the toy model, run
through `vcontrast lmms-eval`; the model's outputs against CRG computed directly. Needs lmms-eval (`make test-lmms`);
without it only the missing-dependency message is tested."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from vcontrast.cli import app
from vcontrast.toy.tasks import build_task

UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def doc_to_choice(doc):
    return doc["options"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == str(doc["answer"]).strip().lower())}
"""

VQA_YAML = """task: vc_toy_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  until: ["\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

CHOICE_YAML = """task: vc_toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: !function utils.doc_to_choice
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_local_tasks(root, n=3):
    """Two lmms-eval tasks over toy-world JSONL datasets: open answers (generate_until) and multiple choice
    (loglikelihood)."""
    (root / "images").mkdir(parents=True)
    vqa, choice = [], []
    for i in range(n):
        image, item = build_task("vqa", i)
        image.save(root / "images" / f"vqa{i}.png")
        vqa.append({"image": str(root / "images" / f"vqa{i}.png"), "question": item.prompt, "answer": item.answer})
        image, item = build_task("spatial", i)
        image.save(root / "images" / f"spatial{i}.png")
        choice.append(
            {
                "image": str(root / "images" / f"spatial{i}.png"),
                "question": item.prompt,
                "options": item.candidates,
                "answer": item.answer,
            }
        )
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vqa))
    (root / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choice))
    (root / "utils.py").write_text(UTILS)
    (root / "vc_toy_vqa.yaml").write_text(VQA_YAML.format(data=root / "vqa.jsonl"))
    (root / "vc_toy_choice.yaml").write_text(CHOICE_YAML.format(data=root / "choice.jsonl"))
    return vqa, choice


@pytest.fixture
def lmms_eval(tmp_path, monkeypatch):
    module = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (make test-lmms)")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return module


def test_missing_lmms_eval_says_how_to_install(monkeypatch):
    from vcontrast.bench.lmms import register

    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    monkeypatch.setitem(sys.modules, "lmms_eval.models", None)
    with pytest.raises(ValueError, match=r"lmms-eval is not installed: pip install 'vcontrast\[lmms\]'"):
        register()
    result = CliRunner().invoke(app, ["lmms-eval", "--tasks", "mme"])
    assert result.exit_code == 2 and "pip install 'vcontrast[lmms]'" in result.output


def test_lmms_eval_run_on_a_local_task(tmp_path, lmms_eval):
    write_local_tasks(tmp_path / "tasks")
    out = tmp_path / "out"
    args = ["lmms-eval", "--model", "vcontrast_crg", "--model_args", "alpha=1.0,contrast=blackout,proposer=toy"]
    args += ["--tasks", "vc_toy_vqa,vc_toy_choice", "--include_path", str(tmp_path / "tasks")]
    args += ["--output_path", str(out), "--log_samples", "--verbosity", "WARNING"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "vc_toy_choice  acc" in result.output and "vc_toy_vqa     exact_match" in result.output
    (results_file,) = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]
    assert 0 <= results["vc_toy_vqa"]["exact_match,none"] <= 1 and 0 <= results["vc_toy_choice"]["acc,none"] <= 1
    samples = {p.name.split("_samples_")[1]: p for p in out.rglob("*_samples_*.jsonl")}
    assert set(samples) == {"vc_toy_vqa.jsonl", "vc_toy_choice.jsonl"}
    choice = [json.loads(line) for line in samples["vc_toy_choice.jsonl"].read_text().splitlines()]
    assert len(choice) == 3 and all(len(row["filtered_resps"]) == 4 for row in choice)  # one loss per option


def _requests(model, kind, docs, image_paths, **kwargs):
    """lmms-eval `Instance`s for `docs` of a fake task registered on `model.task_dict`."""
    from lmms_eval.api.instance import Instance
    from PIL import Image

    model.task_dict = {"t": {"test": docs}}

    def to_visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]

    requests = []
    for i, doc in enumerate(docs):
        second = kwargs["target"](doc) if kind == "loglikelihood" else kwargs["gen_kwargs"]
        args = (doc["question"], second, to_visual, i, "t", "test")
        metadata = {"task": "t", "doc_id": i, "repeats": 1}
        requests.append(Instance(request_type=kind, arguments=args, idx=0, metadata=metadata))
    return requests


def _unwrap(outputs):
    from lmms_eval.api.instance import unwrap_generation_output

    return [unwrap_generation_output(o)[0] for o in outputs]


def test_model_outputs_are_crg_computed_directly(tmp_path, lmms_eval):
    from vcontrast.bench.lmms.model import VContrastCRG
    from vcontrast.crg import CRG
    from vcontrast.regions import open_image

    vqa, choice = write_local_tasks(tmp_path, n=2)
    docs = [{**doc, "option": doc["options"][doc["answer"]]} for doc in choice]
    losses = {}
    for contrast in ("blackout", "no-image", "noise"):
        for alpha in (0.0, 1.0):
            model = VContrastCRG(alpha=alpha, contrast=contrast, proposer="toy")
            requests = _requests(model, "loglikelihood", docs, None, target=lambda d: " " + d["option"])
            losses[contrast, alpha] = [loss for loss, _ in _unwrap(model.loglikelihood(requests))]
    # alpha 0: the plain model, whatever the contrast; equal to CRG's own score at alpha 0
    assert losses["blackout", 0.0] == pytest.approx(losses["noise", 0.0])
    assert losses["blackout", 0.0] == pytest.approx(losses["no-image", 0.0])
    plain = CRG(model.method.model, model.method.processor, alpha=0.0, mode="whole")
    expected = [-plain.score(open_image(d["image"]), d["question"], [" " + d["option"]])[0] for d in docs]
    assert losses["blackout", 0.0] == pytest.approx(expected, abs=1e-4)
    # alpha 1: the no-image contrast is the whole image blacked out; the noise contrast differs from it
    whole = CRG(model.method.model, model.method.processor, alpha=1.0, mode="whole")
    expected = [-whole.score(open_image(d["image"]), d["question"], [" " + d["option"]])[0] for d in docs]
    assert losses["no-image", 1.0] == pytest.approx(expected, abs=1e-4)
    assert losses["noise", 1.0] != pytest.approx(losses["no-image", 1.0])

    model = VContrastCRG(alpha=0.0, contrast="blackout", proposer="toy")
    gen = {"until": ["\n"], "max_new_tokens": 3}
    answers = model.generate_until(_requests(model, "generate_until", vqa, None, gen_kwargs=gen))
    assert answers == [plain.generate(open_image(d["image"]), d["question"], max_new_tokens=3) for d in vqa]
    # batched (lmms-eval's --batch_size) equals one request at a time, with CRG on
    one, two = (VContrastCRG(alpha=1.0, proposer="toy", batch_size=b) for b in (1, 2))
    assert one.generate_until(_requests(one, "generate_until", vqa, None, gen_kwargs=gen)) == two.generate_until(
        _requests(two, "generate_until", vqa, None, gen_kwargs=gen)
    )


@pytest.fixture
def stub_lmms_eval(monkeypatch):
    """The two lmms-eval names `vcontrast.bench.lmms.model` imports, so that its scoring runs without lmms-eval."""
    import types

    class Hook:
        def add_partial(self, *args):
            pass

    class lmms:  # lmms-eval's name
        def __init__(self):
            self.cache_hook = Hook()

    modules = {name: types.ModuleType(name) for name in ("lmms_eval", "lmms_eval.api", "lmms_eval.api.instance")}
    modules["lmms_eval.api.model"] = types.ModuleType("lmms_eval.api.model")
    modules["lmms_eval.api.instance"].Instance = types.SimpleNamespace
    modules["lmms_eval.api.model"].lmms = lmms
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "vcontrast.bench.lmms.model", raising=False)  # re-imported on the stub
    import vcontrast.bench.lmms.model as module

    return module


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_loglikelihood_leaves_the_separator_to_the_candidate_rule(stub_lmms_eval, family):
    # lmms-eval passes multiple-choice continuations as f"{target_delimiter}{choice}", " yes" by default. After
    # Qwen's `assistant\n` the model writes `yes`, not `Ġyes`; after LLaVA's `ASSISTANT:` it writes `Ġyes` either way.
    from types import SimpleNamespace

    from tests import tiny_models as tm
    from vcontrast.bench.methods import CRGMethod
    from vcontrast.candidates import candidate_tokens
    from vcontrast.crg import CRG

    model, processor = tm.build(family)
    wrapper = stub_lmms_eval.VContrastCRG.__new__(stub_lmms_eval.VContrastCRG)
    stub_lmms_eval.lmms.__init__(wrapper)
    wrapper.method = CRGMethod(model, processor, alpha=1.0, proposer=None, max_new_tokens=4)
    wrapper.default_max_new_tokens = 4
    wrapper.task_dict = {"t": {"test": [{}]}}
    lengths = []
    generate = wrapper.method.crg.generate_batch

    def counting_generate(*args, max_new_tokens, **kwargs):  # the greedy check's length
        lengths.append(max_new_tokens)
        return generate(*args, max_new_tokens=max_new_tokens, **kwargs)

    wrapper.method.crg.generate_batch = counting_generate
    image, context = tm.image(0), "is there a red cat ?"
    continuations = [" yes", "yes", " no", "no", " a red cat"]
    requests = [SimpleNamespace(args=(context, c, lambda doc: [image], 0, "t", "test")) for c in continuations]
    losses = [loss for loss, _ in wrapper.loglikelihood(requests)]

    crg = CRG(model, processor, alpha=1.0, mode="whole")
    expected = [-s for s in crg.score(image, context, [c.lstrip() for c in continuations])]
    torch.testing.assert_close(losses, expected, atol=1e-4, rtol=0)
    assert losses[0] == losses[1] and losses[2] == losses[3]
    prompt = crg.rendered_prompt(context)
    assert lengths == [len(t.ids) for t in candidate_tokens(processor, prompt, [c.lstrip() for c in continuations])]
    if family == "llava":  # a prompt ending in a non-space character: the scores lmms-eval got before
        with_space = [-s for s in crg.score(image, context, continuations)]
        torch.testing.assert_close(losses, with_space, atol=1e-4, rtol=0)
    else:
        assert candidate_tokens(processor, prompt, [" yes"])[0] != candidate_tokens(processor, prompt, ["yes"])[0]


def test_bad_model_args(lmms_eval):
    from vcontrast.bench.lmms.model import VContrastCRG

    with pytest.raises(ValueError, match=r"`contrast` \(='mask'\) must be one of blackout, no-image, noise"):
        VContrastCRG(contrast="mask")
    with pytest.raises(ValueError, match=r"unknown model_args \['temperature'\]"):
        VContrastCRG(temperature=0.2)
    with pytest.raises(ValueError, match="image backend 'opencv' is not one of 'pil', 'torchvision'"):
        VContrastCRG(image_backend="opencv")
    assert type(VContrastCRG(image_backend="pil").method.processor.image_processor).__name__ == "CLIPImageProcessorPil"


def test_entry_point_manifest_resolves_to_the_model(lmms_eval):
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from vcontrast.bench.lmms import manifest
    from vcontrast.bench.lmms.model import VContrastCRG

    registry = ModelRegistryV2()
    registry.register_manifest(manifest())
    assert registry.get_model_class("vcontrast_crg") is VContrastCRG


def test_batch_size_and_visuals_are_checked(stub_lmms_eval):
    # lmms-eval's "auto" batch size and multi-image documents would otherwise crash deep inside or be answered about
    # the first image alone.
    from tests import tiny_models as tm

    assert [stub_lmms_eval._batch_size(v) for v in (None, "", "4", 2)] == [1, 1, 4, 2]
    for bad in ("auto", "auto:4", "0", "x"):
        with pytest.raises(ValueError, match="batch_size"):
            stub_lmms_eval._batch_size(bad)
    wrapper = stub_lmms_eval.VContrastCRG.__new__(stub_lmms_eval.VContrastCRG)
    wrapper.task_dict = {"t": {"test": [{}]}}
    image = tm.image(0)
    assert wrapper._image(lambda doc: [None, image], 0, "t", "test").size == image.size
    with pytest.raises(ValueError, match="has 2 images; vcontrast_crg takes one image per request"):
        wrapper._image(lambda doc: [image, image], 0, "t", "test")
    with pytest.raises(ValueError, match="has no image"):
        wrapper._image(lambda doc: [None], 0, "t", "test")
    with pytest.raises(ValueError, match="the image is a dict, not a PIL image"):
        wrapper._image(lambda doc: {"array": [0.0]}, 0, "t", "test")
