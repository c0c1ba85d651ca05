"""The notes under a comparison: which tests ran on how many rows, what the intervals, adjusted
p-values and MDEs are, and what the rows' labels (at chance, smoke, published) mean.

Kept beside compare.py so the tables and their JSON carry the same explanations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsqbench.leaderboard.labels import PUBLISHED_NOTE, chance_note, smoke_note
from zsqbench.leaderboard.stats import ALPHA, BOOTSTRAP_RESAMPLES, CONFIDENCE, MAX_SEEDS, POWER

if TYPE_CHECKING:
    from zsqbench.leaderboard.compare_rows import CompareRow, Options


def label_notes(rows: list[CompareRow]) -> list[str]:
    """What the rows' labels mean: at chance (delta not meaningful), smoke budgets, published values."""
    notes = []
    if any(not r.meaningful for r in rows):
        flagged = (r.dataset for r in rows if not r.meaningful)
        notes.append(chance_note(flagged) + "; a delta with such a side is not meaningful")
    notes.append(smoke_note([r.budget for r in rows] + [r.budget_a for r in rows if r.budget_a]))
    if any(r.a_published or r.b_published for r in rows):
        notes.append(PUBLISHED_NOTE)
    return [n for n in notes if n]


def method_notes(rows: list[CompareRow], opts: Options) -> list[str]:
    tested = [r for r in rows if r.test]
    paired = [r for r in tested if r.test == "paired"]
    untested = sum(r.delta is not None and not r.test for r in rows)
    notes = [f"delta = B − A; {len(paired)} row(s) paired by seed (scipy ttest_rel on the per-seed differences), "
             f"{len(tested) - len(paired)} by Welch's unequal-variance t-test"
             + (" (--unpaired)" if opts.unpaired else "") + f", {untested} without a test (a p-value needs ≥ 2 "
             "seeds (pairs) per side with a spread; one seed or a published value has none)"]
    if opts.interval == "bootstrap":
        notes.append(f"CI: {CONFIDENCE:.0%} percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed "
                     f"{opts.bootstrap_seed}) where trials are known, t interval otherwise; with few seeds a "
                     "bootstrap interval is far too narrow (two seeds: the range of the two differences)")
    else:
        notes.append(f"CI: {CONFIDENCE:.0%} t interval of the mean difference")
    family = sum(r.p_value is not None and r.meaningful for r in rows)
    left_out = sum(r.p_value is not None and not r.meaningful for r in rows)
    notes.append(f"p_holm: Holm-adjusted over the {family} row(s) with a p-value"
                 + (f" (the {left_out} with a side at chance left out: p-value only)" if left_out else "")
                 + "; * p_holm < 0.05, ** p_holm < 0.01")
    notes.append(f"MDE: the smallest true difference these seeds detect with {POWER:.0%} power at α = {ALPHA} "
                 "(two-sided t-test, noncentral t), from the observed spread")
    if opts.effect is not None:
        notes.append(f"seeds_needed: seeds per arm (pairs when paired) to detect {opts.effect:g} points with "
                     f"{POWER:.0%} power at α = {ALPHA}, at the observed spread (>{MAX_SEEDS}: more than that)")
    return notes
