"""Strict reading of leaderboard CSVs (per-trial or aggregated) and writing them as text.

A leaderboard that was cut short (a crashed copy, a full disk) or edited by hand must not be
averaged silently: pandas fills a short last row with NaN and shifts a long row into the index,
so every row is first checked with the csv module, then required cells and numbers are checked.
The leaderboard, compare and plot commands all read through :func:`read_table`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from zsqbench.errors import UserError

Kind = Literal["per-trial", "aggregated"]

# Columns read as text whatever they look like (a seed list "0" or a hex hash of digits only).
TEXT_COLUMNS = (
    "trial_id", "run", "model", "dataset", "generator", "loss", "quantizer", "budget", "device",
    "teacher_weights", "teacher_sha256", "data_sha256", "zsqbench_version", "torch_version", "git_hash",
    "finished_at", "status", "seeds", "source", "note",
)
INT_COLUMNS = ("w_bits", "a_bits", "seed", "epochs", "iters_per_epoch", "batch_size", "warmup_epochs", "n_seeds")
FLOAT_COLUMNS = (
    "fp_top1", "ptq_top1", "top1_last", "top1_oracle", "wall_s", "top1_last_mean", "top1_last_std",
    "top1_oracle_mean", "top1_oracle_std", "ptq_top1_mean", "cpu_hours", "gpu_hours",
)

# What each kind needs present and non-empty in every row to be aggregated or compared.
REQUIRED: dict[Kind, tuple[str, ...]] = {
    "per-trial": (
        "trial_id", "model", "dataset", "generator", "loss", "quantizer", "w_bits", "a_bits", "budget", "seed",
        "epochs", "iters_per_epoch", "batch_size", "fp_top1", "ptq_top1", "top1_last", "top1_oracle", "wall_s",
        "device", "teacher_sha256",
    ),
    "aggregated": (
        "model", "dataset", "generator", "loss", "quantizer", "w_bits", "a_bits", "budget", "n_seeds",
        "top1_last_mean", "source",
    ),
}


def _fail(path: Path, problem: str, fix: str = "regenerate it") -> UserError:
    """One-line error: CSV problems are user-fixable, and tracebacks would hide the file name."""
    text = " ".join(f"malformed leaderboard CSV {path}: {problem}; {fix}".split())
    return UserError(text)


def _check_shape(path: Path, text: str) -> None:
    """Every row has the header's field count, and the file ends with a newline (else it was cut)."""
    if not text.strip():
        raise _fail(path, "the file is empty")
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows)
        for row in rows:
            if row and len(row) != len(header):
                raise _fail(path, f"line {rows.line_num} has {len(row)} fields but the header has {len(header)} "
                                  "(truncated or hand-edited?)")
    except csv.Error as exc:
        raise _fail(path, f"line {rows.line_num}: {exc}") from None
    if len(set(header)) != len(header):
        raise _fail(path, f"duplicate column names in the header {header}")
    if not text.endswith(("\n", "\r")):
        raise _fail(path, "it does not end with a newline, so its last row may be cut off",
                    "regenerate it (if it is complete, add the final newline)")


def detect_kind(path: Path, columns: list[str]) -> Kind:
    """Aggregated CSVs carry ``top1_last_mean``; per-trial ones carry ``trial_id`` and ``top1_last``."""
    if "top1_last_mean" in columns:
        return "aggregated"
    if "trial_id" in columns and "top1_last" in columns:
        return "per-trial"
    raise _fail(path, "it is neither a per-trial leaderboard (trial_id, top1_last) nor an aggregated one "
                      "(top1_last_mean, n_seeds)", "pass results/leaderboard.csv or a file written by "
                                                   "`zsqbench leaderboard --csv`")


def _check_cells(path: Path, frame: pd.DataFrame, kind: Kind) -> pd.DataFrame:
    """Required columns present and filled; numeric columns numeric (ints nullable, so CSVs stay clean)."""
    missing = [c for c in REQUIRED[kind] if c not in frame.columns]
    if missing:
        raise _fail(path, f"missing columns {missing}")
    # A failed or diverged trial (a `status` column) may lack accuracies; it is never aggregated.
    counted = frame["status"] == "done" if "status" in frame.columns else pd.Series(True, index=frame.index)
    for col in REQUIRED[kind]:
        empty = frame.index[frame[col].isna() & counted].tolist()
        if empty:
            raise _fail(path, f"data row {empty[0] + 1} has no value in column '{col}' (truncated or hand-edited?)")
    for col in (*INT_COLUMNS, *FLOAT_COLUMNS):
        if col not in frame.columns:
            continue
        numbers = pd.to_numeric(frame[col], errors="coerce")
        bad = frame.index[numbers.isna() & frame[col].notna()].tolist()
        if bad:
            raise _fail(path, f"data row {bad[0] + 1}: column '{col}' holds {frame[col][bad[0]]!r}, not a number")
        if col in INT_COLUMNS:
            if ((numbers.dropna() % 1) != 0).any():
                raise _fail(path, f"column '{col}' must hold whole numbers")
            frame[col] = numbers.astype("Int64")
        else:
            frame[col] = numbers.astype("float64")
    return frame


def read_table(path: Path) -> tuple[pd.DataFrame, Kind]:
    """Read a per-trial or aggregated leaderboard, refusing anything cut short or malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"leaderboard not found: {path}; run `zsqbench run` first or pass the right path") from None
    except UnicodeDecodeError:
        raise _fail(path, "it is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; pass a readable CSV file") from None
    _check_shape(path, text)
    header = next(csv.reader(io.StringIO(text, newline="")))
    kind = detect_kind(path, header)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={c: str for c in TEXT_COLUMNS if c in header},
                            index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise _fail(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return _check_cells(path, frame, kind), kind


# ----------------------------------------------------------------------------------------------
# Writing: CSV (machine-readable numbers), JSON (nulls for missing), Markdown (display strings).


def to_csv_text(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def _plain(value: Any) -> Any:
    """numpy/pandas scalars and missing values as JSON-friendly Python values."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def to_json_text(frame: pd.DataFrame) -> str:
    return json.dumps(to_records(frame), indent=2)


def to_markdown(frame: pd.DataFrame, note: str = "") -> str:
    """A GitHub-flavoured Markdown table of the frame's cells as they are (pass display strings)."""
    def cell(v: Any) -> str:
        v = _plain(v)
        return "" if v is None else str(v).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + (f"\n\n{note}\n" if note else "\n")
