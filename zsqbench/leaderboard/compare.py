"""Compare two leaderboards row by row: B − A per configuration, with Welch's t-test over seeds.

Rows are joined on what defines a cell of a paper table (dataset, generator, loss, bits); the
model and quantizer must agree, and so must the budget (epochs × iterations × batch) and teacher
checkpoint, since otherwise the delta measures the budget or the teacher rather than the method.
Published reference rows (``source == "reference"``) have no teacher hash and their own schedule:
they are exempt from the budget/teacher check and every such row is labelled as such.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.leaderboard.aggregate import as_aggregated
from zsqbench.leaderboard.references import resolve_source
from zsqbench.leaderboard.schema import BUDGET_SETTINGS, plain
from zsqbench.leaderboard.table import read_table

JOIN_COLUMNS: tuple[str, ...] = ("dataset", "generator", "loss", "w_bits", "a_bits")
ALWAYS_CHECKED: tuple[str, ...] = ("model", "quantizer")
Metric = Literal["last", "oracle"]
SIGNIFICANCE = ((0.01, "**"), (0.05, "*"))
REFERENCE_NOTE = ("{side} ({path}) holds published reference numbers: the best epoch selected on the test set, "
                  "under the paper's own budget and FP teacher, so a delta mixes method, budget, teacher and selection")


@dataclass
class CompareRow:
    """One joined configuration. ``status``: 'both', 'only A' or 'only B'."""

    dataset: str
    generator: str
    loss: str
    w_bits: int
    a_bits: int
    status: str
    a_mean: float | None = None
    a_std: float | None = None
    a_n: int | None = None
    b_mean: float | None = None
    b_std: float | None = None
    b_n: int | None = None
    delta: float | None = None
    t_stat: float | None = None
    p_value: float | None = None
    mark: str = ""
    flags: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    rows: list[CompareRow]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "metric": self.metric, "rows": [asdict(r) for r in self.rows],
                "notes": self.notes}


def load_side(source: str | Path) -> pd.DataFrame:
    """Either kind of leaderboard (a CSV, a results folder or ``paper:NAME``) as aggregated rows."""
    frame, kind = read_table(resolve_source(source))
    return as_aggregated(frame, kind)


def _key_name(row: dict[str, Any]) -> str:
    return f"{row['dataset']} {row['generator']}+{row['loss']} {bits_label(row['w_bits'], row['a_bits'])}"


def _index(frame: pd.DataFrame, side: str, path: Path) -> dict[tuple, dict[str, Any]]:
    """Rows by join key; a side with two rows for one key is ambiguous and must be filtered first."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in frame.to_dict("records"):
        key = tuple(plain(r[c]) for c in JOIN_COLUMNS)
        if key in rows:
            other = rows[key]
            diff = [c for c in ("model", "quantizer", "budget", "source") if other[c] != r[c]]
            what = ", ".join(f"{c} {other[c]} / {r[c]}" for c in diff) or "identical keys"
            raise UserError(f"{side} ({path}) has two rows for {_key_name(r)} ({what}); keep one per configuration "
                            "(zsqbench leaderboard --run NAME --csv FILE) and compare that")
        rows[key] = r
    return rows


def _is_reference(row: dict[str, Any]) -> bool:
    return str(row.get("source", "")).strip().lower() == "reference"


def _budget(row: dict[str, Any]) -> str:
    vals = [plain(row[c]) for c in BUDGET_SETTINGS]
    return "x".join("?" if v is None else str(v) for v in vals)


def _mismatches(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What makes a joined pair not like-for-like (reference rows skip budget and teacher)."""
    found = [f"{c} differs (A {a[c]}, B {b[c]})" for c in ALWAYS_CHECKED if a[c] != b[c]]
    if _is_reference(a) or _is_reference(b):
        return found
    if _budget(a) != _budget(b):
        found.append(f"budget differs (A {_budget(a)}, B {_budget(b)} epochs x iters x batch)")
    sha_a, sha_b = plain(a["teacher_sha256"]) or "", plain(b["teacher_sha256"]) or ""
    if sha_a != sha_b:
        found.append(f"teacher sha256 differs (A {sha_a[:8] or 'none'}…, B {sha_b[:8] or 'none'}…)")
    return found


def welch(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> tuple[float, float]:
    """Welch's two-sided t-test from summary statistics (unequal variances): (t, p), B − A orientation."""
    from scipy.stats import ttest_ind_from_stats

    with warnings.catch_warnings():  # zero spread on both sides gives nan/inf, reported as is
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ttest_ind_from_stats(mean_b, std_b, n_b, mean_a, std_a, n_a, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def significance(p: float | None) -> str:
    if p is None or math.isnan(p):
        return ""
    return next((mark for level, mark in SIGNIFICANCE if p < level), "")


def _stats(row: dict[str, Any], metric: Metric) -> tuple[float | None, float | None, int | None]:
    prefix = "top1_last" if metric == "last" else "top1_oracle"
    return plain(row[f"{prefix}_mean"]), plain(row[f"{prefix}_std"]), plain(row["n_seeds"])


def _joined(key: tuple, a: dict[str, Any] | None, b: dict[str, Any] | None, metric: Metric) -> CompareRow:
    row = CompareRow(**dict(zip(JOIN_COLUMNS, key)), status="both" if a and b else ("only A" if a else "only B"))
    if a:
        row.a_mean, row.a_std, row.a_n = _stats(a, metric)
        if _is_reference(a):
            row.flags.append("A is reference")
    if b:
        row.b_mean, row.b_std, row.b_n = _stats(b, metric)
        if _is_reference(b):
            row.flags.append("B is reference")
    if row.a_mean is not None and row.b_mean is not None:
        row.delta = round(row.b_mean - row.a_mean, 4)
        if (row.a_n or 0) >= 2 and (row.b_n or 0) >= 2 and row.a_std is not None and row.b_std is not None:
            t, p = welch(row.a_mean, row.a_std, row.a_n, row.b_mean, row.b_std, row.b_n)
            row.t_stat = None if math.isnan(t) else t
            row.p_value = None if math.isnan(p) else p
            row.mark = significance(row.p_value)
    return row


def compare(path_a: str | Path, path_b: str | Path, metric: Metric = "last", force: bool = False) -> Comparison:
    """Join A and B; refuse (UserError) budget/teacher/model mismatches unless ``force``."""
    side_a = _index(load_side(path_a), "A", path_a)
    side_b = _index(load_side(path_b), "B", path_b)
    keys = sorted(set(side_a) | set(side_b), key=lambda k: tuple(str(v) if isinstance(v, str) else v for v in k))
    problems: list[tuple[tuple, list[str]]] = []
    rows = []
    for key in keys:
        a, b = side_a.get(key), side_b.get(key)
        row = _joined(key, a, b, metric)
        if a and b:
            found = _mismatches(a, b)
            if found:
                problems.append((key, found))
                row.flags.extend(f"forced: {f}" for f in found)
        rows.append(row)
    if problems and not force:
        key, found = problems[0]
        raise UserError(f"cannot compare {path_a} with {path_b}: {len(problems)} joined row(s) are not like-for-like "
                        f"(first: {_key_name(dict(zip(JOIN_COLUMNS, key)))}: {'; '.join(found)}); compare runs with "
                        "the same model, quantizer, budget and teacher, or pass --force to compare anyway")
    notes = []
    for side, path, index in (("A", path_a, side_a), ("B", path_b, side_b)):
        if any(_is_reference(r) for r in index.values()):
            notes.append(REFERENCE_NOTE.format(side=side, path=path))
    if problems:
        notes.append(f"--force: {len(problems)} row(s) compare different models, quantizers, budgets or teachers "
                     "(see their flags)")
    only_a = sum(r.status == "only A" for r in rows)
    only_b = sum(r.status == "only B" for r in rows)
    if only_a or only_b:
        notes.append(f"{only_a} row(s) only in A, {only_b} only in B (no delta)")
    notes.append("delta = B − A; p: Welch's two-sided t-test over seeds (both sides need ≥ 2 seeds); "
                 "* p < 0.05, ** p < 0.01, uncorrected for the number of rows compared")
    return Comparison(str(path_a), str(path_b), metric, rows, notes)
