"""Comparisons of leaderboard rows: B − A per configuration, paired by seed where the design allows.

Two forms. ``compare(A, B)`` joins two leaderboards on what defines a cell of a paper table (dataset,
generator, loss, bits). ``compare_within(RESULTS, by, baseline)`` compares, inside one grid, every
other value of one field (loss, generator, quantizer) with the baseline value, cell by cell.

Trials of the two arms that ran the same seed share their calibration, so when both arms are known
trial by trial (per-trial leaderboards, results folders) and ran the same seeds, they are paired by
seed (``ttest_rel``); otherwise — aggregated tables, different seeds, ``unpaired`` — Welch's test
on means and stds. Each row says which test it used and why. p-values are Holm-adjusted over the
rows of one comparison whose sides are not at chance, and significance marks use the adjusted values.

The model, quantizer and quantizer profile must agree, and so must the budget (epochs × iterations ×
batch) and teacher checkpoint, since otherwise the delta measures the convention, the budget or the
teacher rather than the method. Published reference rows (``source == "reference"``) have no teacher
hash and their own schedule: they are exempt from the budget/teacher check and every such row is
labelled as such; a published number whose profile is not known ("unknown") is flagged, not refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.leaderboard.aggregate import as_aggregated, done_trials
from zsqbench.leaderboard.compare_notes import label_notes, method_notes
from zsqbench.leaderboard.compare_rows import CompareRow, Comparison, Metric, Options
from zsqbench.leaderboard.labels import chance_label, is_reference
from zsqbench.leaderboard.references import resolve_source
from zsqbench.leaderboard.schema import BUDGET_SETTINGS, KEY_COLUMNS, plain
from zsqbench.leaderboard.stats import Difference, holm, paired_difference, welch_difference, welch_from_samples
from zsqbench.leaderboard.table import read_table

JOIN_COLUMNS: tuple[str, ...] = ("dataset", "generator", "loss", "w_bits", "a_bits")
ALWAYS_CHECKED: tuple[str, ...] = ("model", "quantizer", "profile")
#: A published number's profile when its paper does not say (nor its code show) how it quantized.
UNKNOWN_PROFILE = "unknown"
#: The fields `compare_within` can set against a baseline value (the others define the cell).
BY_FIELDS: tuple[str, ...] = ("loss", "generator", "quantizer", "profile")
SIGNIFICANCE = ((0.01, "**"), (0.05, "*"))
REFERENCE_NOTE = ("{side} ({path}) holds published reference numbers: the best epoch selected on the test set, "
                  "under the paper's own budget and FP teacher, so a delta mixes method, budget, teacher and selection")


@dataclass
class Side:
    """One leaderboard: its aggregated rows, and its finished trials when it has them (what pairing needs)."""

    path: str
    aggregated: pd.DataFrame
    trials: pd.DataFrame | None

    def seed_values(self, row: dict[str, Any], metric: Metric) -> dict[int, float] | None:
        """The row's accuracy per seed, or None for an aggregated table."""
        if self.trials is None or str(row.get("source", "zsqbench")) != "zsqbench":
            return None
        mask = pd.Series(True, index=self.trials.index)
        for col in KEY_COLUMNS:
            mask &= self.trials[col].map(plain) == plain(row[col])
        column = "top1_last" if metric == "last" else "top1_oracle"
        chosen = self.trials[mask]
        return {int(s): float(v) for s, v in zip(chosen["seed"], chosen[column])}


def load_side(source: str | Path) -> Side:
    """Either kind of leaderboard (a CSV, a results folder or ``paper:NAME``)."""
    frame, kind = read_table(resolve_source(source))
    trials = done_trials(frame) if kind == "per-trial" else None
    return Side(str(source), as_aggregated(frame, kind), trials)


def _key_name(row: dict[str, Any]) -> str:
    return f"{row['dataset']} {row['generator']}+{row['loss']} {bits_label(row['w_bits'], row['a_bits'])}"


def _index(frame: pd.DataFrame, side: str, path: str | Path) -> dict[tuple, dict[str, Any]]:
    """Rows by join key; a side with two rows for one key is ambiguous and must be filtered first."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in frame.to_dict("records"):
        key = tuple(plain(r[c]) for c in JOIN_COLUMNS)
        if key in rows:
            other = rows[key]
            diff = [c for c in ("model", "quantizer", "profile", "budget", "source") if other[c] != r[c]]
            what = ", ".join(f"{c} {other[c]} / {r[c]}" for c in diff) or "identical keys"
            raise UserError(f"{side} ({path}) has two rows for {_key_name(r)} ({what}); keep one per configuration "
                            "(zsqbench leaderboard --run NAME --csv FILE) and compare that")
        rows[key] = r
    return rows


def _models_of(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """A published table holding several teachers of one dataset (ImageNet: ResNet-18, ResNet-50,
    MobileNetV2) keeps the rows of the teachers the other side has, so each cell joins one row;
    any other table is returned unchanged (a model mismatch is then reported as such)."""
    if reference.empty or not (reference["source"].astype(str).str.strip().str.lower() == "reference").all():
        return reference
    if reference.groupby("dataset")["model"].nunique().max() < 2:
        return reference
    kept = reference[reference["model"].isin(set(other["model"]))]
    return kept if not kept.empty else reference


def _budget(row: dict[str, Any]) -> str:
    vals = [plain(row[c]) for c in BUDGET_SETTINGS]
    return "x".join("?" if v is None else str(v) for v in vals)


def _mismatches(a: dict[str, Any], b: dict[str, Any], varied: str | None = None) -> list[str]:
    """What makes a joined pair not like-for-like (reference rows skip budget and teacher); the
    ``varied`` field is the one being compared and may differ."""
    unknown = UNKNOWN_PROFILE in (a["profile"], b["profile"]) and (is_reference(a) or is_reference(b))
    found = [f"{c} differs (A {a[c]}, B {b[c]})" for c in ALWAYS_CHECKED
             if c != varied and a[c] != b[c] and not (c == "profile" and unknown)]
    if is_reference(a) or is_reference(b):
        return found
    if _budget(a) != _budget(b):
        found.append(f"budget differs (A {_budget(a)}, B {_budget(b)} epochs x iters x batch)")
    sha_a, sha_b = plain(a["teacher_sha256"]) or "", plain(b["teacher_sha256"]) or ""
    if sha_a != sha_b:
        found.append(f"teacher sha256 differs (A {sha_a[:8] or 'none'}…, B {sha_b[:8] or 'none'}…)")
    return found


def significance(p: float | None) -> str:
    if p is None or math.isnan(p):
        return ""
    return next((mark for level, mark in SIGNIFICANCE if p < level), "")


def _stats(row: dict[str, Any], metric: Metric) -> tuple[float | None, float | None, int | None]:
    prefix = "top1_last" if metric == "last" else "top1_oracle"
    return plain(row[f"{prefix}_mean"]), plain(row[f"{prefix}_std"]), plain(row["n_seeds"])


def _seeds(values: dict[int, float]) -> str:
    return ";".join(str(s) for s in sorted(values))


def _difference(row: CompareRow, a_vals: dict[int, float] | None, b_vals: dict[int, float] | None,
                opts: Options) -> Difference | None:
    """Paired when both arms are known per seed and ran the same seeds; Welch otherwise (the reason
    goes into the row's flags)."""
    if a_vals is not None and b_vals is not None and not opts.unpaired:
        if set(a_vals) == set(b_vals):
            seeds = sorted(a_vals)
            return paired_difference([a_vals[s] for s in seeds], [b_vals[s] for s in seeds],
                                     interval=opts.interval, bootstrap_seed=opts.bootstrap_seed, effect=opts.effect)
        row.flags.append(f"seeds differ (A {_seeds(a_vals)}, B {_seeds(b_vals)}): Welch")
    elif not opts.unpaired and (row.a_n or 0) >= 2 and (row.b_n or 0) >= 2:
        missing = " and ".join(s for s, v in (("A", a_vals), ("B", b_vals)) if v is None)
        row.flags.append(f"{missing} not per trial: Welch")
    if a_vals and b_vals:
        return welch_from_samples(list(a_vals.values()), list(b_vals.values()), interval=opts.interval,
                                  bootstrap_seed=opts.bootstrap_seed, effect=opts.effect)
    if row.a_mean is None or row.b_mean is None or row.a_n is None or row.b_n is None:
        return None
    return welch_difference(row.a_mean, row.a_std, row.a_n, row.b_mean, row.b_std, row.b_n, effect=opts.effect)


def _joined(key: dict[str, Any], a: dict[str, Any] | None, b: dict[str, Any] | None, side_a: Side, side_b: Side,
            opts: Options, status: str | None = None) -> CompareRow:
    shown = b or a or {}
    row = CompareRow(**key, status=status or ("both" if a and b else ("only A" if a else "only B")),
                     model=str(shown.get("model", "")), quantizer=str(shown.get("quantizer", "")),
                     profile=str(shown.get("profile", "")), budget=str(shown.get("budget", "")))
    if a:
        row.a_mean, row.a_std, row.a_n = _stats(a, opts.metric)
        row.budget_a, row.a_chance, row.a_published = str(a.get("budget", "")), chance_label(a), is_reference(a)
        if row.a_published:
            row.flags.append("A is reference")
    if b:
        row.b_mean, row.b_std, row.b_n = _stats(b, opts.metric)
        row.b_chance, row.b_published = chance_label(b), is_reference(b)
        if row.b_published:
            row.flags.append("B is reference")
    recipes = [str(plain(side.get("recipe")) or "") if side else "" for side in (a, b)]
    if all(recipes) and recipes[0] != recipes[1]:  # flagged, not refused: the recipe may be what is compared
        row.flags.append(f"student recipe differs (A {recipes[0]}; B {recipes[1]})")
    chance = [f"{side} {label}" for side, label in (("A", row.a_chance), ("B", row.b_chance)) if label]
    if chance:
        row.flags.append(f"{' and '.join(chance)}: delta not meaningful")
    if a and b and row.a_mean is not None and row.b_mean is not None:
        diff = _difference(row, side_a.seed_values(a, opts.metric), side_b.seed_values(b, opts.metric), opts)
        row.delta = round(row.b_mean - row.a_mean, 4)
        if diff is not None:
            row.delta = round(diff.delta, 4)
            # a one-seed (or published) side gets a delta but no test: say none ran, not "Welch"
            row.test = diff.test if diff.p is not None else ""
            row.n_pairs, row.se, row.df = diff.n_pairs, diff.se, diff.df
            row.t_stat, row.p_value = diff.t, diff.p
            row.ci_low, row.ci_high, row.interval = diff.ci_low, diff.ci_high, diff.interval
            row.mde, row.seeds_needed = diff.mde, diff.seeds_needed
    return row


def _adjust(rows: list[CompareRow]) -> None:
    """Holm over the rows whose delta means something: a side at chance measures a failed run, so its
    (often tiny) p-value neither earns a star nor makes the other rows' adjustment stricter; it keeps its
    raw p-value."""
    for row, adjusted in zip(rows, holm([r.p_value if r.meaningful else None for r in rows])):
        row.p_holm = adjusted
        row.mark = significance(adjusted)


def _refuse_mismatches(problems: list[tuple[str, list[str]]], what: str) -> None:
    if problems:
        name, found = problems[0]
        raise UserError(f"cannot compare {what}: {len(problems)} joined row(s) are not like-for-like (first: {name}: "
                        f"{'; '.join(found)}); compare runs with the same model, quantizer, profile, budget and "
                        "teacher, or pass --force to compare anyway")


def compare(path_a: str | Path, path_b: str | Path, metric: Metric = "last", force: bool = False,
            **options: Any) -> Comparison:
    """Join A and B; refuse (UserError) budget/teacher/model mismatches unless ``force``.
    ``options``: the other fields of :class:`Options`."""
    opts = Options(metric=metric, force=force, **options)
    side_a, side_b = load_side(path_a), load_side(path_b)
    frame_a = _models_of(side_a.aggregated, side_b.aggregated)
    frame_b = _models_of(side_b.aggregated, side_a.aggregated)
    index_a, index_b = _index(frame_a, "A", path_a), _index(frame_b, "B", path_b)
    keys = sorted(set(index_a) | set(index_b), key=lambda k: tuple(str(v) if isinstance(v, str) else v for v in k))
    problems: list[tuple[str, list[str]]] = []
    rows = []
    for key in keys:
        a, b = index_a.get(key), index_b.get(key)
        row = _joined(dict(zip(JOIN_COLUMNS, key)), a, b, side_a, side_b, opts)
        if a and b:
            found = _mismatches(a, b)
            if found:
                problems.append((_key_name(dict(zip(JOIN_COLUMNS, key))), found))
                row.flags.extend(f"forced: {f}" for f in found)
            if UNKNOWN_PROFILE in (a["profile"], b["profile"]) and a["profile"] != b["profile"]:
                row.flags.append("published profile unknown")
        rows.append(row)
    if not force:
        _refuse_mismatches(problems, f"{path_a} with {path_b}")
    _adjust(rows)
    notes = []
    for side, path, index, loaded in (("A", path_a, index_a, side_a), ("B", path_b, index_b, side_b)):
        if any(is_reference(r) for r in index.values()):
            notes.append(REFERENCE_NOTE.format(side=side, path=path))
        elif loaded.trials is None:
            notes.append(f"{side} ({path}) is an aggregated table: its rows cannot be paired by seed, so they are "
                         "compared by Welch's test (pass the results folder or per-trial CSV to pair them)")
    if problems:
        notes.append(f"--force: {len(problems)} row(s) compare different models, quantizers, profiles, budgets or "
                     "teachers (see their flags)")
    only_a = sum(r.status == "only A" for r in rows)
    only_b = sum(r.status == "only B" for r in rows)
    if only_a or only_b:
        notes.append(f"{only_a} row(s) only in A, {only_b} only in B (no delta)")
    notes.extend(label_notes(rows))
    notes.extend(method_notes(rows, opts))
    return Comparison(str(path_a), str(path_b), metric, rows, notes, effect=opts.effect)


def within(side: Side, by: str, baseline: str, opts: Options) -> tuple[list[CompareRow], list[tuple[str, list[str]]]]:
    """Every value of ``by`` other than ``baseline`` against it, in each cell of ``side`` (a cell:
    the configuration fields but ``by``). Returns the rows and the like-for-like problems found."""
    if by not in BY_FIELDS:
        raise UserError(f"--by {by!r} is not a field to compare on; use one of {', '.join(BY_FIELDS)}")
    agg = side.aggregated
    values = sorted({str(v) for v in agg[by]})
    if baseline not in values:
        raise UserError(f"no row of {side.path} has {by} {baseline!r} (its {by} values: {', '.join(values)}); "
                        f"pass one of them as --baseline")
    cell_cols = [c for c in KEY_COLUMNS if c != by]
    rows: list[CompareRow] = []
    problems: list[tuple[str, list[str]]] = []
    records = agg.to_dict("records")
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault(tuple(plain(r[c]) for c in cell_cols), []).append(r)
    for cell in sorted(cells, key=lambda k: tuple(str(v) for v in k)):
        members = cells[cell]
        base = next((r for r in members if str(r[by]) == baseline), None)
        for b in sorted((r for r in members if str(r[by]) != baseline), key=lambda r: str(r[by])):
            key = {c: plain(b[c]) for c in JOIN_COLUMNS}
            row = _joined(key, base, b, side, side, opts, status=None if base else "no baseline")
            row.baseline = baseline
            if base is not None:
                found = _mismatches(base, b, varied=by)
                if found:
                    problems.append((_key_name(b), found))
                    row.flags.extend(f"forced: {f}" for f in found)
            rows.append(row)
    return rows, problems


def compare_within(source: str | Path, by: str, baseline: str, metric: Metric = "last", force: bool = False,
                   **options: Any) -> Comparison:
    """``by`` = ``baseline`` against every other value of ``by`` inside one leaderboard, cell by cell."""
    opts = Options(metric=metric, force=force, **options)
    side = load_side(source)
    rows, problems = within(side, by, baseline, opts)
    if not force:
        _refuse_mismatches(problems, f"the rows of {source}")
    _adjust(rows)
    notes = [f"A = the {by} {baseline!r} row of each cell, B = the row named (a cell: every configuration field "
             f"but {by})"]
    if side.trials is None:
        notes.append(f"{source} is an aggregated table: rows cannot be paired by seed (pass the results folder or "
                     "its per-trial leaderboard to pair them)")
    missing = sum(r.status == "no baseline" for r in rows)
    if missing:
        notes.append(f"{missing} row(s) have no {by} {baseline!r} row in their cell (no delta)")
    if problems:
        notes.append(f"--force: {len(problems)} row(s) compare different models, quantizers, profiles, budgets or "
                     "teachers (see their flags)")
    notes.extend(label_notes(rows))
    notes.extend(method_notes(rows, opts))
    return Comparison(f"{by}={baseline}", str(source), metric, rows, notes, by=by, effect=opts.effect)
