"""`score_jobs` on its own: chunking by a memory budget changes no score; right-padded prompts are refused."""

import pytest
import torch

from tests import tiny_models as tm
from tests.crg.test_scoring import brute_tokens
from vcontrast.crg import CRG, ScoreJob, score_jobs
from vcontrast.crg.decode import stack_streams

PROMPT = "what is in the box ?"
CANDIDATES = ["a red cup", "blue", "the cat is left of the dog", "yes"]
REGIONS = [(2, 2, 12, 10), (14, 4, 24, 16)]


def count_forwards(model):
    calls = []
    handle = model.get_decoder().register_forward_pre_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(("family", "mode"), [("llava", "union"), ("qwen2_vl", "each"), ("paligemma", "union")])
def test_chunked_scores_equal_unchunked(family, mode):
    model, processor = tm.build(family)
    images = [tm.image(0), tm.image(1, size=(28, 16))]
    prompts = [PROMPT, "which colour is the cup ?"]
    candidates = [CANDIDATES, CANDIDATES[::-1]]
    regions = [REGIONS, [(0, 0, 10, 8)]]
    whole = CRG(model, processor, mode=mode, chunk_bytes=2**40).score_batch(images, prompts, candidates, regions)
    calls, handle = count_forwards(model)
    try:
        one_by_one = CRG(model, processor, mode=mode, chunk_bytes=1).score_batch(images, prompts, candidates, regions)
    finally:
        handle.remove()
    torch.testing.assert_close(torch.tensor(one_by_one), torch.tensor(whole), atol=1e-5, rtol=1e-5)
    crg = CRG(model, processor)
    multi_token = sum(len(brute_tokens(crg, p, c)) > 1 for p, cs in zip(prompts, candidates, strict=True) for c in cs)
    assert len(calls) == 1 + multi_token  # the prefill, then one chunk per multi-token job
    default = CRG(model, processor, mode=mode).score_batch(images, prompts, candidates, regions)
    torch.testing.assert_close(torch.tensor(default), torch.tensor(whole), atol=1e-5, rtol=1e-5)


def test_chunks_stay_within_the_budget():
    from vcontrast.crg.scoring import _chunks

    jobs = [
        ScoreJob(0, (1,), (5, 6, 7)),
        ScoreJob(0, (1,), (8,)),
        ScoreJob(0, (1,), (5, 6)),
        ScoreJob(0, (1,), (9, 9)),
    ]
    # 10 prefix tokens of 1 byte: a 3-token job copies 2 rows of 12 tokens, a 2-token job 2 rows of 11
    assert [len(c) for c in _chunks(jobs, 1.0, 10, 24)] == [2, 1, 1]
    assert [len(c) for c in _chunks(jobs, 1.0, 10, 10**6)] == [4]
    assert [len(c) for c in _chunks(jobs, 1.0, 10, 1)] == [2, 1, 1]  # a one-token job copies nothing


def test_right_padding_is_refused():
    model, processor = tm.build("llava")
    crg = CRG(model, processor)
    prepared = crg.prepare([tm.image(0), tm.image(1)], [PROMPT, "which colour is the cup left of the plate ?"], [
        REGIONS,
        REGIONS,
    ])  # fmt: skip
    prefix = stack_streams(prepared.reference, prepared.contrast)
    mask = prefix["attention_mask"]
    assert not bool(mask.all())  # the prompts differ in length: left padding
    flipped = {**prefix, "attention_mask": mask.flip(-1), "input_ids": prefix["input_ids"].flip(-1)}
    jobs = [ScoreJob(0, (2,), (5, 6))]
    assert len(score_jobs(model, prefix, jobs)) == 1
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        score_jobs(model, flipped, jobs)
    with pytest.raises(ValueError, match="chunk_bytes"):
        score_jobs(model, prefix, jobs, chunk_bytes=0)
    with pytest.raises(ValueError, match="score"):
        score_jobs(model, prefix, jobs, score="mean")
