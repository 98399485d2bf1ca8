"""CRG speed on a LLaVA-1.5-shaped tiny model, side by side with the plain path, in one run.

The model has LLaVA-1.5's shape where it sets the cost pattern: CLIP at 336 px with patch 14 (576 image tokens per
image), a LLaVA projector, a Llama text model and a 32k vocabulary, but small widths and depths so that it runs on a
laptop CPU. Random weights: only speed (and exact agreement of scores and tokens) is measured.

1. Scoring 4 candidates: `CRG.score` (prompt + image prefilled once per condition, candidates batched on the cached
   prefix) vs the naive way (two full forwards per candidate, full log-softmax), same scores.
2. Generation: tokens/s of CRG greedy decoding (both streams batched in one forward, and `CRGLogitsProcessor`) vs
   plain greedy `generate`, the same number of new tokens (EOS suppressed until then), prefill included.

Run: `python benchmarks/crg_speed.py [--threads N] [--repeats R] [--new-tokens T]`. Each timing is the median of R
runs, the methods interleaved so that load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import transformers as tf
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LogitsProcessorList

from vcontrast.crg import CRG, CRGLogitsProcessor, two_stream_generate

# A small word-level vocabulary (the model's embedding has 32k rows, like LLaVA-1.5's, most of them unused).
_LINES = (
    "what is in the box ? which colour shape a an of to left right above below red green blue yellow cup plate",
    "cat dog circle square triangle yes no does this image match : . , there one two three four user assistant",
    "describe answer question picture small big near far on under behind front the",
)
WORDS = [word for line in _LINES for word in line.split()]
TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}user :{% else %}assistant :{% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %} <image>{% elif item['type'] == 'text' %}"
    " {{ item['text'] }}{% endif %}{% endfor %} .{% endfor %}{% if add_generation_prompt %} assistant :{% endif %}"
)


def build_llava_15_shaped(vocab_size: int = 32000) -> tuple[tf.LlavaForConditionalGeneration, tf.LlavaProcessor]:
    """A random LLaVA-1.5-shaped model (336 px, patch 14, 576 image tokens) with small widths, and its processor."""
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(["<pad>", "<unk>", "<s>", "</s>", "<image>", *WORDS]))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = tf.CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True
    )
    processor = tf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=fast,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATE,
    )
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=336,
            patch_size=14,
            projection_dim=64,
        ),
        text_config=tf.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
        image_token_id=fast.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # spread the weights so that logits differ visibly between tokens
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 if "embed" in name and "patch" not in name else 1.5 / param[0].numel() ** 0.5)
    model.generation_config.pad_token_id = 0
    return model, processor


def naive_scores(crg: CRG, image: Image.Image, prompt: str, candidates: list[str], regions) -> list[float]:
    """Two full forwards per candidate (prompt + image + candidate, no cache), full-vocabulary log-softmax."""
    model = crg.model
    prepared = crg.prepare([image], [prompt], [regions])
    out = []
    for candidate in candidates:
        tokens = torch.tensor([crg.processor.tokenizer(candidate, add_special_tokens=False)["input_ids"]])
        n = tokens.shape[1]
        logprobs = []
        for inputs in (prepared.reference, prepared.contrast):
            batch = dict(inputs)
            batch["input_ids"] = torch.cat([inputs["input_ids"], tokens], dim=1)
            batch["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], dim=1)
            with torch.no_grad():
                logits = model(**batch).logits[0, -n - 1 : -1].float()
            logprobs.append(torch.log_softmax(logits, -1))
        guided = torch.log_softmax((1 + crg.alpha) * logprobs[0] - crg.alpha * logprobs[1], -1)
        out.append(float(guided[torch.arange(n), tokens[0]].sum()))
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved(fns: dict, repeats: int) -> dict:
    """Median time and last result of each function, run in turns (one warm-up round first)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens to generate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = build_llava_15_shaped()
    crg = CRG(model, processor, alpha=1.0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    regions = [(100, 80, 300, 260), (400, 200, 560, 400)]
    prompt = "what is left of the red cup ?"
    candidates = ["a blue plate", "the yellow cat", "a small green square", "two dogs"]
    reference, _ = crg.build_inputs(image, prompt, regions)
    image_tokens = int((reference["input_ids"] == model.config.image_token_id).sum())
    print(f"model: LLaVA-1.5-shaped, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{image_tokens} image tokens, prompt {reference['input_ids'].shape[1]} tokens, "
          f"vocab {model.config.text_config.vocab_size}; torch threads {torch.get_num_threads()}")  # fmt: skip

    # 1. scoring
    results = interleaved(
        {
            "naive": lambda: naive_scores(crg, image, prompt, candidates, regions),
            "crg": lambda: crg.score(image, prompt, candidates, regions),
        },
        args.repeats,
    )
    (t_naive, s_naive), (t_crg, s_crg) = results["naive"], results["crg"]
    diff = max(abs(a - b) for a, b in zip(s_naive, s_crg, strict=True))
    print(f"\nscoring {len(candidates)} candidates (median of {args.repeats}):")
    print(f"  naive (2 full forwards per candidate): {t_naive * 1000:8.1f} ms")
    print(f"  CRG.score (prefix cache, batched):     {t_crg * 1000:8.1f} ms   speed-up {t_naive / t_crg:.2f}x")
    print(f"  max |score difference|: {diff:.2e}")

    # 2. generation; the same with one new token measures the prefill, so that decoding alone can be read off too
    n = args.new_tokens
    # All three from the same prepared batches: input building (blackout + processor) is timed apart below.
    reference, contrast = crg.build_inputs(image, prompt, regions)

    def with_processor(**kw):
        with CRGLogitsProcessor(model, contrast) as guidance:
            return model.generate(**reference, logits_processor=LogitsProcessorList([guidance]), **kw)

    methods = {
        "plain": lambda **kw: model.generate(**reference, **kw),
        "batched": lambda **kw: two_stream_generate(model, reference, contrast, **kw),
        "processor": with_processor,
    }
    runs = {}
    for name, fn in methods.items():
        for length in (n, 1):
            kwargs = {"max_new_tokens": length, "min_new_tokens": length, "do_sample": False}
            runs[name, length] = lambda fn=fn, kwargs=kwargs: fn(**kwargs)
    results = interleaved(runs, args.repeats)
    t_plain, t_plain_1 = results["plain", n][0], results["plain", 1][0]
    same = torch.equal(results["batched", n][1], results["processor", n][1])
    t_build, _ = timed(lambda: crg.build_inputs(image, prompt, regions), args.repeats)
    print(f"\ngreedy generation of {n} tokens (median of {args.repeats}):")
    print(f"  {'':38s} {'end to end':>12s} {'vs plain':>9s} {'decoding only':>15s} {'vs plain':>9s}")
    rows = (
        ("plain", "plain generate"),
        ("batched", "CRG, both streams in one forward"),
        ("processor", "CRG, CRGLogitsProcessor"),
    )
    for name, label in rows:
        t, t_1 = results[name, n][0], results[name, 1][0]
        decode = (n - 1) / (t - t_1)
        ratio = decode / ((n - 1) / (t_plain - t_plain_1))
        print(f"  {label + ':':38s} {n / t:8.1f} t/s {t_plain / t:8.2f}x {decode:11.1f} t/s {ratio:8.2f}x")
    print(f"  prefill (1 token): plain {t_plain_1 * 1000:.0f} ms, batched {results['batched', 1][0] * 1000:.0f} ms, "
          f"processor {results['processor', 1][0] * 1000:.0f} ms")  # fmt: skip
    print(f"  batched and processor tokens identical: {same}")
    print(f"  CRG input building (blackout + processor, both images): {t_build * 1000:.0f} ms per call")


if __name__ == "__main__":
    main()
