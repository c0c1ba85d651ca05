"""Leaderboard tables on disk and as text: the one strict reader, the one writer, the renderings.

A leaderboard that was cut short (a crashed copy, a full disk) or edited by hand must not be
averaged silently: pandas fills a short last row with NaN and shifts a long row into the index,
so every row is first checked with the csv module, then required cells and types are checked
against :mod:`zsqbench.leaderboard.schema`. Every command (leaderboard, compare, plot) reads
through :func:`read_table`, which takes a CSV file or a results folder; a results folder is read
from its trials' result files (:mod:`zsqbench.leaderboard.results_folder`), so it always agrees
with them, whatever its ``leaderboard.csv`` holds.

Reading is bounded: a file over :data:`MAX_CSV_BYTES` is refused before pandas sees it, and every
error stays one short line (cell values are quoted truncated). Text cells are written escaped
against spreadsheet formulas (:func:`zsqbench.leaderboard.schema.to_csv_text`) and read back as
they were.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.errors import UserError
from zsqbench.leaderboard.results_folder import LEADERBOARD_NAME, leaderboard_text
from zsqbench.leaderboard.schema import REQUIRED, Kind, is_missing, of_type, plain, unescape_frame, with_profiles
from zsqbench.leaderboard.schema import to_csv_text as to_csv_text
from zsqbench.runs.result_file import find_result_files, quote

#: The largest CSV read. A per-trial row takes about 400 bytes (350-450: the device name varies), so
#: a 10,000-trial leaderboard, far more than a paper's grids (hundreds to a few thousand trials),
#: is about 4 MB; this is over ten times that (some 170,000 trials). Measured: a 63 MiB leaderboard
#: is read in 2.5 s with about 0.4 GB of memory (pandas takes some 7 bytes per byte of CSV; the
#: 124 MB of issue 27 took 1.4 GB), a bigger file is refused after reading 64 MiB.
MAX_CSV_BYTES = 64 * 2**20
#: Longest problem text of an error line (the path comes on top): long enough for any message of
#: this module, short enough that no cell or header of a malformed file floods the terminal.
MAX_PROBLEM_CHARS = 300


def _fail(path: Path, problem: str, fix: str = "regenerate it") -> UserError:
    """One-line error: CSV problems are user-fixable, and tracebacks would hide the file name."""
    problem = " ".join(problem.split())
    if len(problem) > MAX_PROBLEM_CHARS:
        problem = problem[:MAX_PROBLEM_CHARS - 3] + "..."
    return UserError(" ".join(f"malformed leaderboard CSV {path}: {problem}; {fix}".split()))


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
        duplicates = sorted({c for c in header if header.count(c) > 1})
        raise _fail(path, f"duplicate column names in the header: {', '.join(quote(c) for c in duplicates[:5])}")
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
    for col in frame.columns:
        if col in of_type("bool"):
            frame[col] = _booleans(path, frame, col)
            continue
        if col not in of_type("int") and col not in of_type("float"):
            continue
        numbers = pd.to_numeric(frame[col], errors="coerce")
        bad = frame.index[numbers.isna() & frame[col].notna()].tolist()
        if bad:
            raise _fail(path, f"data row {bad[0] + 1}: column '{col}' holds {quote(frame[col][bad[0]])}, not a number")
        if col in of_type("int"):
            if ((numbers.dropna() % 1) != 0).any():
                raise _fail(path, f"column '{col}' must hold whole numbers")
            frame[col] = numbers.astype("Int64")
        else:
            frame[col] = numbers.astype("float64")
    return frame


def read_table(path: Path) -> tuple[pd.DataFrame, Kind]:
    """Read a per-trial or aggregated leaderboard (a CSV, or a results folder: its trials), refusing
    anything cut short or malformed."""
    path = Path(path)
    if path.is_dir():
        if not find_result_files(path) and (path / LEADERBOARD_NAME).is_file():
            # A table shared without its trial folders: the CSV is all there is to read.
            return read_table(path / LEADERBOARD_NAME)
        return parse_table(path, leaderboard_text(path))
    return parse_table(path, _read_text(path))


def _read_text(path: Path) -> str:
    """The file's text, read no further than :data:`MAX_CSV_BYTES` (a FIFO or a device file never
    ends: its size says nothing, so the read itself is bounded)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CSV_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"leaderboard not found: {path}; run `zsqbench run` first or pass the right path") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; pass a readable CSV file") from None
    if len(data) > MAX_CSV_BYTES:
        raise _fail(path, f"it is larger than {MAX_CSV_BYTES // 2**20} MiB, far larger than a leaderboard can be "
                          "(about 400 bytes per trial)", "pass the leaderboard.csv of a results folder")
    try:  # line ends as written: the csv module and pandas read \r\n, and quoted cells keep theirs
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(path, "it is not UTF-8 text") from None


def parse_table(path: Path, text: str) -> tuple[pd.DataFrame, Kind]:
    """The checked table of a leaderboard's text (``path`` names it in errors)."""
    _check_shape(path, text)
    header = next(csv.reader(io.StringIO(text, newline="")))
    kind = detect_kind(path, header)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={c: str for c in of_type("text") if c in header},
                            index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise _fail(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    frame = unescape_frame(frame)
    if kind == "per-trial" and "compute" in frame.columns and "precision" not in frame.columns:
        frame = _upgrade_compute_label(frame)
    return with_profiles(_check_cells(path, frame, kind)), kind


# ----------------------------------------------------------------------------------------------
# Writing: CSV (machine-readable numbers), JSON (nulls for missing), Markdown (display strings); the
# terminal's tables are zsqbench.cli.tables'.


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _booleans(path: Path, frame: pd.DataFrame, col: str) -> pd.Series:
    def convert(value: Any) -> Any:
        if is_missing(value) or isinstance(value, bool):
            return pd.NA if is_missing(value) else value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise _fail(path, f"column '{col}' holds {quote(value)}, not True/False")

    return frame[col].map(convert).astype("boolean")


def _upgrade_compute_label(frame: pd.DataFrame) -> pd.DataFrame:
    """Leaderboards written before the compute settings had columns of their own held one label
    ("fp32,channels-last"); this is the one place that reads it, to turn it into the columns."""
    frame = frame.copy()
    labels = frame.pop("compute").fillna("").astype(str)
    parts = labels.str.split(",")
    frame["precision"] = parts.str[0].replace("", "fp32")
    frame["channels_last"] = labels.str.contains("channels-last")
    frame["compile"] = parts.map(lambda p: "compile" in p)
    frame["tf32"] = parts.map(lambda p: True if "tf32" in p else (False if "no-tf32" in p else pd.NA))
    return frame


# ----------------------------------------------------------------------------------------------
# Text renderings.


def to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def to_json_text(frame: pd.DataFrame) -> str:
    return json.dumps(to_records(frame), indent=2)


def _cell(value: Any) -> str:
    value = plain(value)
    return "" if value is None else str(value)


def to_markdown(frame: pd.DataFrame, note: str = "") -> str:
    """A GitHub-flavoured Markdown table of the frame's cells as they are (pass display strings)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + (f"\n\n{note}\n" if note else "\n")
