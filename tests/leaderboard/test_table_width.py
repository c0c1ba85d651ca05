"""Every table view at 80 columns, on a terminal and under a pipe: no line longer than 80, no cell
broken across lines, plain text without box drawing when piped, and a table only when it fits
(otherwise one record per row)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from conftest import make_spec
from rich.cells import cell_len
from rich.console import Console
from support.leaderboard import trial_row, write_trial_folder, write_trials

from zsqbench.cli import compare_cmd, console, leaderboard_cmd, ledger_cmd, plugins_cmd, status_cmd
from zsqbench.cli.main import main
from zsqbench.cli.tables import TextTable

WIDTH = 80
BOX_DRAWING = re.compile("[\u2500-\u257f]")


@pytest.fixture(params=["terminal", "pipe"])
def screen(request, monkeypatch):
    """stdout as an 80-column terminal or a pipe; every TextTable the commands print is recorded."""
    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=WIDTH, force_terminal=request.param == "terminal",
                                                color_system=None, legacy_windows=False))
    tables: list[TextTable] = []
    for module in (leaderboard_cmd, compare_cmd, status_cmd, plugins_cmd, ledger_cmd):
        real = module.show_table
        monkeypatch.setattr(module, "show_table", lambda table, c=None, real=real: (tables.append(table), real(table)))
    return request.param, buf, tables


def _is_table(lines: list[str], table: TextTable) -> bool:
    """The table layout has a header line holding every column name in order."""
    header = re.compile(r"\s+".join(re.escape(c) for c in table.columns))
    return any(header.fullmatch(line.strip()) for line in lines)


def _words(text: str) -> str:
    return " ".join(text.split())


def check_readable(mode: str, text: str, table: TextTable) -> str:
    """Assert the output of one table is readable at WIDTH; returns its layout ('table' or 'records')."""
    lines = text.splitlines()
    too_long = [line for line in lines if cell_len(line) > WIDTH]
    assert not too_long, too_long[0]
    if mode == "pipe":
        assert not BOX_DRAWING.search(text), "box drawing under a pipe"
    if _is_table(lines, table):
        for row in table.rows:  # a row is one line holding every cell, whole and in order
            cells = [c for c in row if c]
            pattern = re.compile(".*".join(re.escape(c) for c in cells))
            assert any(pattern.search(line) for line in lines), row
        return "table"
    start = 0
    headings = table.headings()
    for i, (name, row) in enumerate(zip(headings, table.rows)):
        first_word = name.split()[0]
        start = next(k for k in range(start, len(lines)) if lines[k].startswith(first_word)
                     and _words(" ".join(lines[k:k + 3])).startswith(_words(name)))
        stop = next((k for k in range(start + 1, len(lines)) if not lines[k].startswith(" ")), len(lines))
        block = lines[start:stop]
        for pair in table.pairs(row):
            if cell_len(pair) <= WIDTH - 2:  # a pair that fits a line is never split
                assert any(pair in line for line in block), (name, pair)
            else:  # only prose is longer: it wraps at spaces, every word kept
                assert _words(pair) in _words(" ".join(block)), (name, pair)
        start = stop
    return "records"


def _render(screen, argv: list[str]) -> str:
    """Run one command (each prints one table); its layout."""
    mode, buf, tables = screen
    buf.seek(0)
    buf.truncate()
    tables.clear()
    assert main(argv) == 0
    (table,) = tables
    return check_readable(mode, buf.getvalue(), table)


@pytest.fixture
def grid(tmp_path) -> Path:
    """A results folder like a newcomer's: three generators, two losses, two bit-widths, two seeds,
    a cpu and a smoke budget, AdaDFQ+AKT smoke at chance, one HAST+AKT cpu seed at chance."""
    folder = tmp_path / "results"
    rows = []
    for g in ("gdfq", "adadfq", "hast"):
        for loss in ("kd", "akt"):
            for bits in (3, 4):
                for seed in (0, 1):
                    for budget in ("cpu", "smoke"):
                        top1 = 50.0 + 3 * bits + seed + (1.25 if loss == "akt" else 0.0) - (30 if budget == "smoke"
                                                                                            else 0)
                        if g == "adadfq" and loss == "akt" and budget == "smoke":
                            top1 = 10.0
                        if g == "hast" and loss == "akt" and budget == "cpu" and bits == 4 and seed == 1:
                            top1 = 12.0
                        extra = dict(epochs=2, iters_per_epoch=2, batch_size=16, warmup_epochs=1) \
                            if budget == "smoke" else {}
                        rows.append(trial_row(g, loss, bits, seed, top1, budget=budget, run=f"run-{budget}", **extra))
    for row in rows:
        write_trial_folder(folder, row)
    spec = make_spec("hast", "akt", bits=3)
    failed = folder / "run-cpu" / spec.trial_id  # a trial folder is named by its spec's hash
    failed.mkdir()
    (failed / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    (failed / "error.json").write_text(json.dumps({
        "status": "failed", "resumable": False,
        "error": "TrialDiverged: the student loss became NaN at epoch 3 (iteration 57 of 100); lower the learning "
                 "rate or check the generator's BN statistics"}))
    return folder


LEADERBOARD_VIEWS = [[], ["--wide"], ["--per-trial"], ["--per-trial", "--wide"], ["--pivot"], ["--pivot", "methods"],
                     ["--ci"], ["--wide", "--ci"]]


@pytest.mark.parametrize("flags", LEADERBOARD_VIEWS, ids=lambda f: " ".join(f) or "default")
def test_every_leaderboard_view_is_readable_at_80_columns(screen, grid, flags):
    layout = _render(screen, ["leaderboard", str(grid), *flags])
    if flags in ([], ["--per-trial"], ["--ci"]):
        assert layout == "table"  # the compact defaults fit 80 columns as tables


@pytest.mark.parametrize("flags", [[], ["--pivot"], ["--pivot", "methods"], ["--wide"]],
                         ids=lambda f: " ".join(f) or "default")
def test_published_tables_are_readable_at_80_columns(screen, flags):
    _render(screen, ["leaderboard", "paper:akt", *flags])


@pytest.mark.parametrize("argv", [
    ["--by", "loss", "--baseline", "kd"],
    ["--by", "loss", "--baseline", "kd", "--wide", "--effect", "0.3"],
    ["--by", "generator", "--baseline", "gdfq"],
    ["--by", "quantizer", "--baseline", "uniform"],
], ids=lambda a: " ".join(a))
def test_every_compare_by_view_is_readable_at_80_columns(screen, grid, argv):
    _render(screen, ["compare", str(grid), *argv])


def test_compare_of_two_tables_and_with_a_paper_is_readable_at_80_columns(screen, tmp_path):
    a = write_trials(tmp_path / "a.csv", [trial_row(loss=loss, bits=b, seed=s, top1_last=60.0 + s + b)
                                          for loss in ("kd", "akt") for b in (3, 4) for s in (0, 1, 2)])
    b = write_trials(tmp_path / "b.csv", [trial_row(loss=loss, bits=b, seed=s, top1_last=61.5 + s * 0.5 + b)
                                          for loss in ("kd", "akt") for b in (3, 4, 5) for s in (0, 1, 2, 3)])
    _render(screen, ["compare", str(a), str(b)])
    _render(screen, ["compare", str(a), str(b), "--wide", "--effect", "0.5"])
    smoke = write_trials(tmp_path / "smoke.csv", [  # the run: adadfq,hast x akt x 3,4,5 at smoke budget
        trial_row(g, "akt", b, 0, v, budget="smoke", epochs=2, iters_per_epoch=2, batch_size=16, warmup_epochs=1)
        for g, values in (("adadfq", (10.0, 10.0, 10.0)), ("hast", (9.93, 12.94, 37.37)))
        for b, v in zip((3, 4, 5), values)])
    _render(screen, ["compare", "paper:akt", str(smoke)])


@pytest.mark.parametrize("flags", [[], ["--conflicts"]], ids=lambda f: " ".join(f) or "default")
def test_the_ledger_of_claims_is_readable_at_80_columns(screen, flags):
    _render(screen, ["ledger", *flags])


@pytest.mark.parametrize("flags", [[], ["--force"], ["--all"]], ids=lambda f: " ".join(f) or "default")
def test_the_ledger_of_a_grid_is_readable_at_80_columns(screen, grid, flags):
    _render(screen, ["ledger", str(grid), *flags])


@pytest.mark.parametrize("flags", [["--all"], ["--all", "--wide"], []], ids=lambda f: " ".join(f) or "default")
def test_status_is_readable_at_80_columns(screen, grid, flags):
    _render(screen, ["status", str(grid), *flags])


def test_the_plugin_list_is_readable_at_80_columns_and_keeps_brackets(screen):
    _render(screen, ["plugins"])
    text = _words(screen[1].getvalue())
    assert "pip install 'zsqbench[ray]'" in text and "pip install 'zsqbench[slurm]'" in text


def test_a_wide_terminal_gets_one_line_per_row_without_wrapped_cells(grid, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=220, force_terminal=True, color_system=None))
    assert main(["leaderboard", str(grid), "--wide"]) == 0
    lines = buf.getvalue().splitlines()
    assert max(cell_len(line) for line in lines) <= 220
    row = next(line for line in lines if "smoke" in line and "adadfq" in line and "akt" in line and "W3A3" in line)
    assert "10.00 ± 0.00" in row and "at chance" in row and "resnet20_cifar10" in row


def test_numbers_are_right_aligned_and_trial_ids_that_start_with_digits_are_not():
    table = TextTable(["trial", "top-1", "schedule"], [["9200e3652d7f92f9", "54.61 ± 1.20", "8x100x64"],
                                                      ["31c0aa74be55e103", "50.53", "8x100x64"]])
    assert table.numeric() == [False, True, True]
