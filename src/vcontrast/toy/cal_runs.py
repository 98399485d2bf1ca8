"""The run grid of the CAL experiments "cal_noise" (E2) and "cal_scratch" (E3): one `Run` per protocol, seed pair,
cell and method; the cells, PLAN.md's run order (`tier`) and the runs of each experiment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vcontrast.toy.cal_report import METHODS
from vcontrast.toy.experiments import ExperimentBudget

__all__ = [
    "SCRATCH_NOISE",
    "TIER1_METHODS",
    "TIER1_NOISE",
    "Run",
    "cell_name",
    "cells",
    "noise_runs",
    "scratch_runs",
    "tier",
]

TIER1_METHODS = ("mle", "cal")
TIER1_NOISE = ("N2", "N3")  # the noise types of H2.1-H2.2; N1 (exploratory) waits for tier 3 (PLAN.md amendments)
SCRATCH_NOISE = "N2"


@dataclass(frozen=True)
class Run:
    """One IT run: protocol ("aligned" or "scratch"), seed pair (a, f), cell (noise type, rate) and method."""

    protocol: str
    a: int
    f: int
    noise: str | None
    rate: float
    method: str

    @property
    def cell(self) -> str:
        """The cell's name: "clean" at rate 0, else e.g. "N2-60"."""
        return cell_name(self.noise, self.rate)

    def folder(self, root: Path) -> Path:
        """The run's folder under the experiment folder `root`."""
        return Path(root) / "runs" / self.protocol / f"a{self.a}-f{self.f}" / self.cell / self.method


def cell_name(noise: str | None, rate: float) -> str:
    """A cell's name: "clean" at rate 0, else "{noise}-{percent}" (e.g. "N3-60")."""
    return "clean" if rate == 0 else f"{noise}-{round(100 * rate)}"


def cells(budget: ExperimentBudget) -> list[tuple[str | None, float]]:
    """The (noise, rate) cells of "cal_noise": the clean cell, then each noise type at each non-zero rate."""
    rates = sorted(r for r in budget.noise_rates if r > 0)
    return [(None, 0.0)] + [(noise, rate) for noise in budget.noise_types for rate in rates]


def tier(run: Run, budget: ExperimentBudget) -> int:
    """PLAN.md's run order (as amended on 2026-11-27 and 2026-11-28): 1 = MLE and CAL (1, 5) at 0% and at the highest
    rate of N2 and N3; 2 = MLE and CAL (1, 5) at the lower non-zero rates of N2 and N3 (with tier 1, H2.1's four
    cells); 3 = the other methods at 0% and the highest rate, and N1 at the highest rate; 4 = the rest of the lower
    rates. Runs of "cal_scratch" are tier 1."""
    if run.protocol == "scratch":
        return 1
    top = run.rate in (0.0, max(budget.noise_rates))
    primary = run.method in TIER1_METHODS and (run.rate == 0 or run.noise in TIER1_NOISE)
    if primary:
        return 1 if top else 2
    return 3 if top else 4


def noise_runs(budget: ExperimentBudget) -> list[Run]:
    """Every run of "cal_noise" (all tiers), seed pair by seed pair."""
    out = []
    for a in budget.align_seeds:
        for f in budget.seeds:
            for noise, rate in cells(budget):
                methods = [m for m in METHODS if not (m == "oracle" and rate == 0)]
                out += [Run("aligned", a, f, noise, rate, m) for m in methods]
    return out


def scratch_runs(budget: ExperimentBudget) -> list[Run]:
    """Every run of "cal_scratch": from scratch and aligned, MLE and CAL (1, 5), clean and N2 at the top rate."""
    if SCRATCH_NOISE not in budget.noise_types:
        raise ValueError(f"cal_scratch needs noise type {SCRATCH_NOISE} in `noise_types` (={budget.noise_types})")
    top = max(budget.noise_rates)
    chosen = [(None, 0.0)] + ([(SCRATCH_NOISE, top)] if top > 0 else [])
    return [
        Run(protocol, a, f, noise, rate, method)
        for a, f in budget.scratch_pairs
        for noise, rate in chosen
        for protocol in ("scratch", "aligned")
        for method in TIER1_METHODS
    ]
