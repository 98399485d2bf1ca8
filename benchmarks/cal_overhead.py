"""CAL's training-step cost, side by side in one run: plain MLE vs vcontrast's CAL vs the paper's attention-mask CAL.

Three ways to take one training step (forward, backward, AdamW step) on the same model and batch:

- `mle`: the model's own loss (`model(**batch, labels=labels).loss`, transformers' causal-LM cross-entropy).
- `cal`: `vcontrast.cal.cal_loss` with `NoImage()`: the with-image forward's logits give CE and the with-image gold
  logits; the contrast pass is a no-grad, eval-mode language-model forward over the text tokens only (no vision
  tower), scoring only the gold tokens.
- `paper`: the official CAL code (`llava_llama.py`) transcribed onto the transformers classes: the same merged input
  embeddings (vision tower once) go through a second, no-grad, full-length language-model forward with the image
  tokens masked out of the attention mask; both passes build full-vocabulary float32 logits (plus the official
  code's clone), and the gains are pooled over the flattened batch.

Models (random weights; only cost is measured):

- `llava15` (default): LLaVA-1.5's shape where it sets the cost pattern: CLIP at 336 px with patch 14 (576 image
  tokens), LLaVA's projector, a Llama text model, ~120 text tokens per sample (a 40-token prompt and an 80-token
  answer, the labels), vision tower frozen as in LLaVA's instruction tuning; widths and depths are small so that it
  runs on a CPU, with the vocabulary scaled so that the LM head is a few percent of the language model, as in
  LLaVA-1.5-7B (a 32k vocabulary on a 384-wide model would make the head dominate and flatter CAL).
- `llava7b`: LLaVA-1.5-7B's real sizes (CLIP ViT-L/14 at 336 px, 24 layers of 1024; a 32-layer, 4096-wide Llama
  with a 32064-row embedding and head; 7.06B parameters, 6.76B of them trained), with `llava15`'s batch layout and its
  frozen vision tower; for a GPU (`--device cuda`; refused on the CPU). It is built directly on the device in
  `--dtype` (no float32 or CPU copy); `--hidden`, `--layers`, `--vocab` and the `--vision-*` sizes do not apply.
  transformers' own random init (normal, std `initializer_range` = 0.02) gives logits of std about 1.3 at this width
  (0.02 * sqrt(4096); RMS-normed hidden states), far from float16's range, so it is kept.
- `toy`: the built-in toy VLM's shape (`vcontrast.toy.model.toy_config`, 64 image tokens), if importable.

Time: each step is timed with the three methods interleaved round by round (so load from other processes hits them
alike); the median over rounds is reported. Memory: tracemalloc does not see torch's allocations, and the process's
resident set size mostly shows the allocator's caching, so one extra step per method runs under `torch.profiler`
with `profile_memory=True`, and its memory timeline (`export_memory_timeline`: every tensor the step creates, keeps
or frees, parameters, gradients, optimizer state and activations included, by category) gives the peak of live
tensor bytes, the CPU counterpart of `torch.cuda.max_memory_allocated`. (The process's RSS high-water mark came out
identical for the three methods: it is set by the allocator and the libraries, not by the step's tensors.)

With other processes on the machine, wall-clock times are noisy; with `--threads 1` the process CPU time of each step
measures the work itself and is printed beside the wall-clock time.

Run: `python benchmarks/cal_overhead.py [--model llava15|llava7b|toy] [--batch 2] [--rounds 9] [--threads 1]
[--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]`.

`--device` (default `cpu`) and `--dtype` (default `float32`) say where the model and the batch live and in what
precision the model (and the pixel values) are; AdamW keeps its state in the parameters' dtype (pure 16-bit
training, no master weights). On CUDA: the optimizer is AdamW with `foreach=True`, every timed step is bracketed by
`torch.cuda.synchronize()`, the process-CPU-time table is left out (it would time the host's kernel launches and
waits, not the work), and memory is `torch.cuda.max_memory_allocated()` over one extra step per method, after
`torch.cuda.reset_peak_memory_stats()`: the same quantity as the CPU's profiler peak (parameters, gradients,
optimizer state and activations), from the allocator. The header then names the device and the dtype. Use bfloat16:
in float16 without loss scaling AdamW's eps (1e-8) rounds to 0, so parameters without gradient (unused embedding
rows) become NaN after the first step; a run whose losses turn non-finite says so (timings stay what they are).

On a GPU (H100 or H200; on an H200 on 2026-11-28 this and crg_speed's 7B run took under 2 minutes together, a step
0.23-0.29 s; peak memory 63.6 GiB in bfloat16, in the optimizer step: weights, gradients, AdamW's two moments and
foreach's temporary square roots, 2 bytes per (trained) parameter each; the allocator setting only limits
fragmentation):

    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \\
        python benchmarks/cal_overhead.py --device cuda --dtype bfloat16 --model llava7b --rounds 20 --warmup 3
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers as tf
from common import LLAVA_7B_TEXT, LLAVA_7B_VISION, add_device_args, build_llava, parse_device
from torch.nn import functional as F

from vcontrast.cal import CALConfig, cal_loss
from vcontrast.models import get_adapter

IMAGE_TOKEN = 4


def build(
    kind: str, args: argparse.Namespace, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[tf.LlavaForConditionalGeneration, dict]:
    """A random LLaVA-architecture model and a right-padded labelled batch (image block inside the prompt), on
    `device`, the model (and the pixel values) in `dtype`; the model is built there (no float32 or CPU copy)."""
    torch.manual_seed(0)
    if kind in ("llava15", "llava7b"):
        if kind == "llava7b":
            vision = tf.CLIPVisionConfig(**LLAVA_7B_VISION, image_size=336, patch_size=14)
            text = tf.LlamaConfig(**LLAVA_7B_TEXT, max_position_embeddings=2048, pad_token_id=0)
        else:
            vision = tf.CLIPVisionConfig(
                hidden_size=args.vision_hidden,
                intermediate_size=4 * args.vision_hidden,
                num_hidden_layers=args.vision_layers,
                num_attention_heads=4,
                image_size=336,
                patch_size=14,
                projection_dim=args.hidden,
            )
            text = tf.LlamaConfig(
                vocab_size=args.vocab,
                hidden_size=args.hidden,
                intermediate_size=int(2.6875 * args.hidden),  # LLaVA-7B's 11008 / 4096
                num_hidden_layers=args.layers,
                num_attention_heads=args.hidden // 64,
                max_position_embeddings=2048,
                pad_token_id=0,
            )
        config = tf.LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=IMAGE_TOKEN,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_seq_length=576,
        )
        n_image, image_size, prompt, answer = 576, 336, 40, 80
    elif kind == "toy":
        from vcontrast.toy.model import toy_config

        config = toy_config(vocab_size=args.toy_vocab)
        n_image = config.image_seq_length
        image_size = config.vision_config.image_size
        prompt, answer = 16, 24
    else:
        raise ValueError(f"--model (={kind!r}) has to be 'llava15', 'llava7b' or 'toy'")
    model = build_llava(config, device, dtype)
    model.config.image_token_id = IMAGE_TOKEN
    model.model.vision_tower.requires_grad_(False)  # LLaVA instruction tuning trains projector + LM
    model.train()

    vocab = config.text_config.vocab_size
    lengths = [prompt + answer - 20 * (b % 2) for b in range(args.batch)]  # uneven rows: right padding
    total = max(lengths) + n_image + 1
    input_ids = torch.zeros(args.batch, total, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for b, n_text in enumerate(lengths):
        first = prompt // 4
        text = torch.randint(5, vocab, (n_text,))
        row = torch.cat([torch.tensor([1]), text[:first], torch.full((n_image,), IMAGE_TOKEN), text[first:]])
        input_ids[b, : len(row)] = row
        attention_mask[b, : len(row)] = 1
        n_answer = n_text - prompt
        labels[b, len(row) - n_answer : len(row)] = row[-n_answer:]
    pixel_values = torch.randn(args.batch, 3, image_size, image_size)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values, "labels": labels}
    batch = {k: v.to(device, dtype=dtype if v.is_floating_point() else None) for k, v in batch.items()}
    return model, batch


def mle_loss(model, batch):
    return model(**batch).loss


def cal_loss_ours(model, batch):
    return cal_loss(model, batch, CALConfig()).loss


def paper_loss(model, batch, alpha=1.0, beta=5.0, window=3):
    """The official CAL loss (foundation-multimodal-models/CAL, `llava_llama.py`), on transformers' LLaVA classes."""
    adapter = get_adapter(model)
    lm = model.model.language_model
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
    positions = adapter.position_ids(batch)
    try:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, position_ids=positions).logits.float()  # with image, with grad
    finally:
        handle.remove()
    labels = batch["labels"]
    with torch.no_grad():
        mask_wo = batch["attention_mask"].masked_fill(adapter.image_token_mask(batch["input_ids"]), 0)
        hidden = lm(inputs_embeds=captured["embeds"].detach(), attention_mask=mask_wo, position_ids=positions)
        logits_wo = model.lm_head(hidden.last_hidden_state).float()  # a second full-vocabulary fp32 tensor
    vocab = logits.shape[-1]
    shift_logits = logits[..., :-1, :].contiguous().view(-1, vocab)
    shift_labels = labels[..., 1:].contiguous().view(-1)
    with torch.no_grad():
        gold = shift_labels.clamp(min=0).unsqueeze(1)
        w_img = torch.gather(shift_logits.clone(), 1, gold)  # the official code clones the logits first
        wo_img = torch.gather(logits_wo[..., :-1, :].reshape(-1, vocab), 1, gold)
        sub = torch.clamp(w_img - wo_img, min=alpha, max=beta)
        pool = torch.nn.AvgPool1d(window, stride=1, padding=window // 2, count_include_pad=False)
        sub = pool(sub[:, 0][None, None])[0, 0]  # over the flattened batch
    loss = F.cross_entropy(shift_logits, shift_labels, reduction="none") * sub
    return loss.sum() / (sub[shift_labels != -100].sum() + 1e-6)


METHODS = {"mle": mle_loss, "cal": cal_loss_ours, "paper": paper_loss}


def step(model, optimizer, batch, method):
    loss = METHODS[method](model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def peak_tensor_mib(model, optimizer, batch, method) -> float:
    """Peak of live tensor bytes during one step, from the profiler's memory timeline (all categories summed)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export_memory_timeline is deprecated in favour of a CUDA-only API
        with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
            step(model, optimizer, batch, method)
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes) / 2**20


def peak_cuda_mib(model, optimizer, batch, method, device) -> float:
    """Peak allocated CUDA memory during one step (`torch.cuda.max_memory_allocated`), parameters, gradients,
    optimizer state and activations included: the CUDA counterpart of `peak_tensor_mib`."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step(model, optimizer, batch, method)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llava15", choices=["llava15", "llava7b", "toy"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--toy-vocab", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device, dtype = parse_device(parser, args)
    cuda = device.type == "cuda"
    if args.model == "llava7b" and not cuda:
        parser.error("--model llava7b (7B parameters) needs --device cuda")

    torch.set_num_threads(args.threads)
    if cuda:
        torch.cuda.set_device(device)
    model, batch = build(args.model, args, device, dtype)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, foreach=True if cuda else None)
    n_params = sum(p.numel() for p in model.parameters())
    seq = batch["input_ids"].shape[1]
    n_labels = int((batch["labels"] != -100).sum())
    print(
        f"model={args.model} params={n_params / 1e6:.1f}M batch={args.batch} seq={seq} "
        f"image_tokens={int((batch['input_ids'][0] == IMAGE_TOKEN).sum())} label_tokens={n_labels} "
        f"threads={args.threads} torch={torch.__version__} transformers={tf.__version__}"
        + (
            f" device={device}{f' ({torch.cuda.get_device_name(device)})' if cuda else ''} dtype={args.dtype} "
            f"trained_params={sum(p.numel() for p in trained) / 1e6:.1f}M"
            if cuda or dtype != torch.float32
            else ""
        )
    )
    wall = {m: [] for m in METHODS}
    cpu = {m: [] for m in METHODS}
    nonfinite = {m: 0 for m in METHODS}
    for r in range(args.warmup + args.rounds):
        for method in METHODS:
            if cuda:
                torch.cuda.synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            loss = step(model, optimizer, batch, method)
            if cuda:
                torch.cuda.synchronize(device)
            if r >= args.warmup:
                wall[method].append(time.perf_counter() - start)
                cpu[method].append(time.process_time() - start_cpu)
            nonfinite[method] += not math.isfinite(loss)
    tables = (("wall-clock", wall),) if cuda else (("wall-clock", wall), ("process CPU", cpu))
    for name, times in tables:
        median = {m: statistics.median(t) for m, t in times.items()}
        print(f"\nstep time, {name} (median of {args.rounds} interleaved rounds, [min, max])")
        for method in METHODS:
            spread = f"[{min(times[method]):.3f}, {max(times[method]):.3f}]"
            ratio = median[method] / median["mle"]
            print(f"  {method:6s} {median[method]:8.3f} s  {spread:>18s}  x{ratio:.3f} vs mle")
    if cuda:
        print("\nstep time, process CPU: n/a on CUDA (the host only launches kernels and waits)")
    if any(nonfinite.values()):
        counts = ", ".join(f"{m} {n}" for m, n in nonfinite.items())
        print(f"\nnote: non-finite losses in {counts} of {args.warmup + args.rounds} steps (see the doc on float16)")
    if args.no_memory:
        return
    if cuda:
        print("\npeak allocated CUDA memory during one step (torch.cuda.max_memory_allocated)")
        peak = {m: peak_cuda_mib(model, optimizer, batch, m, device) for m in METHODS}
    else:
        print("\npeak live tensor memory during one step (torch.profiler memory timeline)")
        peak = {m: peak_tensor_mib(model, optimizer, batch, m) for m in METHODS}
    for method in METHODS:
        print(f"  {method:6s} {peak[method]:8.1f} MiB  x{peak[method] / peak['mle']:.3f} vs mle")


if __name__ == "__main__":
    main()
