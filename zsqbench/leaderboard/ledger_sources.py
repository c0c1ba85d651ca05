"""Our side of the ledger: the reproductions in results folders and leaderboard CSVs, one per
configuration, budget and teacher, with the per-seed values, the machines they ran on and what their
result files certify (``certification``, written by :mod:`zsqbench.runs.record`).

Kept apart from the ledger's claims and verdicts (:mod:`zsqbench.leaderboard.ledger`) so each
module has one job; torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.errors import UserError
from zsqbench.leaderboard.aggregate import done_trials, trial_recipes
from zsqbench.leaderboard.labels import AT_CHANCE, at_chance, is_reference
from zsqbench.leaderboard.references import PREFIX
from zsqbench.leaderboard.results_folder import trial_results
from zsqbench.leaderboard.rows import result_row
from zsqbench.leaderboard.schema import BUDGET_SETTINGS, KEY_COLUMNS, machine_kinds, plain, with_profiles
from zsqbench.leaderboard.table import read_table
from zsqbench.runs.result_file import find_result_files


@dataclass
class Reproduction:
    """Our trials of one configuration under one budget and teacher. ``last_values`` and
    ``oracle_values`` are per seed (empty for an aggregated CSV, which has only means and stds);
    ``paper_schedule``: what every result certifies (None when a result does not say);
    ``certified``: the certification fields all its results agree on."""

    source: str
    generator: str
    loss: str
    model: str
    dataset: str
    w_bits: int
    a_bits: int
    profile: str
    budget: str
    n: int
    seeds: list[int]
    last_mean: float | None
    last_std: float | None
    oracle_mean: float | None
    oracle_std: float | None
    fp_top1: float | None
    schedule: str
    last_values: list[float] = field(default_factory=list)
    oracle_values: list[float] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)
    paper_schedule: bool | None = None
    certified: dict[str, Any] = field(default_factory=dict)
    recipe: str = ""

    def label(self) -> str:
        """"last 45.20 ± 2.10, best epoch* 47.10 ± 1.90 (n=2), budget cpu 8x100x64, FP 92.60, on MACHINE"."""
        def stat(mean: float | None, std: float | None) -> str:
            return "?" if mean is None else f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")

        machines = ", ".join(self.machines) or "machine not recorded"
        fp = "" if self.fp_top1 is None else f", FP {self.fp_top1:.2f}"
        chance = f" ({AT_CHANCE})" if at_chance(self.last_mean, self.dataset) else ""
        recipe = f", student {self.recipe}" if self.recipe else ""
        return (f"last {stat(self.last_mean, self.last_std)}{chance}, best epoch* "
                f"{stat(self.oracle_mean, self.oracle_std)} (n={self.n}), budget {self.budget} {self.schedule}{fp}"
                f"{recipe}, on {machines}")


def _std(values: pd.Series) -> float | None:
    return round(float(values.std(ddof=1)), 4) if len(values) > 1 else None


def _agree(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The certification fields every result holds with one value."""
    if not records or any(not isinstance(r, dict) for r in records):
        return {}
    keys = set.intersection(*(set(r) for r in records))
    return {k: records[0][k] for k in sorted(keys)
            if not isinstance(records[0][k], (dict, list)) and all(r[k] == records[0][k] for r in records)}


def _from_trials(source: str, trials: pd.DataFrame) -> list[Reproduction]:
    trials = with_profiles(done_trials(trials))
    if "teacher_sha256" not in trials.columns:
        trials = trials.assign(teacher_sha256="")
    out = []
    keys = [*KEY_COLUMNS, "teacher_sha256"]
    for key, group in trials.groupby(keys, sort=True, dropna=False):
        k = dict(zip(keys, key))
        certs = [c for c in group.get("certification", pd.Series(dtype=object)) if isinstance(c, dict)]
        agreed = _agree(certs) if len(certs) == len(group) else {}
        schedule = "x".join(str(plain(group.iloc[0][c])) for c in BUDGET_SETTINGS)
        machines = machine_kinds(group)
        recipes = sorted(trial_recipes(group).unique())
        out.append(Reproduction(
            source, str(k["generator"]), str(k["loss"]), str(k["model"]), str(k["dataset"]), int(k["w_bits"]),
            int(k["a_bits"]), str(k["profile"]), str(k["budget"]), len(group), sorted(int(s) for s in group["seed"]),
            round(float(group["top1_last"].mean()), 4), _std(group["top1_last"]),
            round(float(group["top1_oracle"].mean()), 4), _std(group["top1_oracle"]),
            round(float(group["fp_top1"].mean()), 2), schedule,
            [float(v) for v in group["top1_last"]], [float(v) for v in group["top1_oracle"]], machines,
            agreed.get("paper_schedule") if isinstance(agreed.get("paper_schedule"), bool) else None, agreed,
            " | ".join(recipes)))
    return out


def _from_aggregated(source: str, frame: pd.DataFrame) -> list[Reproduction]:
    out = []
    for r in frame.to_dict("records"):
        if is_reference(r):
            continue
        schedule = "x".join(str(plain(r.get(c))) for c in BUDGET_SETTINGS)
        out.append(Reproduction(
            source, str(r["generator"]), str(r["loss"]), str(r["model"]), str(r["dataset"]), int(r["w_bits"]),
            int(r["a_bits"]), str(r["profile"]), str(r["budget"]), int(r["n_seeds"]),
            [int(s) for s in str(plain(r.get("seeds")) or "").split(";") if s.strip()],
            plain(r.get("top1_last_mean")), plain(r.get("top1_last_std")), plain(r.get("top1_oracle_mean")),
            plain(r.get("top1_oracle_std")), plain(r.get("fp_top1")), schedule,
            machines=[m for m in str(plain(r.get("machines")) or "").split(";") if m.strip()],
            recipe=str(plain(r.get("recipe")) or "")))
    return out


def read_reproductions(source: str | Path) -> list[Reproduction]:
    """Our reproductions in one source: a results folder (its result files: values per seed,
    machines, certifications), a per-trial CSV (values per seed) or an aggregated CSV (means)."""
    text = str(source)
    if text.startswith(PREFIX):
        raise UserError(f"{text} holds published numbers, which the ledger already shows as claims; pass results "
                        "folders or leaderboard CSVs of your own runs")
    path = Path(source)
    if path.is_dir() and find_result_files(path):
        rows = []
        for _, result in trial_results(path):
            rows.append({**result_row(result), "certification": result.get("certification")})
        return _from_trials(text, pd.DataFrame(rows))
    frame, kind = read_table(path)
    if kind == "per-trial":
        return _from_trials(text, frame)
    reps = _from_aggregated(text, frame)
    if not reps and len(frame):
        raise UserError(f"{text} holds only published reference rows; pass results folders or leaderboard CSVs of "
                        "your own runs")
    return reps
