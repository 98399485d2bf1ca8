"""CRG speed and memory on LLaVA-1.5-shaped tiny models, side by side with the plain path, in one run.

The models have LLaVA-1.5's image geometry (CLIP at 336 px with patch 14: 576 image tokens per image), a LLaVA
projector and a Llama text model, with small widths and depths so that they run on a CPU (but for "llava7b").
Random weights: only speed, memory (and exact agreement of scores and tokens) are measured. Two small shapes,
because the cost ratios decide what a speed-up means, and the real one:

- "lm" (default): the LM body dominates, as in LLaVA-1.5-7B (the output head is about 2% of a forward's FLOPs);
- "head": a 32k-vocabulary head over a narrow LM, so that the head dominates (the shape of earlier measurements,
  which overstate what prefix caching saves on a real model);
- "llava7b": LLaVA-1.5-7B's real sizes (CLIP ViT-L/14 at 336 px, 24 layers of 1024; a 32-layer, 4096-wide Llama with
  a 32064-row embedding and head; 7.06B parameters), for a GPU (`--device cuda`; refused on the CPU). The model is
  built directly on the device in `--dtype` (7B random parameters never exist on the CPU or in float32). The small
  word-level vocabulary below is used as for the other shapes (most embedding rows unused).

Weights are drawn as N(0, (1.5 / sqrt(fan_in))^2) for every matrix (N(0, 1) for the embeddings), so that logits
differ visibly between tokens. Fan-in scaling keeps every activation's size independent of the width (not of the
depth), so the 7B shape needs no smaller init for 16 bits: checked on CPU with its depths at narrow widths (float32
and float16 alike: hidden states up to about 100 in absolute value, logits' std 1.5, all finite) and with its widths
at 2 layers each (the same logits' std, per-layer sizes as at narrow widths); float16's range ends at 65504.

The script prints each shape's FLOP shares (vision tower + projector / LM body / output head) next to
LLaVA-1.5-7B's, counted from the parameters (2 FLOPs per parameter per token; attention's T^2 term left out).

1. Scoring K = 1, 4, 16, 64 candidates: `CRG.score` (prompt + image prefilled once per condition, candidates on
   the cached prefix) vs the naive way (two full forwards per candidate, full log-softmax), same scores.
2. Memory: peak resident memory added by one `CRG.score` call with K = 4 and K = 64 candidates, under the default
   memory budget and unbounded (`chunk_bytes` larger than everything), each in a fresh process (on CUDA: the
   allocator's peak, in this process; see below).
3. Generation: tokens/s of CRG greedy decoding (both streams batched in one forward, and `CRGLogitsProcessor`) vs
   plain greedy `generate`, the same number of new tokens (EOS suppressed until then), prefill included.

Run: `python benchmarks/crg_speed.py [--shape lm|head|llava7b] [--threads N] [--repeats R] [--new-tokens T]
[--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]`. Each timing is the median of R runs, the methods
interleaved so that load from other processes hits them alike.

`--device` (default `cpu`) and `--dtype` (default `float32`) say where the model runs and in what precision (inputs
go to the same device, pixel values to the same dtype). On CUDA every timed region is bracketed by
`torch.cuda.synchronize()`, and part 2 measures in this process, not in fresh ones: the peak of
`torch.cuda.max_memory_allocated()` (after `torch.cuda.reset_peak_memory_stats()`) during one `CRG.score` call, less
the bytes allocated before it (the model's weights). The K=64 unbounded call copies the prompt's KV cache once per
(candidate, stream), 37 GiB on the 7B shape in 16 bits; a measurement whose estimate would take the allocated total
above 70 GiB (or the device's memory) is skipped with a note. The header then names the device, the dtype and the
torch and transformers versions. `--shape llava7b` needs `--device cuda`; scores in 16 bits differ from the naive
ones by rounding (the `max |diff|` column), and the two CRG generation paths may then pick different tokens.

On a GPU (H100 or H200; about 75 s on an H200 on 2026-11-28, the model's construction included, most of it 680
naive full forwards of ~590 tokens and 24 generations of 32 tokens; 51.5 GiB allocated at most, in the K=64
unbounded call; the allocator setting only limits fragmentation):

    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \\
        python benchmarks/crg_speed.py --device cuda --dtype bfloat16 --shape llava7b --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from common import LLAVA_7B_TEXT, LLAVA_7B_VISION, add_device_args, build_llava, parse_device
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LogitsProcessorList

from vcontrast.crg import CRG, CRGLogitsProcessor, two_stream_generate
from vcontrast.crg.scoring import DEFAULT_CHUNK_FACTOR

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


# The small shapes' vision tower (and projector width).
SMALL_VISION = {
    "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "projection_dim": 64,
}  # fmt: skip
# Text-model sizes of the small shapes (vision tower and projector are the same), and the 7B one.
SHAPES = {
    "lm": {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 8},
    "head": {"vocab_size": 32000, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4},
    "llava7b": LLAVA_7B_TEXT,
}
# Part 2 on CUDA: a measurement whose estimated allocation would exceed this (or the device's memory) is skipped.
CUDA_MEMORY_CAP = 70 * 2**30


def llava_15_7b_config() -> tf.LlavaConfig:
    """LLaVA-1.5-7B's architecture (CLIP ViT-L/14 at 336 px, Vicuna-7B), for counting its FLOP shares."""
    return tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**LLAVA_7B_VISION, image_size=336, patch_size=14),
        text_config=tf.LlamaConfig(**LLAVA_7B_TEXT),
        image_token_id=32000,
    )


def flop_shares(config: tf.LlavaConfig, text_tokens: int) -> dict[str, float]:
    """Shares of one full forward's FLOPs (one image, its 576 image tokens plus `text_tokens`, output head at every
    position as a plain forward runs it) in the vision tower + projector, the LM body and the output head: 2 FLOPs
    per parameter per token, attention's T^2 term left out. Counted on a meta-device model (no memory)."""
    with torch.device("meta"):
        model = tf.LlavaForConditionalGeneration(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    vision_config = config.vision_config
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    tokens = patches + text_tokens
    language = model.model.language_model
    flops = {
        "vision": 2
        * (count(model.model.vision_tower) * (patches + 1) + count(model.model.multi_modal_projector) * patches),
        "LM body": 2 * (count(language) - count(language.embed_tokens)) * tokens,
        "head": 2 * count(model.lm_head) * tokens,
    }
    total = sum(flops.values())
    return {name: value / total for name, value in flops.items()}


def build_llava_15_shaped(
    shape: str = "lm", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[tf.LlavaForConditionalGeneration, tf.LlavaProcessor]:
    """A random LLaVA-1.5-shaped model (336 px, patch 14, 576 image tokens), small widths except for the "llava7b"
    shape, and its processor. The model is built on `device` in `dtype` (no float32 or CPU copy on the way)."""
    sizes = SHAPES[shape]
    vision_sizes = LLAVA_7B_VISION if shape == "llava7b" else SMALL_VISION
    heads = {} if shape == "llava7b" else {"num_attention_heads": 4, "num_key_value_heads": 4}
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
        vision_config=tf.CLIPVisionConfig(**vision_sizes, image_size=336, patch_size=14),
        text_config=tf.LlamaConfig(
            **sizes,
            **heads,
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
    model = build_llava(config, device, dtype).eval()
    with torch.no_grad():  # spread the weights so that logits differ visibly between tokens
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 if "embed" in name and "patch" not in name else 1.5 / param[0].numel() ** 0.5)
    model.generation_config.pad_token_id = 0
    return model, processor


def make_candidates(k: int) -> list[str]:
    """`k` distinct candidate answers of 2 to 4 words."""
    colours, shapes = ("red", "green", "blue", "yellow"), ("cup", "plate", "cat", "dog", "circle", "square")
    places = ("", " on the left", " near a box", " under the plate")
    phrases = [f"a {c} {s}{p}" for p in places for c in colours for s in shapes]
    return phrases[:k]


def naive_scores(crg: CRG, image: Image.Image, prompt: str, candidates: list[str], regions) -> list[float]:
    """Two full forwards per candidate (prompt + image + candidate, no cache), full-vocabulary log-softmax."""
    model = crg.model
    prepared = crg.prepare([image], [prompt], [regions])
    out = []
    for candidate in candidates:
        ids = crg.processor.tokenizer(candidate, add_special_tokens=False)["input_ids"]
        tokens = torch.tensor([ids], device=prepared.reference["input_ids"].device)
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


def no_sync() -> None:
    """What brackets a timed region on the CPU: nothing (`torch.cuda.synchronize` on CUDA)."""


def timed(fn, repeats: int, sync=no_sync) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved(fns: dict, repeats: int, warmup: bool = True, sync=no_sync) -> dict:
    """Median time and last result of each function, run in turns (one warm-up round first, unless `warmup=False`);
    `sync` (e.g. `torch.cuda.synchronize`) runs before and after each timed call."""
    for fn in fns.values() if warmup else ():
        fn()
    times = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            results[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


IMAGE_SIZE = (640, 480)
REGIONS = [(100, 80, 300, 260), (400, 200, 560, 400)]
PROMPT = "what is left of the red cup ?"
KS = (1, 4, 16, 64)


def scene() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, IMAGE_SIZE[::-1] + (3,), dtype=np.uint8))


def peak_rss_kib() -> tuple[int, int]:
    """(peak, current) resident set size of this process in KiB (Linux `/proc/self/status`)."""
    status = Path("/proc/self/status").read_text()
    value = lambda key: int(re.search(rf"{key}:\s+(\d+)", status).group(1))  # noqa: E731
    return value("VmHWM"), value("VmRSS")


def memory_child(shape: str, k: int, chunk_bytes: int | None, dtype: torch.dtype = torch.float32) -> None:
    """Print (JSON) the peak resident memory one `CRG.score` call of `k` candidates adds, in a fresh process."""
    model, processor = build_llava_15_shaped(shape, dtype=dtype)
    crg = CRG(model, processor, alpha=1.0, chunk_bytes=chunk_bytes)
    image, candidates = scene(), make_candidates(k)
    crg.prepare([image], [PROMPT], [REGIONS])  # warm the processor's code paths before measuring
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    _, before = peak_rss_kib()
    crg.score(image, PROMPT, candidates, REGIONS)
    peak, _ = peak_rss_kib()
    print(json.dumps({"k": k, "peak_added_mib": (peak - before) / 1024}))


def measure_memory(shape: str, k: int, chunk_bytes: int | None, threads: int | None, dtype: str = "float32") -> float:
    cmd = [sys.executable, __file__, "--shape", shape, "--memory-child", str(k), "--dtype", dtype]
    cmd += ["--chunk-bytes", str(chunk_bytes)] if chunk_bytes is not None else []
    cmd += ["--threads", str(threads)] if threads else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_added_mib"]


def kv_token_bytes(model) -> int:
    """Bytes of one token of one row of the model's KV cache (keys and values of every layer)."""
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * model.dtype.itemsize


def measure_memory_cuda(model, processor, k: int, chunk_bytes: int | None, length: int) -> float | None:
    """Peak CUDA memory (MiB) one `CRG.score` call of `k` candidates allocates beyond what was allocated before it
    (the weights), in this process; None (skipped, with a note) where an upper estimate would not fit the cap.

    The estimate: the prefill cache (2 rows of `length` tokens, "union" mode) plus the chunk's cache copies, one per
    (candidate, stream) of up to `length` + 4 tokens, at most the chunk budget (plus one job), 10% and 2 GiB more."""
    device = model.device
    crg = CRG(model, processor, alpha=1.0, chunk_bytes=chunk_bytes)
    image, candidates = scene(), make_candidates(k)
    token_bytes = kv_token_bytes(model)
    prefill = 2 * length * token_bytes
    budget = DEFAULT_CHUNK_FACTOR * prefill if chunk_bytes is None else chunk_bytes
    copies = min(2 * k * (length + 4) * token_bytes, budget + 2 * (length + 4) * token_bytes)
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    cap = min(CUDA_MEMORY_CAP, torch.cuda.get_device_properties(device).total_memory - 4 * 2**30)
    estimate = before + 1.1 * (prefill + copies) + 2 * 2**30
    if estimate > cap:
        budget_name = "default budget" if chunk_bytes is None else f"chunk_bytes {chunk_bytes:.3g}"
        print(f"  (K={k}, {budget_name}: skipped, about {estimate / 2**30:.0f} GiB estimated > cap "
              f"{cap / 2**30:.0f} GiB)")  # fmt: skip
        return None
    torch.cuda.reset_peak_memory_stats(device)
    crg.score(image, PROMPT, candidates, REGIONS)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="lm", help="text-model shape (see the doc)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens to generate")
    parser.add_argument("--skip-generation", action="store_true", help="only scoring and memory")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="candidate counts to score")
    parser.add_argument("--no-warmup", action="store_true", help="no warm-up round before the timed scoring runs")
    add_device_args(parser)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-bytes", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device, dtype = parse_device(parser, args)
    cuda = device.type == "cuda"
    if args.shape == "llava7b" and not cuda:
        parser.error("--shape llava7b (7B parameters) needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.shape, args.memory_child, args.chunk_bytes, dtype)
        return
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else no_sync

    if cuda:
        torch.cuda.set_device(device)
    model, processor = build_llava_15_shaped(args.shape, device, dtype)
    crg = CRG(model, processor, alpha=1.0)
    image, regions, prompt = scene(), REGIONS, PROMPT
    reference, _ = crg.build_inputs(image, prompt, regions)
    image_tokens = int((reference["input_ids"] == model.config.image_token_id).sum())
    length = reference["input_ids"].shape[1]
    print(f"model: LLaVA-1.5-shaped, shape {args.shape!r}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, {image_tokens} image tokens, prompt {length} tokens, "
          f"vocab {model.config.text_config.vocab_size}; torch threads {torch.get_num_threads()}")  # fmt: skip
    if cuda or dtype != torch.float32:
        name = f"{device} ({torch.cuda.get_device_name(device)})" if cuda else str(device)
        print(f"device {name}, dtype {args.dtype}, torch {torch.__version__}, transformers {tf.__version__}")
    print("\nFLOP shares of one full forward of the prompt (vision tower + projector / LM body / output head):")
    for name, config in (("this model", model.config), ("LLaVA-1.5-7B", llava_15_7b_config())):
        shares = flop_shares(config, length - image_tokens)
        print(f"  {name:14s} " + "  ".join(f"{part} {share:6.1%}" for part, share in shares.items()))

    # 1. scoring
    print(f"\nscoring K candidates of 2-4 tokens (median of {args.repeats}):")
    print(f"  {'K':>3s} {'naive (2K full forwards)':>26s} {'CRG.score':>12s} {'speed-up':>9s} {'max |diff|':>11s}")
    for k in args.ks:
        candidates = make_candidates(k)
        results = interleaved(
            {
                "naive": lambda c=candidates: naive_scores(crg, image, prompt, c, regions),
                "crg": lambda c=candidates: crg.score(image, prompt, c, regions),
            },
            args.repeats,
            warmup=not args.no_warmup,
            sync=sync,
        )
        (t_naive, s_naive), (t_crg, s_crg) = results["naive"], results["crg"]
        diff = max(abs(a - b) for a, b in zip(s_naive, s_crg, strict=True))
        print(f"  {k:3d} {t_naive * 1000:23.0f} ms {t_crg * 1000:9.0f} ms {t_naive / t_crg:8.2f}x {diff:11.1e}")

    # 2. memory, each measurement in a fresh process (on CUDA: in this one, from the allocator's peak)
    unbounded = 2**62
    budgets = (("default budget", None), ("unbounded", unbounded))
    if cuda:
        print(
            "\npeak CUDA memory allocated by one CRG.score call beyond the weights (torch.cuda.max_memory_allocated):"
        )
        measure = lambda k, chunk: measure_memory_cuda(model, processor, k, chunk, length)  # noqa: E731
    else:
        print("\npeak resident memory added by one CRG.score call (fresh process each):")
        measure = lambda k, chunk: measure_memory(args.shape, k, chunk, args.threads, args.dtype)  # noqa: E731
    peaks = {(k, name): measure(k, chunk) for k in (4, 64) for name, chunk in budgets}
    for name, _ in budgets:
        four, sixty_four = peaks[4, name], peaks[64, name]
        if four is None or sixty_four is None:
            shown = lambda v: "skipped" if v is None else f"{v:8.1f} MiB"  # noqa: E731
            print(f"  {name:15s} K=4 {shown(four):>12s}   K=64 {shown(sixty_four):>12s}")
            continue
        print(f"  {name:15s} K=4 {four:8.1f} MiB   K=64 {sixty_four:8.1f} MiB   ratio {sixty_four / four:5.2f}x")
    if args.skip_generation:
        return

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
    results = interleaved(runs, args.repeats, sync=sync)
    t_plain, t_plain_1 = results["plain", n][0], results["plain", 1][0]
    same = torch.equal(results["batched", n][1], results["processor", n][1])
    t_build, _ = timed(lambda: crg.build_inputs(image, prompt, regions), args.repeats, sync=sync)
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
