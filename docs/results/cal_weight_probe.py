"""How much CAL (1, 5) re-weights in E2 (docs/results/cal_testbed.md, "How much CAL re-weighted"): an exploratory
measurement made after tiers 1-2, not part of PLAN.md.

CAL (1, 5) clamps each label token's logit gain to [1, 5] and averages the clamped values over a window of 3, so a
token gets a weight above 1 only where it or a neighbour gains more than 1; elsewhere it gets MLE's weight. For each
seed pair, on the first `--n` image examples of its clean IT pool, this prints the raw gains' median and 90th
percentile and the share of label tokens whose CAL (1, 5) weight exceeds 1, under the aligned model the IT runs
start from and under the final clean MLE and CAL (1, 5) models.

    python docs/results/cal_weight_probe.py out/experiments/cal --n 400 > docs/results/cal_weight_probe.jsonl

`--loss-check` instead prints how far CAL (1, 1.01), what the p90 rule gave, is from MLE on one batch of 32 at the
aligned model a0: the loss, and the gradient's relative distance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vcontrast.cal import CALConfig, cal_deltas, cal_weights
from vcontrast.toy.cal_inputs import clean_pool
from vcontrast.toy.model import load
from vcontrast.toy.train import collate

PAIRS = [(a, f) for a in (0, 1, 2) for f in (0, 1)]
CAL_1_5 = CALConfig(alpha=1.0, beta=5.0, window=3)


def probe(model_dir: Path, examples: list[dict], batch_size: int = 32) -> dict:
    """Median and 90th percentile of the raw gains, and the share of label tokens CAL (1, 5) weighs above 1."""
    model, processor = load(model_dir)
    deltas, weights = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate(processor, examples[start : start + batch_size])
        delta, mask = cal_deltas(model, batch, CAL_1_5)
        deltas.append(delta[mask])
        weights.append(cal_weights(model, batch, CAL_1_5)[mask])
    delta, weight = torch.cat(deltas).double(), torch.cat(weights).double()
    return {
        "median": float(delta.median()),
        "p90": float(torch.quantile(delta, 0.9)),
        "above_1": float((weight > 1.0).double().mean()),
        "n_tokens": int(delta.numel()),
    }


def loss_check(aligned: Path, examples: list[dict], beta: float = 1.01) -> dict:
    """MLE and CAL (1, `beta`) on one batch of `examples` at the model `aligned`: losses and gradient distance."""
    from vcontrast.cal import cal_loss
    from vcontrast.toy.train import mle_loss

    model, processor = load(aligned)
    model.train()
    batch = collate(processor, examples)
    results = []
    config = CALConfig(alpha=1.0, beta=beta, window=3)
    for loss_fn in (lambda: mle_loss(model, batch), lambda: cal_loss(model, batch, config).loss):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((float(loss.detach()), grad.clone()))
    (mle, g_mle), (cal, g_cal) = results
    return {"mle_loss": mle, "cal_loss": cal, "grad_rel_diff": float((g_mle - g_cal).norm() / g_mle.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="E2's experiment folder (out/experiments/cal)")
    parser.add_argument("--n", type=int, default=400, help="image examples of each clean pool")
    parser.add_argument("--pool-size", type=int, default=1600, help="E2's pool size (the full budget's)")
    parser.add_argument("--loss-check", action="store_true", help="only compare CAL (1, 1.01) with MLE")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.loss_check:
        start = json.loads((args.folder / "runs/aligned/a0-f0/clean/mle/run.json").read_text())["init"]
        examples = [ex for ex in clean_pool(args.pool_size, 0, 0) if ex.get("image") is not None][:32]
        print(json.dumps(loss_check(Path(start), examples)))
        return
    for a, f in PAIRS:
        runs = args.folder / "runs" / "aligned" / f"a{a}-f{f}" / "clean"
        start = json.loads((runs / "mle" / "run.json").read_text())["init"]
        pool = [ex for ex in clean_pool(args.pool_size, a, f) if ex.get("image") is not None][: args.n]
        for name, model_dir in (("aligned", Path(start)), ("MLE", runs / "mle"), ("CAL (1, 5)", runs / "cal")):
            print(json.dumps({"pair": f"a{a}-f{f}", "model": name, **probe(model_dir, pool)}), flush=True)


if __name__ == "__main__":
    main()
