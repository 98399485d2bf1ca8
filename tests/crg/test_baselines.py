"""The CRG paper's baselines against brute force (two full forwards per candidate): "overlay" (visual prompting),
"crg+overlay", "vcd" (diffusion-noise contrast with VCD's plausibility cutoff), through the API and the eval-runner
methods."""

import pytest
import torch
from transformers import LogitsProcessorList

from tests import tiny_models as tm
from tests.crg import brute as b
from tests.crg.test_scoring import brute_guided, brute_loglik, brute_tokens
from vcontrast.bench.items import Item
from vcontrast.bench.methods import METHODS, CRGOverlayMethod, OverlayMethod, VCDMethod, get_method, method_config
from vcontrast.conditions import DiffusionNoise, NoImage
from vcontrast.crg import CRG, CRGLogitsProcessor, two_stream_generate
from vcontrast.regions import blackout, draw_boxes

PROMPT = "what is in the box ?"
CANDIDATES = ["a red cup", "blue", "the cat is left of the dog"]
REGIONS = [(2, 2, 12, 10), (14, 4, 24, 16)]


def brute(model, crg, reference_image, contrast_image, candidates, beta=None, prompt=PROMPT):
    """Summed renormalised guided log-probs from full forwards (`crg.alpha`), with VCD's cutoff if `beta`."""
    guided = brute_guided(model, crg, reference_image, prompt, candidates, [contrast_image], beta=beta)
    return [torch.log_softmax(g, -1)[torch.arange(len(t)), t].sum().item() for g, t in guided]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_overlay_and_crg_overlay(family):
    model, processor = tm.build(family)
    image = tm.image(0)
    overlaid = draw_boxes(image, REGIONS, color=(255, 0, 0), width=2)
    plain = CRG(model, processor, alpha=0.0, overlay=True)
    assert plain.score(image, PROMPT, CANDIDATES, REGIONS) == pytest.approx(
        [brute_loglik(model, plain, overlaid, PROMPT, c) for c in CANDIDATES], abs=1e-4
    )
    guided = CRG(model, processor, alpha=1.0, overlay=True)
    expected = brute(model, guided, overlaid, blackout(overlaid, REGIONS), CANDIDATES)
    assert guided.score(image, PROMPT, CANDIDATES, REGIONS) == pytest.approx(expected, abs=1e-4)
    thick = CRG(model, processor, alpha=0.0, overlay=True, overlay_width=4, overlay_color=(0, 255, 0))
    green = draw_boxes(image, REGIONS, color=(0, 255, 0), width=4)
    assert thick.score(image, PROMPT, CANDIDATES[:1], REGIONS)[0] == pytest.approx(
        brute_loglik(model, thick, green, PROMPT, CANDIDATES[0]), abs=1e-4
    )
    with pytest.raises(ValueError, match="overlay_width"):
        CRG(model, processor, overlay=True, overlay_width=0)


def test_vcd_contrast_is_the_noised_image():
    model, processor = tm.build("llava")
    image = tm.image(0)
    vcd = CRG(model, processor, alpha=1.0, plausibility_beta=0.1, contrast=DiffusionNoise(500))
    noised = DiffusionNoise(500).apply(image)
    expected = brute(model, vcd, image, noised, CANDIDATES, beta=0.1)
    assert vcd.score(image, PROMPT, CANDIDATES) == pytest.approx(expected, abs=1e-4)  # no regions needed
    text = vcd.generate(image, PROMPT, max_new_tokens=3)
    assert isinstance(text, str)
    with pytest.raises(ValueError, match="VisualCondition"):
        CRG(model, processor, contrast="noise")


def test_baseline_methods_match_the_api():
    model, processor = tm.build("llava")
    image = tm.image(0)
    items = [
        Item(id="c", task="choice", image="-", prompt=PROMPT, candidates=CANDIDATES, answer=0, regions=REGIONS),
        Item(id="r", task="refexp", image="-", prompt="a red cup", proposals=REGIONS + [(0, 10, 8, 20)],
             target=REGIONS[0], answer=0),
    ]  # fmt: skip
    overlaid = draw_boxes(image, REGIONS)
    overlay = OverlayMethod(model, processor, proposer=None)
    choice, refexp = overlay.predict(items, [image, image])
    assert choice["scores"] == pytest.approx(
        [brute_loglik(model, overlay.crg, overlaid, PROMPT, c) for c in CANDIDATES], abs=1e-4
    )
    marked = [draw_boxes(image, [box]) for box in items[1].proposals]
    expected = [brute_loglik(model, overlay.crg, m, "Describe the image.", "a red cup") for m in marked]
    assert refexp["scores"] == pytest.approx(expected, abs=1e-4)
    crg_overlay = CRGOverlayMethod(model, processor, alpha=1.0, proposer=None)
    choice, refexp = crg_overlay.predict(items, [image, image])
    expected = brute(model, crg_overlay.crg, overlaid, blackout(overlaid, REGIONS), CANDIDATES)
    assert choice["scores"] == pytest.approx(expected, abs=1e-4)
    drops = []
    for box in items[1].proposals:
        marked = draw_boxes(image, [box])
        full = brute_loglik(model, crg_overlay.crg, marked, "Describe the image.", "a red cup")
        drops.append(
            full - brute_loglik(model, crg_overlay.crg, blackout(marked, [box]), "Describe the image.", "a red cup")
        )
    assert refexp["scores"] == pytest.approx(drops, abs=1e-4)
    vcd = VCDMethod(model, processor, proposer=None)
    (choice,) = vcd.predict(items[:1], [image])
    expected = brute(model, vcd.crg, image, DiffusionNoise(500).apply(image), CANDIDATES, beta=0.1)
    assert choice["scores"] == pytest.approx(expected, abs=1e-4)
    assert vcd.config == {"alpha": 1.0, "proposer": None, "proposer_model": None, "max_new_tokens": 32,
                          "noise_step": 500, "plausibility_beta": 0.1}  # fmt: skip


def test_method_registry_and_options():
    assert {"base", "crg", "overlay", "crg+overlay", "vcd", "no-image"} <= set(METHODS)
    assert method_config("overlay", proposer=None, overlay_width=3)["overlay_width"] == 3
    assert method_config("crg+overlay", alpha=2.0, proposer=None)["alpha"] == 2.0
    assert "alpha" not in method_config("overlay", proposer=None)
    with pytest.raises(ValueError, match="takes no options"):
        method_config("crg", proposer=None, noise_step=10)
    with pytest.raises(ValueError, match="step"):
        method_config("vcd", proposer=None, noise_step=5000)
    model, processor = tm.build("llava")
    method = get_method("vcd", model, processor, alpha=2.0, proposer=None, noise_step=100)
    assert (method.alpha, method.noise_step) == (2.0, 100)


def no_image_logprobs(model, batch, rows):
    """log_softmax rows (len(rows), V) of the prompt batch (one row) with the image tokens dropped from the sequence
    (positions kept): `vcontrast.contrast`'s NoImage condition, a different mechanism from the masked attention.
    `rows` index the original sequence."""
    from vcontrast.contrast import _forward_inputs
    from vcontrast.models import get_adapter

    adapter = get_adapter(model)
    kwargs, index = _forward_inputs(adapter, batch, NoImage())
    with torch.no_grad():
        logits = adapter.forward_model(**kwargs, use_cache=False).logits.float()
    return torch.log_softmax(logits[0, index[0, rows]], -1)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "paligemma", "idefics3"])
def test_no_image_contrast(family):
    model, processor = tm.build(family)
    image = tm.image(0)
    crg = CRG(model, processor, alpha=1.0, contrast=NoImage())
    text = crg.prompt_text(PROMPT)
    reference = crg._process([image], [text])
    expected = []
    for candidate in CANDIDATES:
        tokens = brute_tokens(crg, PROMPT, candidate)
        n = len(tokens)
        ids = torch.cat([reference["input_ids"], torch.tensor([tokens])], dim=1)
        lp_ref = torch.log_softmax(b.full_logits(model, reference, ids)[0, -n - 1 : -1], -1)
        rows = torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1)
        g = 2 * lp_ref - no_image_logprobs(model, b.with_tokens(reference, ids), rows)
        expected.append(torch.log_softmax(g, -1)[torch.arange(n), torch.tensor(tokens)].sum().item())
    assert crg.score(image, PROMPT, CANDIDATES) == pytest.approx(expected, abs=1e-4)
    # generation: both paths agree, and the first step's guided scores are the brute-force ones
    kwargs = {"max_new_tokens": 3, "do_sample": False, "output_scores": True, "return_dict_in_generate": True}
    ref, con = crg.build_inputs(image, PROMPT)
    assert not torch.equal(ref["attention_mask"], con["attention_mask"])

    batched = two_stream_generate(model, ref, con, 1.0, **kwargs)
    with CRGLogitsProcessor(model, con) as guidance:
        by_processor = model.generate(**ref, logits_processor=LogitsProcessorList([guidance]), **kwargs)
    assert torch.equal(batched.sequences, by_processor.sequences)
    lp_ref = torch.log_softmax(b.full_logits(model, ref, ref["input_ids"])[0, -1], -1)
    lp_con = no_image_logprobs(model, ref, torch.tensor([ref["input_ids"].shape[1] - 1]))[0]
    for out in (batched, by_processor):
        torch.testing.assert_close(out.scores[0][0], torch.log_softmax(2 * lp_ref - lp_con, -1), atol=1e-4, rtol=1e-4)


def test_no_image_method_scores_like_the_api():
    model, processor = tm.build("llava")
    image = tm.image(0)
    item = Item(id="c", task="choice", image="-", prompt=PROMPT, candidates=CANDIDATES, answer=0)
    method = get_method("no-image", model, processor, alpha=1.5, proposer=None)
    (choice,) = method.predict([item], [image])
    expected = CRG(model, processor, alpha=1.5, contrast=NoImage()).score(image, PROMPT, CANDIDATES)
    assert choice["scores"] == pytest.approx(expected, abs=1e-6) and method.config["alpha"] == 1.5


@pytest.mark.parametrize("name", ["overlay", "crg+overlay", "vcd", "no-image"])
def test_eval_runner_runs_the_baselines_by_name(tmp_path, name):
    from tests.bench.test_runner_model import toy_items
    from vcontrast.bench.runner import evaluate

    data = toy_items(tmp_path / "data", n=2)  # two match items: one of each label (AUROC needs both)
    kwargs = {"model": tm.build("llava"), "batch_size": 4, "show_progress": False, "proposer": None}
    result = evaluate("toy", data, method=name, out_dir=tmp_path / "out", max_new_tokens=2, **kwargs)
    assert {"choice/accuracy", "match/auroc", "refexp/acc@0.5"} <= set(result["metrics"])
    assert result["config"] == method_config(name, proposer=None, max_new_tokens=2)
    again = evaluate("toy", data, method=name, out_dir=tmp_path / "out", max_new_tokens=2, **kwargs)  # resumes
    assert again["metrics"] == result["metrics"]
