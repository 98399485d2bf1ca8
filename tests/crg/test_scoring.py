"""CRG scores against brute force (two full forwards per candidate, full log-softmax), for every model family;
reduce/normalize options, batching, the "each" mode, re-ranking and matching; bad input."""

import math

import pytest
import torch

from tests import tiny_models as tm
from tests.crg import brute
from vcontrast.contrast import gold_token_logits
from vcontrast.crg import CRG
from vcontrast.regions import blackout

PROMPT = "what is in the box ?"
CANDIDATES = ["a red cup", "blue", "the cat is left of the dog"]
REGIONS = [(2, 2, 12, 10), (14, 4, 24, 16)]


def brute_scores(model, crg, image, prompt, candidates, contrast_images, normalize=True):
    """Per candidate, per-token brute-force scores; several contrast images are averaged in log-prob space."""
    return [
        torch.log_softmax(g, -1)[torch.arange(len(t)), t] if normalize else g[torch.arange(len(t)), t]
        for g, t in brute_guided(model, crg, image, prompt, candidates, contrast_images)
    ]


def brute_guided(model, crg, image, prompt, candidates, contrast_images):
    """Per candidate: the guided scores (n, V) at its n positions from two full forwards, and its tokens (n,)."""
    text = crg.prompt_text(prompt)
    reference = crg._process([image], [text])
    contrasts = [crg._process([im], [text]) for im in contrast_images]
    out = []
    for candidate in candidates:
        # The tokens the model itself writes: the tokens of prompt + separator + candidate after the prompt's (the
        # templates here end in ":", a newline or a special token, and nothing merges across the boundary).
        rendered = crg.rendered_prompt(prompt)
        ends_special = any(rendered.endswith(token) for token in crg.processor.tokenizer.all_special_tokens)
        separator = "" if rendered[-1].isspace() or ends_special else " "
        prompt_ids = crg.processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        joint = crg.processor.tokenizer(rendered + separator + candidate, add_special_tokens=False)["input_ids"]
        assert joint[: len(prompt_ids)] == prompt_ids
        tokens = joint[len(prompt_ids) :]
        ids = torch.cat([reference["input_ids"], torch.tensor([tokens])], dim=1)
        n = len(tokens)
        ref = torch.log_softmax(brute.full_logits(model, reference, ids)[0, -n - 1 : -1], -1)
        con = torch.stack(
            [torch.log_softmax(brute.full_logits(model, c, ids)[0, -n - 1 : -1], -1) for c in contrasts]
        ).mean(0)
        out.append(((1 + crg.alpha) * ref - crg.alpha * con, torch.tensor(tokens)))
    return out


@pytest.fixture(params=tm.FAMILIES)
def family(request):
    return request.param


def test_build_inputs(family):
    """One user turn (image, then prompt) plus the generation prompt; same ids; contrast pixels = blacked-out image."""
    model, processor = tm.build(family)
    crg = CRG(model, processor)
    image = tm.image(0)
    reference, contrast = crg.build_inputs(image, PROMPT, REGIONS)
    assert torch.equal(reference["input_ids"], contrast["input_ids"])
    assert torch.equal(reference["attention_mask"], contrast["attention_mask"])
    direct = processor(images=[[blackout(image, REGIONS)]], text=[tm.chat(processor, PROMPT)], return_tensors="pt")
    assert torch.equal(contrast["input_ids"], direct["input_ids"])
    torch.testing.assert_close(contrast["pixel_values"], direct["pixel_values"], rtol=0, atol=0)
    assert not torch.equal(reference["pixel_values"], contrast["pixel_values"])


def test_scores_match_brute_force(family):
    model, processor = tm.build(family)
    crg = CRG(model, processor, alpha=1.0)
    image = tm.image(0)
    guided = brute_guided(model, crg, image, PROMPT, CANDIDATES, [blackout(image, REGIONS)])
    for normalize in (True, False):
        expected = [(torch.log_softmax(g, -1) if normalize else g)[torch.arange(len(t)), t] for g, t in guided]
        got = crg.score(image, PROMPT, CANDIDATES, REGIONS, normalize=normalize)
        torch.testing.assert_close(torch.tensor(got), torch.stack([e.sum() for e in expected]), atol=1e-4, rtol=1e-5)
    means = crg.score(image, PROMPT, CANDIDATES, REGIONS, reduce="mean", normalize=False)
    torch.testing.assert_close(torch.tensor(means), torch.stack([e.mean() for e in expected]), atol=1e-4, rtol=1e-5)


def test_scores_depend_on_regions(family):
    model, processor = tm.build(family)
    crg = CRG(model, processor)
    one = crg.score(tm.image(0), PROMPT, CANDIDATES, REGIONS[:1])
    other = crg.score(tm.image(0), PROMPT, CANDIDATES, REGIONS[1:])
    assert max(abs(a - b) for a, b in zip(one, other, strict=True)) > 1e-3


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "paligemma"])
def test_batched_scores_equal_single(family):
    """Two examples with images of different sizes (left padding in LLaVA-NeXT and Qwen2-VL) in one call."""
    model, processor = tm.build(family)
    crg = CRG(model, processor)
    images = [tm.image(0), tm.image(1, size=(28, 16))]
    prompts = [PROMPT, "which colour is the cup left of the plate ?"]
    candidates = [CANDIDATES, ["yes", "no"]]
    regions = [REGIONS, [(0, 0, 10, 8)]]
    batched = crg.score_batch(images, prompts, candidates, regions)
    for i in range(2):
        torch.testing.assert_close(
            torch.tensor(batched[i]), torch.tensor(crg.score(images[i], prompts[i], candidates[i], regions[i])),
            atol=1e-4, rtol=1e-5,
        )  # fmt: skip


def test_alpha_zero_is_plain_log_likelihood():
    model, processor = tm.build("llava")
    crg = CRG(model, processor, alpha=0.0)
    image = tm.image(0)
    text = crg.prompt_text(PROMPT) + " " + CANDIDATES[0]
    batch = crg._process([image], [text])
    n = len(processor.tokenizer(CANDIDATES[0], add_special_tokens=False)["input_ids"])
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, -n:] = batch["input_ids"][:, -n:]
    plain = gold_token_logits(model, batch, labels, logprobs=True).logprobs.sum().item()
    assert crg.score(image, PROMPT, CANDIDATES[:1], REGIONS)[0] == pytest.approx(plain, abs=1e-4)


def test_modes():
    model, processor = tm.build("qwen2_vl")
    image = tm.image(0)
    each = CRG(model, processor, mode="each")
    expected = brute_scores(model, each, image, PROMPT, CANDIDATES[:2], [blackout(image, [b]) for b in REGIONS])
    torch.testing.assert_close(
        torch.tensor(each.score(image, PROMPT, CANDIDATES[:2], REGIONS)), torch.stack([e.sum() for e in expected]),
        atol=1e-4, rtol=1e-5,
    )  # fmt: skip
    whole = CRG(model, processor, mode="whole")
    black = [blackout(image, [(0, 0, *image.size)])]
    expected = brute_scores(model, whole, image, PROMPT, CANDIDATES[:1], black)
    assert whole.score(image, PROMPT, CANDIDATES[:1])[0] == pytest.approx(expected[0].sum().item(), abs=1e-4)
    combined = CRG(model, processor, mode="combined")
    boxed = [blackout(image, [(2, 2, 24, 16)])]
    expected = brute_scores(model, combined, image, PROMPT, CANDIDATES[:1], boxed)
    assert combined.score(image, PROMPT, CANDIDATES[:1], REGIONS)[0] == pytest.approx(
        expected[0].sum().item(), abs=1e-4
    )
    filled = CRG(model, processor, fill=(255, 0, 0))
    expected = brute_scores(model, filled, image, PROMPT, CANDIDATES[:1], [blackout(image, REGIONS, fill=(255, 0, 0))])
    assert filled.score(image, PROMPT, CANDIDATES[:1], REGIONS)[0] == pytest.approx(expected[0].sum().item(), abs=1e-4)


def test_plausibility_cutoff():
    model, processor = tm.build("llava")
    image = tm.image(0)
    plain = CRG(model, processor).score(image, PROMPT, CANDIDATES, REGIONS)
    loose = CRG(model, processor, plausibility_beta=1e-9).score(image, PROMPT, CANDIDATES, REGIONS)
    assert loose == pytest.approx(plain, abs=1e-4)  # a cutoff that removes nothing changes nothing
    strict = CRG(model, processor, plausibility_beta=1.0).score(image, PROMPT, CANDIDATES, REGIONS)
    assert all(s == -math.inf for s in strict[2:])  # only the reference argmax survives beta = 1


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_rerank(family):
    model, processor = tm.build(family)
    crg = CRG(model, processor)
    image = tm.image(0)
    proposals = [(2, 2, 12, 10), (14, 4, 24, 16), (0, 10, 8, 20)]
    text = "a red cup"
    best, scores = crg.rerank(image, text, proposals, prompt=PROMPT)
    expected = [
        brute_scores(model, crg, image, PROMPT, [text], [blackout(image, [box])])[0].sum().item() for box in proposals
    ]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert best == max(range(3), key=expected.__getitem__)
    # unnormalised, the score is a constant plus the drop in log-likelihood that blacking out the proposal causes
    plain = CRG(model, processor, alpha=0.0)
    ref = plain.score(image, PROMPT, [text], proposals[:1])[0]
    drops = [ref - plain.score(blackout(image, [box]), PROMPT, [text], [box])[0] for box in proposals]
    best, _ = crg.rerank(image, text, proposals, prompt=PROMPT, normalize=False)
    assert best == max(range(3), key=drops.__getitem__)


def test_match_is_guided_probability_of_yes():
    model, processor = tm.build("llava")
    crg = CRG(model, processor)
    image = tm.image(0)
    p = crg.match(image, "a red cup", REGIONS)
    prompt = "Does this image match: a red cup?"
    expected = brute_scores(model, crg, image, prompt, ["yes"], [blackout(image, REGIONS)])[0].sum().exp().item()
    assert 0 < p < 1
    assert p == pytest.approx(expected, rel=1e-4)
    assert crg.match_batch([image, image], ["a red cup", "a blue dog"], [REGIONS, REGIONS])[0] == pytest.approx(p)


def test_bad_input():
    model, processor = tm.build("llava")
    crg = CRG(model, processor)
    image = tm.image(0)  # 24 x 20
    with pytest.raises(ValueError, match="outside the image"):
        crg.score(image, PROMPT, CANDIDATES, [(30, 30, 40, 40)])
    with pytest.raises(ValueError, match="no regions"):
        crg.score(image, PROMPT, CANDIDATES, [])
    with pytest.raises(ValueError, match="no regions"):
        crg.generate(image, PROMPT, None)
    with pytest.raises(ValueError, match="candidates"):
        crg.score(image, PROMPT, [], REGIONS)
    with pytest.raises(ValueError, match="no tokens"):
        crg.score(image, PROMPT, [""], REGIONS)
    with pytest.raises(ValueError, match="reduce"):
        crg.score(image, PROMPT, CANDIDATES, REGIONS, reduce="max")
    with pytest.raises(ValueError, match="proposals"):
        crg.rerank(image, "a red cup", [])
    with pytest.raises(ValueError, match="mode"):
        CRG(model, processor, mode="both")
    with pytest.raises(ValueError, match="alpha"):
        CRG(model, processor, alpha=float("nan"))
    with pytest.raises(ValueError, match="fill"):
        CRG(model, processor, fill=(0, 0))
    with pytest.raises(ValueError, match="each"):
        CRG(model, processor, mode="each").generate(image, PROMPT, REGIONS)


def test_proposer_fills_in_missing_regions():
    from vcontrast.crg.proposals import Proposal

    model, processor = tm.build("llava")
    image = tm.image(0)
    asked = []

    def proposer(image, phrases):
        asked.append(phrases)
        return [Proposal(box=(2.0, 2.0, 12.0, 10.0), score=0.9, phrase=phrases[0])] if phrases else []

    crg = CRG(model, processor, proposer=proposer)
    prompt = "which colour is the cup left of the plate ?"
    assert crg.score(image, prompt, CANDIDATES) == pytest.approx(
        CRG(model, processor).score(image, prompt, CANDIDATES, [(2, 2, 12, 10)]), abs=1e-5
    )
    assert asked and "cup" in asked[0]
    with pytest.raises(ValueError, match="proposer found none"):
        crg.score(image, "what is it ?", CANDIDATES)
