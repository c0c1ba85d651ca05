"""One row per configuration from the per-trial leaderboard: the numbers a paper table holds.

Seeds of the same configuration are averaged, with the sample standard deviation, so a gain can
be judged against seed noise. Trials are only averaged when they are comparable: within a row the
teacher checkpoint and the budget's numbers must be identical, and a seed may appear once (two
trials with the same key and seed differ in settings the leaderboard does not record, such as
plugin options). Anything else raises a one-line :class:`UserError` naming the trials.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from zsqbench.errors import UserError

# A configuration: everything that defines a row except the seed.
KEY_COLUMNS: tuple[str, ...] = ("model", "dataset", "generator", "loss", "quantizer", "w_bits", "a_bits", "budget")
BUDGET_SETTINGS: tuple[str, ...] = ("epochs", "iters_per_epoch", "batch_size")

# Column -> meaning. README.md ("Aggregated leaderboard columns") documents the same list; a test keeps them in step.
AGGREGATED_COLUMNS: dict[str, str] = {
    "model": "teacher name",
    "dataset": "cifar10 / cifar100",
    "generator": "generator plugin",
    "loss": "loss plugin",
    "quantizer": "quantizer plugin",
    "w_bits": "weight bits",
    "a_bits": "activation bits",
    "budget": "budget preset name ('paper' for published reference rows)",
    "n_seeds": "number of finished trials (one per seed) in the row",
    "seeds": "their seeds, ';'-separated (empty for reference rows)",
    "top1_last_mean": "mean over seeds of top1_last (%): the headline number (reference rows: the published number)",
    "top1_last_std": "sample standard deviation (ddof=1) of top1_last over seeds; empty with one seed",
    "top1_oracle_mean": "ORACLE: mean over seeds of the best epoch's top-1 (%), selected on the test set; not a result",
    "top1_oracle_std": "ORACLE: sample standard deviation (ddof=1) of top1_oracle; empty with one seed",
    "fp_top1": "FP teacher top-1 (%) measured on the full test set (mean over the row's trials)",
    "ptq_top1_mean": "mean student top-1 (%) after calibration, before any student update",
    "epochs": "epochs (warm-up included), identical within the row (empty for reference rows)",
    "iters_per_epoch": "iterations per epoch, identical within the row (empty for reference rows)",
    "batch_size": "batch size, identical within the row (empty for reference rows)",
    "teacher_sha256": "sha256 of the teacher weights, identical within the row (empty for reference rows)",
    "cpu_hours": "sum of wall_s / 3600 over the row's trials run on a CPU (device starting with 'cpu')",
    "gpu_hours": "sum of wall_s / 3600 over the row's trials run on any other device (a GPU)",
    "source": "'zsqbench' for rows aggregated from trials, 'reference' for published numbers",
    "note": "free text: for reference rows, where the numbers come from and how they were selected",
}

ROUND = 4  # decimals kept in aggregated numbers (per-trial accuracies have 2)


def done_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Only finished trials count: a failed or diverged trial has no accuracy worth averaging."""
    if "status" in trials.columns:
        trials = trials[trials["status"] == "done"]
    return trials


def describe_key(row: dict[str, Any] | pd.Series) -> str:
    """A short human name for a configuration, used in error messages and tables."""
    return (f"{row['model']} {row['dataset']} {row['generator']}+{row['loss']} {row['quantizer']} "
            f"W{row['w_bits']}A{row['a_bits']} budget={row['budget']}")


def _short(trial_ids: pd.Series) -> str:
    return ", ".join(str(t)[:12] for t in trial_ids)


def _mean(values: pd.Series) -> float:
    return round(float(values.mean()), ROUND)


def _std(values: pd.Series) -> float:
    """Sample std (ddof=1): the seeds are a sample of the training noise; NaN with one seed."""
    return round(float(values.std(ddof=1)), ROUND) if len(values) > 1 else math.nan


def _check_comparable(key: dict[str, Any], group: pd.DataFrame) -> None:
    name = describe_key(key)
    if "compute" in group.columns:
        # channels-last, compile or TF32 change rounding only; the precision changes accuracy
        precision = group["compute"].fillna("").astype(str).str.split(",").str[0].replace("", "fp32")
        if precision.nunique() > 1:
            parts = "; ".join(f"{p} in trials {_short(group.loc[precision == p, 'trial_id'])}"
                              for p in sorted(precision.unique()))
            raise UserError(f"trials of {name} ran at different precisions ({parts}); aggregate one precision "
                            "at a time (zsqbench leaderboard --run NAME) or split the CSV")
    seeds = group["seed"]
    if seeds.duplicated().any():
        seed = seeds[seeds.duplicated()].iloc[0]
        ids = _short(group.loc[seeds == seed, "trial_id"])
        raise UserError(f"trials {ids} of {name} share seed {seed} but have different trial ids (plugin options "
                        "or optimizer settings differ, which the leaderboard does not record); aggregate one run "
                        "at a time (zsqbench leaderboard --run NAME) or split the CSV")
    shas = group["teacher_sha256"].unique()
    if len(shas) > 1:
        parts = "; ".join(f"{str(s)[:8]}… in trials {_short(group.loc[group['teacher_sha256'] == s, 'trial_id'])}"
                          for s in shas)
        raise UserError(f"trials of {name} used different teacher weights ({parts}); averaging them would mix "
                        "teachers, so aggregate one teacher at a time (zsqbench leaderboard --run NAME) or split the CSV")
    budgets = group[list(BUDGET_SETTINGS)].drop_duplicates()
    if len(budgets) > 1:
        parts = "; ".join(
            f"{'x'.join(str(v) for v in b)} in trials "
            f"{_short(group.loc[(group[list(BUDGET_SETTINGS)] == list(b)).all(axis=1), 'trial_id'])}"
            for b in budgets.itertuples(index=False))
        raise UserError(f"trials of {name} ran with different epochs x iters x batch under the same budget name "
                        f"({parts}); aggregate one run at a time (zsqbench leaderboard --run NAME) or split the CSV")


def _row(key: dict[str, Any], group: pd.DataFrame) -> dict[str, Any]:
    _check_comparable(key, group)
    on_cpu = group["device"].astype(str).str.strip().str.lower().str.startswith("cpu")
    first = group.iloc[0]
    return {
        **key,
        "n_seeds": len(group),
        "seeds": ";".join(str(s) for s in sorted(group["seed"])),
        "top1_last_mean": _mean(group["top1_last"]),
        "top1_last_std": _std(group["top1_last"]),
        "top1_oracle_mean": _mean(group["top1_oracle"]),
        "top1_oracle_std": _std(group["top1_oracle"]),
        "fp_top1": _mean(group["fp_top1"]),
        "ptq_top1_mean": _mean(group["ptq_top1"]),
        **{c: first[c] for c in BUDGET_SETTINGS},
        "teacher_sha256": first["teacher_sha256"],
        "cpu_hours": round(float(group.loc[on_cpu, "wall_s"].sum()) / 3600, ROUND),
        "gpu_hours": round(float(group.loc[~on_cpu, "wall_s"].sum()) / 3600, ROUND),
        "source": "zsqbench",
        "note": "",
    }


def aggregate(trials: pd.DataFrame) -> pd.DataFrame:
    """Per-trial rows (as read by :func:`zsqbench.leaderboard.tables.read_table`) -> one row per configuration."""
    done = done_trials(trials)
    rows = [_row(dict(zip(KEY_COLUMNS, key)), group)
            for key, group in done.groupby(list(KEY_COLUMNS), sort=True)]
    frame = pd.DataFrame(rows, columns=list(AGGREGATED_COLUMNS))
    return normalize_aggregated(frame)


def normalize_aggregated(frame: pd.DataFrame) -> pd.DataFrame:
    """Every aggregated column present, in order, with nullable ints (so CSVs say 8, not 8.0)."""
    frame = frame.copy()
    for col in AGGREGATED_COLUMNS:
        if col not in frame.columns:
            frame[col] = pd.NA
    for col in ("w_bits", "a_bits", "n_seeds", *BUDGET_SETTINGS):
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    for col in ("top1_last_mean", "top1_last_std", "top1_oracle_mean", "top1_oracle_std", "fp_top1",
                "ptq_top1_mean", "cpu_hours", "gpu_hours"):
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
    for col in ("seeds", "teacher_sha256", "note"):
        frame[col] = frame[col].astype("object").where(frame[col].notna(), "")
    return frame[list(AGGREGATED_COLUMNS)].reset_index(drop=True)


def as_aggregated(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Either kind of leaderboard as aggregated rows (per-trial ones are aggregated first)."""
    return aggregate(frame) if kind == "per-trial" else normalize_aggregated(frame)
