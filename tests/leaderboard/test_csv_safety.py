"""A leaderboard CSV is safe to open and to read (issue 27, item 6): text cells that a spreadsheet
would run as formulas are escaped when written and read back as written, numbers stay numbers;
reading is bounded in size, and every error is one short line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error
from support.leaderboard import result_from_row, trial_row, write_trials

from zsqbench.errors import UserError
from zsqbench.leaderboard import table
from zsqbench.leaderboard.table import MAX_CSV_BYTES, parse_table, read_table, to_csv_text

FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+2", "-2+3", "@SUM(A1)", "\t=1", "=cmd|' /C calc'!A0"]
#: Texts the escaping must give back exactly: leading quotes, a quote before a formula, plain text.
TRICKY = [*FORMULAS, "'", "''", "'plain", "'=1", "''=1", "plain", "a=b", "-", ""]


def _results_folder(tmp_path: Path) -> Path:
    """A results folder whose result files carry formulas in every text field a user could edit."""
    folder = tmp_path / "results"
    rows = [trial_row(seed=0, run="-run", device=FORMULAS[0], git_hash="+abc", flags="@SUM(A1);warnings"),
            trial_row(seed=1, device="cpu", finished_at="=1+1")]
    for row in rows:
        trial = folder / row["run"] / row["trial_id"]
        trial.mkdir(parents=True)
        (trial / "result.json").write_text(json.dumps(result_from_row(row)))
    return folder


def test_formula_cells_are_escaped_in_the_leaderboard_a_results_folder_writes(tmp_path, capsys):
    from zsqbench.cli.main import main

    folder = _results_folder(tmp_path)
    assert main(["leaderboard", str(folder), "--rebuild"]) == 0
    raw = list(csv.DictReader(io.StringIO((folder / "leaderboard.csv").read_text(), newline="")))
    cells = [v for row in raw for v in row.values()]
    assert not [c for c in cells if c.startswith(("=", "+", "@", "\t"))]
    assert {raw[0]["run"], raw[0]["device"], raw[0]["git_hash"], raw[0]["flags"], raw[1]["finished_at"]} == {
        "'-run", "'" + FORMULAS[0], "'+abc", "'@SUM(A1);warnings", "'=1+1"}
    frame, _ = read_table(folder / "leaderboard.csv")  # read back as written in the result files
    assert frame["device"].tolist() == [FORMULAS[0], "cpu"] and frame["run"].tolist() == ["-run", "run1"]
    assert frame["flags"][0] == "@SUM(A1);warnings" and frame["finished_at"][1] == "=1+1"


def test_text_cells_round_trip_and_negative_numbers_stay_numbers(tmp_path):
    rows = [trial_row(seed=i, note=text, top1_last=-1.5 if i == 0 else 70.0, w_bits=-2 if i == 0 else 3)
            for i, text in enumerate(TRICKY)]
    frame = pd.DataFrame(rows)
    text = to_csv_text(frame)
    raw = list(csv.DictReader(io.StringIO(text, newline="")))
    assert raw[0]["top1_last"] == "-1.5" and raw[0]["w_bits"] == "-2"  # numbers are not text
    assert [r["note"] for r in raw][:len(FORMULAS)] == ["'" + f for f in FORMULAS]
    read, _ = parse_table(tmp_path / "t.csv", text)
    assert read["note"].fillna("").tolist() == TRICKY
    assert read["top1_last"][0] == -1.5 and read["w_bits"][0] == -2


def test_a_leading_quote_the_writer_did_not_add_is_kept(tmp_path):
    """A CSV from before the escaping (or hand-made): only a quote before a formula start or another
    quote is read as the escape."""
    path = write_trials(tmp_path / "old.csv", [trial_row(seed=0, note="'tis fine"), trial_row(seed=1, note="=1")])
    frame, _ = read_table(path)
    assert frame["note"].tolist() == ["'tis fine", "=1"]


def test_a_csv_larger_than_a_leaderboard_can_be_is_refused_before_pandas_reads_it(tmp_path, capsys, monkeypatch):
    path = write_trials(tmp_path / "huge.csv", [trial_row()])
    with open(path, "ab") as fh:
        fh.truncate(MAX_CSV_BYTES + 1)  # sparse: past the limit without writing it
    monkeypatch.setattr(table.pd, "read_csv", lambda *a, **k: pytest.fail("pandas read the file"))
    err = one_line_error(capsys, ["leaderboard", str(path)])
    assert f"malformed leaderboard CSV {path}: it is larger than 64 MiB, far larger than a leaderboard" in err
    assert len(err) < 300 + len(str(path))


def test_the_size_bound_leaves_room_for_a_big_leaderboard():
    """10,000 trials, far more than a paper's grids, fit the bound more than ten times over."""
    text = to_csv_text(pd.DataFrame([trial_row(seed=i) for i in range(1000)]))
    assert 10 * len(text.encode()) * 10 < MAX_CSV_BYTES


@pytest.mark.parametrize("column, value, needle", [
    ("fp_top1", "9" * 100_000 + "x", "column 'fp_top1' holds '999"),
    ("ptq_only", "y" * 100_000, "column 'ptq_only' holds 'yyy"),
])
def test_errors_quote_a_huge_cell_cut_short(tmp_path, capsys, column, value, needle):
    path = write_trials(tmp_path / "t.csv", [trial_row(**{column: value})])
    err = one_line_error(capsys, ["leaderboard", str(path)])
    assert needle in err and len(err) < 300 + len(str(path))


def test_a_huge_duplicate_header_is_named_short(tmp_path):
    name = "x" * 100_000
    text = f"trial_id,top1_last,{name},{name}\n1,2,3,4\n"
    with pytest.raises(UserError, match="duplicate column names in the header: 'xxx") as info:
        parse_table(tmp_path / "t.csv", text)
    assert len(str(info.value)) < 400
