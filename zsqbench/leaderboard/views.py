"""Display forms of an aggregated leaderboard: the compact and the wide table, the paper's pivot.

Kept apart from the numbers (aggregate.py) so CSV/JSON stay machine-readable while terminals and
Markdown get "mean ± std" strings. The compact view fits an 80-column terminal or CI log; the wide
one shows every setting.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from zsqbench.api.budgets import SHARED_CALIBRATION_LABEL
from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.leaderboard.labels import (
    PUBLISHED,
    PUBLISHED_NOTE,
    chance_label,
    chance_note,
    is_reference,
    row_flag,
    smoke_note,
    trial_chance,
)
from zsqbench.leaderboard.schema import is_missing, machine_kinds, plain
from zsqbench.runs.result_file import DEFAULT_PROFILE

ORACLE_NOTE = ("`top1_oracle` is the best epoch selected on the test set (an oracle, not a result); "
               "`top1_last` (mean ± sample std over seeds) is the headline.")
PIVOT_NOTE = ("Cells: top1_last mean ± sample std over seeds (number of seeds); rows dataset × budget × bits, columns "
              "generator+loss.")
METHOD_PIVOT_NOTE = ("Cells: top1_last mean ± sample std over seeds (number of seeds); rows generator+loss, columns "
                     "dataset × budget × bits (the layout of the AKT paper's Table 3).")


def mean_std(mean: Any, std: Any, digits: int = 2) -> str:
    """"72.40 ± 0.31", or just the mean when there is no spread to show (one seed)."""
    if is_missing(mean):
        return ""
    return f"{mean:.{digits}f}" if is_missing(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _num(value: Any, digits: int) -> str:
    return "" if is_missing(value) else f"{value:.{digits}f}"


COMPACT_NOTE = ("top-1 last: mean ± sample std over n seeds (the headline); oracle*: best epoch selected on the "
                "test set, not a result; --wide shows every setting.")
#: With --ci the ± is the 95 % confidence interval of the mean instead of the seeds' spread.
CI_NOTE = "± is the half-width of the 95 % t confidence interval of the mean over the n seeds (--ci), not the std."


def _spread(r: dict[str, Any], ci: bool) -> Any:
    return r["top1_last_ci95"] if ci else r["top1_last_std"]


def _varying(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """The columns whose values differ between rows; ``profile`` also when it is not the default
    anywhere, and ``budget`` when a row calibrated on the shared source (a number under another
    convention must not read as the usual one)."""
    return [c for c in columns if len(frame) and (frame[c].astype(str).nunique() > 1 or (
        c == "profile" and (frame[c].astype(str) != DEFAULT_PROFILE).any()) or (
        c == "budget" and frame[c].astype(str).str.contains(SHARED_CALIBRATION_LABEL, regex=False).any()))]


def _ptq_only(row: dict[str, Any]) -> bool:
    value = row.get("ptq_only")
    return not is_missing(value) and bool(value)


def _n(r: dict[str, Any]) -> str:
    """The number of seeds, or "pub." for a published value (not a mean over seeds)."""
    return PUBLISHED if is_reference(r) else str(r["n_seeds"])


def _flag_column(rows: list[dict[str, Any]], labels: list[str]) -> None:
    """A "flag" column only when a row has one, so an unflagged table stays narrow."""
    if any(labels):
        for row, label in zip(rows, labels):
            row["flag"] = label


def display_compact(frame: pd.DataFrame, ci: bool = False) -> pd.DataFrame:
    """One short line per configuration: what it is, seeds, top-1 last, oracle, PTQ (fits 80 columns),
    and a flag (at chance) where a row has one.

    The configuration names dataset, generator+loss and bits, plus model, quantizer, profile and
    budget only where they vary within the table; post-training-only configurations end in "(PTQ only)",
    so their top-1 is never read as a trained one."""
    extra = _varying(frame, ("model", "quantizer", "profile", "budget"))
    records = frame.to_dict("records")
    rows = [{
        "configuration": " ".join([r["dataset"], f"{r['generator']}+{r['loss']}", bits_label(r["w_bits"], r["a_bits"]),
                                   *(str(r[c]) for c in extra), *(["(PTQ only)"] if _ptq_only(r) else [])]),
        "n": _n(r),
        "top-1 last": mean_std(r["top1_last_mean"], _spread(r, ci)),
        "oracle*": _num(r["top1_oracle_mean"], 2),
        "PTQ": _num(r["ptq_top1_mean"], 2),
    } for r in records]
    _flag_column(rows, [row_flag(r) for r in records])
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else ["configuration", "n", "top-1 last", "oracle*", "PTQ"])


def display_aggregated(frame: pd.DataFrame, ci: bool = False) -> pd.DataFrame:
    """The aggregated rows as strings for a wide terminal or Markdown table."""
    rows = [{
        "model": r["model"], "dataset": r["dataset"], "generator": r["generator"], "loss": r["loss"],
        "quantizer": r["quantizer"], "profile": r["profile"], "bits": bits_label(r["w_bits"], r["a_bits"]),
        "budget": r["budget"],
        "n": _n(r),
        "top1_last": mean_std(r["top1_last_mean"], _spread(r, ci)),
        "top1_oracle (test-selected)": mean_std(r["top1_oracle_mean"], r["top1_oracle_std"]),
        "fp_top1": _num(r["fp_top1"], 2), "ptq_top1": _num(r["ptq_top1_mean"], 2),
        "ptq_only": "yes" if _ptq_only(r) else "", "flag": row_flag(r),
        "precision": r["precision"], "cpu_h": _num(r["cpu_hours"], 2), "gpu_h": _num(r["gpu_hours"], 2),
        "source": r["source"],
    } for r in frame.to_dict("records")]
    columns = ["model", "dataset", "generator", "loss", "quantizer", "profile", "bits", "budget", "n", "top1_last",
               "top1_oracle (test-selected)", "fp_top1", "ptq_top1", "ptq_only", "flag", "precision", "cpu_h", "gpu_h",
               "source"]
    return pd.DataFrame(rows, columns=columns)


def wide_names(frame: pd.DataFrame) -> list[str]:
    """How each wide row is headed when the table is printed one record per row."""
    return [f"{r['dataset']} {r['generator']}+{r['loss']} {bits_label(r['w_bits'], r['a_bits'])} {r['budget']}"
            for r in frame.to_dict("records")]


#: Per-trial columns shown with --wide (CSV and JSON hold every column).
PER_TRIAL_SHOWN = ["trial_id", "model", "generator", "loss", "profile", "w_bits", "a_bits", "seed", "budget", "ptq_only",
                   "fp_top1", "ptq_top1", "top1_last", "top1_oracle", "at_chance", "onnx_top1", "wall_s"]


def with_chance(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with their at_chance by the rule (filled for tables written before the column)."""
    trials = trials.copy()
    trials["at_chance"] = trial_chance(trials).astype("boolean")
    return trials


#: Digits shown per float column of the per-trial view (the CSV keeps what result.json rounds to).
_TRIAL_DIGITS = {"fp_top1": 2, "ptq_top1": 2, "top1_last": 2, "top1_oracle": 2, "onnx_top1": 2, "wall_s": 1}


def _trial_cell(column: str, value: Any) -> str:
    value = plain(value)
    if isinstance(value, bool):
        return "yes" if value else ""
    if column in _TRIAL_DIGITS and value is not None:
        return _num(float(value), _TRIAL_DIGITS[column])
    return "" if value is None else str(value)


def trial_names(trials: pd.DataFrame) -> list[str]:
    """How each trial is headed when the wide per-trial table is printed one record per row."""
    return [f"{r['trial_id']} {r['generator']}+{r['loss']} {bits_label(r['w_bits'], r['a_bits'])} seed {r['seed']}"
            for r in trials.to_dict("records")]


#: The per-trial columns :func:`trial_names` says.
TRIAL_NAMED = ["trial_id", "generator", "loss", "w_bits", "a_bits", "seed"]


def display_trials(trials: pd.DataFrame, wide: bool = False) -> pd.DataFrame:
    """Per-trial rows as strings: every shown column with ``wide``; otherwise a short id, the
    configuration (model, dataset, quantizer, budget only where they vary), seed, PTQ, top-1 last,
    oracle and a flag where a trial has one."""
    if wide:
        shown = trials[[c for c in PER_TRIAL_SHOWN if c in trials.columns]]
        return pd.DataFrame({c: [_trial_cell(c, v) for v in shown[c]] for c in shown.columns}, columns=shown.columns)
    extra = _varying(trials, tuple(c for c in ("model", "dataset", "quantizer", "profile", "budget")
                                   if c in trials.columns))
    records = trials.to_dict("records")
    rows = [{
        "trial": str(r["trial_id"])[:8],
        "configuration": " ".join([f"{r['generator']}+{r['loss']}", bits_label(r["w_bits"], r["a_bits"]),
                                   *(str(r[c]) for c in extra), *(["(PTQ only)"] if _ptq_only(r) else [])]),
        "seed": str(r["seed"]),
        "PTQ": _num(r["ptq_top1"], 2),
        "top-1 last": _num(r["top1_last"], 2),
        "oracle*": _num(r["top1_oracle"], 2),
    } for r in records]
    _flag_column(rows, [chance_label(r) for r in records])
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else ["trial", "configuration", "seed", "PTQ",
                                                                  "top-1 last", "oracle*"])


def machines_note(frame: pd.DataFrame) -> str:
    """A note when the rows come from more than one machine kind; '' otherwise."""
    kinds = machine_kinds(frame)
    if len(kinds) < 2:
        return ""
    return (f"these rows ran on {len(kinds)} machine kinds ({'; '.join(kinds)}): the same code and seed give "
            "different numbers on different kinds (vendor kernels sum in different orders, and a short training "
            "amplifies it), so a difference between rows of different kinds mixes methods and machines")


def notes_for(frame: pd.DataFrame, per_trial: bool = False) -> list[str]:
    """The notes a view of these rows needs: what 'at chance' means (when a row is flagged), that
    smoke numbers are not results (when smoke rows are shown), what 'pub.' means (published rows),
    that the rows come from different machine kinds (when they do)."""
    records = frame.to_dict("records")
    flagged = [r["dataset"] for r in records if chance_label(r)]
    notes = [chance_note(flagged)] if flagged else []
    notes.append(smoke_note(frame["budget"]))
    if not per_trial and any(is_reference(r) for r in records):
        notes.append(PUBLISHED_NOTE)
    notes.append(machines_note(frame))
    return [n for n in notes if n]


def _method_order(methods: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Generators alphabetically, each with its native loss (kd) first, as the paper's tables."""
    return sorted(methods, key=lambda m: (m[0], m[1] != "kd", m[1]))


def pivot(frame: pd.DataFrame, ci: bool = False) -> pd.DataFrame:
    """Rows dataset × bits, columns generator+loss, cells "mean ± std (n)".

    The budget is always a row level (a smoke number must never sit unmarked beside a trained
    one); model, quantizer, profile or source become extra levels only where two rows would otherwise share
    a cell. Published values say "pub." instead of a number of seeds; a cell whose trials finished
    at chance says so.
    """
    cell_key = ["dataset", "w_bits", "a_bits", "generator", "loss"]
    extras = [c for c in ("model", "quantizer", "profile", "budget", "source")
              if c == "budget" or (len(frame) and frame.groupby(cell_key)[c].nunique().max() > 1)]
    cells: dict[tuple, dict[str, str]] = {}
    methods: set[tuple[str, str]] = set()
    for r in frame.to_dict("records"):
        row_key = (r["dataset"], *(r[c] for c in extras), int(r["w_bits"]), int(r["a_bits"]))
        method = (r["generator"], r["loss"])
        methods.add(method)
        label = f"{method[0]}+{method[1]}"
        row = cells.setdefault(row_key, {})
        if label in row:  # only possible for a hand-made aggregated CSV with duplicate keys
            raise UserError(f"two rows of the leaderboard fill the pivot cell {r['dataset']} "
                            f"{bits_label(r['w_bits'], r['a_bits'])} {label}; remove the duplicate row")
        flag = row_flag(r)
        row[label] = f"{mean_std(r['top1_last_mean'], _spread(r, ci))} ({_n(r)})" + (f" {flag}" if flag else "")
    labels = [f"{g}+{loss}" for g, loss in _method_order(methods)]
    out = []
    for row_key in sorted(cells, key=lambda k: tuple(str(v) if i < len(k) - 2 else v for i, v in enumerate(k))):
        head = {"dataset": row_key[0], **dict(zip(extras, row_key[1:-2])), "bits": bits_label(*row_key[-2:])}
        out.append({**head, **{label: cells[row_key].get(label, "") for label in labels}})
    return pd.DataFrame(out, columns=["dataset", *extras, "bits", *labels])


def pivot_by_method(frame: pd.DataFrame, ci: bool = False) -> pd.DataFrame:
    """:func:`pivot` turned around, as the papers' comparison tables are laid out: one row per
    generator+loss, one column per dataset × bits (with any extra level that tells rows apart)."""
    table = pivot(frame, ci)
    keys = [c for c in table.columns if c == "dataset" or c == "bits" or c not in _method_columns(table)]
    methods = _method_columns(table)
    out = []
    for method in methods:
        row = {"method": method}
        for record in table.to_dict("records"):
            row[" ".join(str(record[k]) for k in keys)] = record[method]
        out.append(row)
    columns = ["method", *(" ".join(str(r[k]) for k in keys) for r in table.to_dict("records"))]
    return pd.DataFrame(out, columns=columns)


def pivot_names(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Record headings of a :func:`pivot` (its row levels: dataset, budget, ..., bits) and those columns."""
    levels = [c for c in table.columns if c not in _method_columns(table)]
    return [" ".join(str(r[c]) for c in levels) for r in table.to_dict("records")], levels


def _method_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if "+" in c]
