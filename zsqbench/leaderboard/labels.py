"""The labels every view puts on numbers that are not what they look like: trials that finished at
chance, smoke-budget rows, and published reference values (one best-epoch number, not a mean over
seeds).

The leaderboard, compare and plot commands all label with these, so the same words follow a
number wherever it is shown, and no view presents such a number bare. The chance rule is the
trainer's (:func:`zsqbench.assets.datasets.near_chance`), with the class count of the row's dataset.
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from zsqbench.assets.datasets import CHANCE_FLAG_FACTOR, DATASETS, near_chance
from zsqbench.leaderboard.references import note_caveat
from zsqbench.leaderboard.schema import is_missing

AT_CHANCE = "at chance"
#: What a published reference row shows where a zsqbench row shows its number of seeds.
PUBLISHED = "pub."
PUBLISHED_NOTE = ("pub. = a published number: one value per configuration, the paper's best epoch selected on the "
                  "test set, not a mean ± std over seeds")


def at_chance(top1: Any, dataset: Any) -> bool | None:
    """Whether a top-1 is no better than guessing on its dataset; None when either is unknown."""
    if is_missing(top1) or str(dataset) not in DATASETS:
        return None
    return near_chance(float(top1), DATASETS[str(dataset)].num_classes)


def trial_chance(trials: pd.DataFrame) -> pd.Series:
    """Each trial's at_chance by the rule (the CSV's own column only where the dataset is unknown,
    e.g. a hand-made table): derived, so tables written before the column existed are flagged too."""
    derived = [at_chance(t, d) for t, d in zip(trials["top1_last"], trials["dataset"])]
    stored = trials["at_chance"] if "at_chance" in trials.columns else pd.Series(pd.NA, index=trials.index)
    values = [s if d is None else d for d, s in zip(derived, stored)]
    return pd.Series([None if is_missing(v) else bool(v) for v in values], index=trials.index, dtype="object")


def chance_label(row: dict[str, Any] | pd.Series) -> str:
    """'' / 'at chance' / 'k/n at chance' for an aggregated row (per-trial rows: at_chance). Tables
    without the count (published ones, older CSVs) are judged by their mean."""
    if "n_seeds" not in row:
        return AT_CHANCE if at_chance(row["top1_last"], row["dataset"]) else ""
    count, seeds = row.get("n_at_chance"), row.get("n_seeds")
    if is_missing(count):
        return AT_CHANCE if at_chance(row["top1_last_mean"], row["dataset"]) else ""
    if int(count) == 0:
        return ""
    return AT_CHANCE if is_missing(seeds) or int(count) >= int(seeds) else f"{int(count)}/{int(seeds)} {AT_CHANCE}"


def chance_note(datasets: Iterable[Any]) -> str:
    """What 'at chance' means, with the threshold of each dataset shown."""
    limits = ", ".join(f"{d} ≤ {CHANCE_FLAG_FACTOR * 100.0 / DATASETS[d].num_classes:g} %"
                       for d in sorted({str(d) for d in datasets if str(d) in DATASETS}))
    return (f"{AT_CHANCE}: top-1 no better than {CHANCE_FLAG_FACTOR:g} × chance ({limits}): the trial ran, but its "
            "number says nothing about the method; kept in the data, never a result")


def is_smoke(budget: Any) -> bool:
    """The budgets that only check that a grid runs (registry.toml: smoke, in1k-smoke)."""
    name = str(budget)
    return name == "smoke" or name.endswith("-smoke")


def smoke_note(budgets: Iterable[Any]) -> str:
    """A one-line warning when smoke-budget rows are shown; '' otherwise."""
    smoke = sorted({str(b) for b in budgets if is_smoke(b)})
    if not smoke:
        return ""
    return (f"budget {', '.join(smoke)}: smoke numbers are plumbing checks (a few iterations), not results; "
            "run --budget cpu or paper to measure a method")


def is_reference(row: dict[str, Any] | pd.Series) -> bool:
    return str(row.get("source", "")).strip().lower() == "reference"


def caveat_label(row: dict[str, Any] | pd.Series) -> str:
    """A published row's caveat (:data:`~zsqbench.leaderboard.references.CAVEATS`: the note opens with it),
    e.g. ZeroQ's W4A4 79.30 "protocol unknown, other checkpoint"; '' for every other row. The ledger prints
    it beside the claim; the leaderboard views put it in the row's flag, so the number is never bare."""
    return note_caveat(row.get("note")) if is_reference(row) else ""


def row_flag(row: dict[str, Any] | pd.Series) -> str:
    """Everything a row is flagged with in a view: at chance, a published number's caveat."""
    return ", ".join(label for label in (chance_label(row), caveat_label(row)) if label)
