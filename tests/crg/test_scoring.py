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


def brute_tokens(crg, prompt, candidate):
    """The tokens the model itself writes: the tokens of prompt + separator + candidate after the prompt's (the
    templates here end in ":", a newline or a special token, and nothing merges across the boundary)."""
    rendered = crg.rendered_prompt(prompt)
    ends_special = any(rendered.endswith(token) for token in crg.processor.tokenizer.all_special_tokens)
    separator = "" if rendered[-1].isspace() or ends_special else " "
    prompt_ids = crg.processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    joint = crg.processor.tokenizer(rendered + separator + candidate, add_special_tokens=False)["input_ids"]
    assert joint[: len(prompt_ids)] == prompt_ids
    return joint[len(prompt_ids) :]


def brute_guided(model, crg, image, prompt, candidates, contrast_images, beta=None):
    """Per candidate: the guided scores (n, V) at its n positions from two full forwards, and its tokens (n,);
    with VCD's plausibility cutoff at `beta` if given."""
    text = crg.prompt_text(prompt)
    reference = crg._process([image], [text])
    contrasts = [crg._process([im], [text]) for im in contrast_images]
    out = []
    for candidate in candidates:
        tokens = brute_tokens(crg, prompt, candidate)
        ids = torch.cat([reference["input_ids"], torch.tensor([tokens])], dim=1)
        n = len(tokens)
        ref = torch.log_softmax(brute.full_logits(model, reference, ids)[0, -n - 1 : -1], -1)
        con = torch.stack(
            [torch.log_softmax(brute.full_logits(model, c, ids)[0, -n - 1 : -1], -1) for c in contrasts]
        ).mean(0)
        guided = (1 + crg.alpha) * ref - crg.alpha * con
        if beta is not None:
            guided = guided.masked_fill(ref < math.log(beta) + ref.max(-1, keepdim=True).values, -math.inf)
        out.append((guided, torch.tensor(tokens)))
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


def brute_loglik(model, crg, image, prompt, text):
    """log p(text | image, prompt) from one full forward of prompt + text."""
    batch = crg._process([image], [crg.prompt_text(prompt)])
    tokens = brute_tokens(crg, prompt, text)
    return brute.candidate_scores(model, batch, batch, tokens, alpha=0.0, normalize=False).sum().item()


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_rerank(family):
    """Re-ranking scores proposal i by the paper's log-ratio log p(y | I) - log p(y | I with box i blacked out)."""
    model, processor = tm.build(family)
    crg = CRG(model, processor)
    image = tm.image(0)
    proposals = [(2, 2, 12, 10), (14, 4, 24, 16), (0, 10, 8, 20)]
    text = "a red cup"
    best, scores = crg.rerank(image, text, proposals, prompt=PROMPT)
    full = brute_loglik(model, crg, image, PROMPT, text)
    drops = [full - brute_loglik(model, crg, blackout(image, [box]), PROMPT, text) for box in proposals]
    assert scores == pytest.approx(drops, abs=1e-4)
    assert best == max(range(3), key=drops.__getitem__)
    # the option: the renormalised guided log-likelihood of the text, contrast = only box i blacked out
    best, scores = crg.rerank(image, text, proposals, prompt=PROMPT, normalize=True)
    expected = [
        brute_scores(model, crg, image, PROMPT, [text], [blackout(image, [box])])[0].sum().item() for box in proposals
    ]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert best == max(range(3), key=expected.__getitem__)


@pytest.mark.parametrize(("family", "text"), [("llava", "a red cup"), ("qwen2_vl", "a small square")])
def test_rerank_follows_the_log_ratio_where_normalised_disagrees(family, text):
    """Items where the renormalised guided score picks another proposal: the default follows the log-ratio."""
    model, processor = tm.build(family)
    image = tm.image(0)
    proposals = [(2, 2, 12, 10), (14, 4, 24, 16), (0, 10, 8, 20), (10, 0, 20, 8)]
    crg = CRG(model, processor, alpha=1.0)
    full = brute_loglik(model, crg, image, PROMPT, text)
    drops = [full - brute_loglik(model, crg, blackout(image, [box]), PROMPT, text) for box in proposals]
    best, _ = crg.rerank(image, text, proposals, prompt=PROMPT)
    normalised, _ = crg.rerank(image, text, proposals, prompt=PROMPT, normalize=True)
    assert best == max(range(len(proposals)), key=drops.__getitem__)
    assert normalised != best  # the case does tell the two rules apart
    # the log-ratio does not depend on alpha, and the unnormalised guided score (sum lp_ref + alpha * log-ratio)
    # ranks the same
    assert CRG(model, processor, alpha=3.0).rerank(image, text, proposals, prompt=PROMPT)[0] == best
    guided = crg.score_batch(
        [image] * len(proposals), [PROMPT] * len(proposals), [[text]] * len(proposals), [[b] for b in proposals],
        normalize=False,
    )  # fmt: skip
    assert max(range(len(proposals)), key=lambda i: guided[i][0]) == best


def test_rerank_batch_equals_single():
    """Two examples with images of different sizes (left padding in Qwen2-VL) and different proposal counts."""
    model, processor = tm.build("qwen2_vl")
    crg = CRG(model, processor)
    images = [tm.image(0), tm.image(1, size=(28, 16))]
    texts = ["a red cup", "the cat is left of the dog"]
    proposals = [[(2, 2, 12, 10), (14, 4, 24, 16)], [(0, 0, 10, 8), (10, 2, 20, 12), (18, 0, 28, 16)]]
    batched = crg.rerank_batch(images, texts, proposals, prompt=PROMPT)
    for i in range(2):
        best, scores = crg.rerank(images[i], texts[i], proposals[i], prompt=PROMPT)
        assert batched[i][0] == best
        assert batched[i][1] == pytest.approx(scores, abs=1e-4)
    with pytest.raises(ValueError, match="as many texts"):
        crg.rerank_batch(images, texts[:1], proposals)


def test_match_is_guided_yes_over_yes_plus_no():
    model, processor = tm.build("llava")
    crg = CRG(model, processor)
    image = tm.image(0)
    prompt = "Does this image match: a red cup?"
    yes, no = (
        s.sum().item() for s in brute_scores(model, crg, image, prompt, ["yes", "no"], [blackout(image, REGIONS)])
    )
    p = crg.match(image, "a red cup", REGIONS)
    assert p == pytest.approx(math.exp(yes) / (math.exp(yes) + math.exp(no)), rel=1e-4)
    raw = crg.match(image, "a red cup", REGIONS, normalize_yes_no=False)
    assert raw == pytest.approx(math.exp(yes), rel=1e-4)
    assert raw < p  # the guided distribution puts mass on other words too
    assert crg.match_batch([image, image], ["a red cup", "a blue dog"], [REGIONS, REGIONS])[0] == pytest.approx(p)
    with pytest.raises(ValueError, match="answers"):
        crg.match(image, "a red cup", REGIONS, answers=("yes",))


def test_yes_probability_is_stable():
    from vcontrast.crg.crg import yes_probability

    assert yes_probability(-1000.0, -1001.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert yes_probability(-math.inf, -math.inf) == 0.5
    assert yes_probability(0.0, -math.inf) == 1.0


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


def test_mask_regions_and_given_contrast_image():
    """A mask region scores as brute force on the masked image; `contrast_image=` is used as the contrast as is."""
    import numpy as np
    from PIL import Image

    model, processor = tm.build("qwen2_vl")
    crg = CRG(model, processor)
    image = tm.image(0)
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[3:9, 4:7] = True
    mask[12:15, 15:22] = True
    expected = brute_scores(model, crg, image, PROMPT, CANDIDATES[:2], [blackout(image, mask)])
    got = crg.score(image, PROMPT, CANDIDATES[:2], regions=[Image.fromarray(mask.astype(np.uint8) * 255, "L")])
    torch.testing.assert_close(torch.tensor(got), torch.stack([e.sum() for e in expected]), atol=1e-4, rtol=1e-5)
    # masks in "each" (re-ranking) and "combined" modes
    _, scores = crg.rerank(image, "a red cup", [mask, (0, 10, 8, 20)], prompt=PROMPT)
    full = brute_loglik(model, crg, image, PROMPT, "a red cup")
    drops = [full - brute_loglik(model, crg, blackout(image, r), PROMPT, "a red cup") for r in (mask, (0, 10, 8, 20))]
    assert scores == pytest.approx(drops, abs=1e-4)
    combined = CRG(model, processor, mode="combined")
    expected = brute_scores(model, combined, image, PROMPT, CANDIDATES[:1], [blackout(image, (4, 3, 22, 15))])
    assert combined.score(image, PROMPT, CANDIDATES[:1], [mask])[0] == pytest.approx(
        expected[0].sum().item(), abs=1e-4
    )
    # a contrast image given directly (e.g. an inpainted one): no regions needed
    painted = Image.new("RGB", image.size, (10, 200, 30))
    expected = brute_scores(model, crg, image, PROMPT, CANDIDATES[:2], [painted])
    got = crg.score(image, PROMPT, CANDIDATES[:2], contrast_image=painted)
    torch.testing.assert_close(torch.tensor(got), torch.stack([e.sum() for e in expected]), atol=1e-4, rtol=1e-5)
    _, contrast = crg.build_inputs(image, PROMPT, contrast_image=painted)
    direct = crg._process([painted], [crg.prompt_text(PROMPT)])
    assert torch.equal(contrast["pixel_values"], direct["pixel_values"])
    with pytest.raises(ValueError, match="same size"):
        crg.score(image, PROMPT, CANDIDATES, contrast_image=Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="expected"):
        crg.score(image, PROMPT, CANDIDATES, regions=[np.ones((4, 4), dtype=bool)])


@pytest.mark.parametrize("condition", ["GaussianBlur", "NoImage"])
def test_rerank_refuses_a_contrast_condition(condition):
    """Re-ranking blacks out each proposal alone; a `contrast=` condition would give one score for all proposals."""
    from vcontrast import conditions

    model, processor = tm.build("llava")
    contrast = conditions.GaussianBlur(3.0) if condition == "GaussianBlur" else conditions.NoImage()
    crg = CRG(model, processor, contrast=contrast)
    proposals = [(2, 2, 12, 10), (14, 4, 24, 16), (0, 10, 8, 20)]
    with pytest.raises(ValueError, match=f"`contrast`.*{condition}.*without `contrast=`"):
        crg.rerank(tm.image(0), "a red cup", proposals, prompt=PROMPT)
    with pytest.raises(ValueError, match="without `contrast=`"):
        crg.rerank_batch([tm.image(0)], ["a red cup"], [proposals], prompt=PROMPT)


def test_normalized_boxes():
    """`normalized=True` reads boxes as fractions of the size (as `Blackout` does); without it, boxes that all lie
    inside [0, 1] on an image of 8 pixels or more a side are refused instead of blacking out one pixel."""
    import numpy as np

    model, processor = tm.build("llava")
    image = tm.image(0, size=(40, 30))
    fractions, pixels = [(0.1, 0.2, 0.6, 0.5), (0.5, 0.5, 1.0, 1.0)], [(4, 6, 24, 15), (20, 15, 40, 30)]
    normalized, plain = CRG(model, processor, normalized=True), CRG(model, processor)
    assert normalized.regions_for(image, PROMPT, fractions) == pixels
    assert normalized.score(image, PROMPT, CANDIDATES, fractions) == pytest.approx(
        plain.score(image, PROMPT, CANDIDATES, pixels), abs=1e-5
    )
    assert normalized.rerank(image, "a red cup", fractions, prompt=PROMPT)[1] == pytest.approx(
        plain.rerank(image, "a red cup", pixels, prompt=PROMPT)[1], abs=1e-5
    )
    mask = np.zeros((30, 40), dtype=bool)
    mask[1:3, 1:3] = True  # masks stay in pixels
    found = normalized.regions_for(image, "", [mask, fractions[0]])
    assert found[0].sum() == 4 and found[1] == pixels[0]
    for boxes in (fractions, [(0, 0, 1, 1)], [fractions[0], mask]):
        with pytest.raises(ValueError, match=r"inside \[0, 1\].*normalized=True"):
            plain.score(image, PROMPT, CANDIDATES, boxes)
    with pytest.raises(ValueError, match="normalized=True"):
        plain.rerank(image, "a red cup", fractions, prompt=PROMPT)
    with pytest.raises(ValueError, match="normalized=True"):
        plain.generate(image, PROMPT, fractions, max_new_tokens=1)
    assert plain.regions_for(image, PROMPT, [(0, 0, 1, 1), (3, 3, 5, 5)]) == [(0, 0, 1, 1), (3, 3, 5, 5)]
    with pytest.raises(ValueError, match="normalized"):
        CRG(model, processor, normalized="yes")
