"""One row per configuration from the per-trial leaderboard: the numbers a paper table holds.

Seeds of the same configuration are averaged, with the sample standard deviation, so a gain can
be judged against seed noise. Trials are only averaged when they are comparable: within a row the
teacher checkpoint, the budget's numbers and the student recipe must be identical, and a seed may
appear once (two trials with the same key and seed differ in settings the leaderboard does not
record, such as plugin options). Anything else raises a one-line :class:`UserError` naming the trials.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pandas as pd

from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.leaderboard.labels import trial_chance
from zsqbench.leaderboard.schema import AGGREGATED, BUDGET_SETTINGS, KEY_COLUMNS, machine_kinds, of_type, with_profiles
from zsqbench.leaderboard.stats import mean_ci_halfwidth

ROUND = 4  # decimals kept in aggregated numbers (per-trial accuracies have 2)


def done_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Only finished trials count: a failed or diverged trial has no accuracy worth averaging."""
    if "status" in trials.columns:
        trials = trials[trials["status"] == "done"]
    return trials


def describe_key(row: dict[str, Any] | pd.Series) -> str:
    """A short human name for a configuration, used in error messages and tables."""
    return (f"{row['model']} {row['dataset']} {row['generator']}+{row['loss']} {row['quantizer']} "
            f"{bits_label(row['w_bits'], row['a_bits'])} budget={row['budget']}")


def _short(trial_ids: pd.Series) -> str:
    return ", ".join(str(t)[:12] for t in trial_ids)


def _mean(values: pd.Series) -> float:
    return round(float(values.mean()), ROUND)


def _std(values: pd.Series) -> float:
    """Sample std (ddof=1): the seeds are a sample of the training noise; NaN with one seed."""
    return round(float(values.std(ddof=1)), ROUND) if len(values) > 1 else math.nan


def _ci95(values: pd.Series) -> float:
    half = mean_ci_halfwidth(float(values.std(ddof=1)), len(values)) if len(values) > 1 else None
    return math.nan if half is None else round(half, ROUND)


def _mean_if_all(group: pd.DataFrame, column: str) -> float:
    """The mean of a column every trial of the row has (exported ones), else missing: a mean over the
    exported seeds only would not be comparable with top1_last_mean."""
    if column not in group.columns:
        return math.nan
    values = pd.to_numeric(group[column], errors="coerce")
    return _mean(values) if values.notna().all() else math.nan


def _precisions(group: pd.DataFrame) -> pd.Series:
    if "precision" not in group.columns:
        return pd.Series("fp32", index=group.index)
    return group["precision"].fillna("fp32").astype(str)


def _ptq_only(group: pd.DataFrame) -> pd.Series:
    """Whether each trial was post-training only; tables written before the column existed say it
    through epochs = warmup_epochs (a budget that never trains), or, lacking that too, did not train."""
    derived = (group["epochs"] == group["warmup_epochs"]) if "warmup_epochs" in group.columns \
        else pd.Series(False, index=group.index)
    if "ptq_only" not in group.columns:
        return derived.fillna(False).astype(bool)
    return group["ptq_only"].astype("boolean").fillna(derived).fillna(False).astype(bool)


def trial_recipes(group: pd.DataFrame) -> pd.Series:
    """Each trial's student recipe; trials of tables written before the column existed have none to
    compare (they are left out of the check, and the row's recipe is then the one the others name)."""
    if "recipe" not in group.columns:
        return pd.Series(dtype=object)
    named = group["recipe"].astype("object")
    return named[named.notna() & (named.astype(str).str.strip() != "")].astype(str)


def _refuse_mixed(group: pd.DataFrame, values: pd.Series, label: Callable[[str], str], problem: str, fix: str) -> None:
    """One line naming the trials behind each distinct value when a row's trials disagree on ``values``
    (indexed by the trials it covers: those without a value are left out of the comparison)."""
    if values.nunique() > 1:
        parts = "; ".join(f"{label(v)} in trials {_short(group.loc[values.index[values == v], 'trial_id'])}"
                          for v in sorted(values.unique()))
        raise UserError(f"{problem} ({parts}); {fix}")


def _check_comparable(key: dict[str, Any], group: pd.DataFrame) -> None:
    name = describe_key(key)
    # channels-last, compile or TF32 change rounding only; the precision changes accuracy
    _refuse_mixed(group, _precisions(group), str, f"trials of {name} ran at different precisions",
                  "aggregate one precision at a time (zsqbench leaderboard --run NAME) or split the CSV")
    seeds = group["seed"]
    if seeds.duplicated().any():
        seed = seeds[seeds.duplicated()].iloc[0]
        ids = _short(group.loc[seeds == seed, "trial_id"])
        raise UserError(f"trials {ids} of {name} share seed {seed} but have different trial ids (plugin options "
                        "or optimizer settings differ, which the leaderboard does not record); aggregate one run "
                        "at a time (zsqbench leaderboard --run NAME) or split the CSV")
    _refuse_mixed(group, group["teacher_sha256"].astype(str), lambda s: f"{s[:8]}…",
                  f"trials of {name} used different teacher weights", "averaging them would mix teachers, so "
                  "aggregate one teacher at a time (zsqbench leaderboard --run NAME) or split the CSV")
    _refuse_mixed(group, trial_recipes(group), lambda r: f"'{r}'", f"trials of {name} trained the student with different "
                  "recipes", "aggregate one run at a time (zsqbench leaderboard --run NAME) or split the CSV")
    ptq = _ptq_only(group)
    if ptq.nunique() > 1:
        raise UserError(f"trials of {name} mix post-training-only trials ({_short(group.loc[ptq, 'trial_id'])}) with "
                        f"trained ones ({_short(group.loc[~ptq, 'trial_id'])}) under the same budget name; aggregate "
                        "one run at a time (zsqbench leaderboard --run NAME) or split the CSV")
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
        "top1_last_ci95": _ci95(group["top1_last"]),
        "top1_oracle_mean": _mean(group["top1_oracle"]),
        "top1_oracle_std": _std(group["top1_oracle"]),
        "n_at_chance": int(trial_chance(group).fillna(False).astype(bool).sum()),
        "fp_top1": _mean(group["fp_top1"]),
        "ptq_top1_mean": _mean(group["ptq_top1"]),
        "onnx_top1_mean": _mean_if_all(group, "onnx_top1"),
        **{c: first[c] for c in BUDGET_SETTINGS},
        "ptq_only": bool(_ptq_only(group).iloc[0]),
        "recipe": next(iter(trial_recipes(group)), ""),
        "precision": _precisions(group).iloc[0],
        "teacher_sha256": first["teacher_sha256"],
        "cpu_hours": round(float(group.loc[on_cpu, "wall_s"].sum()) / 3600, ROUND),
        "gpu_hours": round(float(group.loc[~on_cpu, "wall_s"].sum()) / 3600, ROUND),
        "machines": ";".join(machine_kinds(group)),
        "source": "zsqbench",
        "note": "",
    }


def aggregate(trials: pd.DataFrame) -> pd.DataFrame:
    """Per-trial rows (as read by :func:`zsqbench.leaderboard.table.read_table`) -> one row per configuration."""
    done = with_profiles(done_trials(trials))
    rows = [_row(dict(zip(KEY_COLUMNS, key)), group)
            for key, group in done.groupby(list(KEY_COLUMNS), sort=True)]
    frame = pd.DataFrame(rows, columns=list(AGGREGATED))
    return normalize_aggregated(frame)


def normalize_aggregated(frame: pd.DataFrame) -> pd.DataFrame:
    """Every aggregated column present, in order, with nullable ints (so CSVs say 8, not 8.0)."""
    frame = with_profiles(frame.copy())
    for col in AGGREGATED:
        if col not in frame.columns:
            frame[col] = pd.NA
    for col in AGGREGATED:
        if col in of_type("int"):
            frame[col] = pd.to_numeric(frame[col]).astype("Int64")
        elif col in of_type("float"):
            frame[col] = pd.to_numeric(frame[col]).astype("float64")
    for col in ("seeds", "recipe", "precision", "teacher_sha256", "machines", "note"):
        frame[col] = frame[col].astype("object").where(frame[col].notna(), "")
    return frame[list(AGGREGATED)].reset_index(drop=True)


def as_aggregated(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Either kind of leaderboard as aggregated rows (per-trial ones are aggregated first)."""
    return aggregate(frame) if kind == "per-trial" else normalize_aggregated(frame)
