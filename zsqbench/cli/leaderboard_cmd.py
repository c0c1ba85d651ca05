"""`zsqbench leaderboard`: a results folder or leaderboard CSV aggregated over seeds, per trial, or as a pivot.

One view is chosen (aggregated by default, ``--per-trial``, ``--pivot`` or ``--deploy``) and that same view is
written to every requested file. The terminal shows the aggregated and per-trial views compactly
(they fit 80 columns); ``--wide`` shows every setting there and in Markdown. A table wider than
the terminal (or than 80 columns under a pipe) is printed one record per row, never with wrapped
cells (zsqbench.cli.tables). CSV and JSON always hold every column of the view. Trials at chance,
smoke-budget rows and published values are labelled in every view.

A results folder is read from its trials' result files, and its ``leaderboard.csv`` is rewritten
when it disagrees with them (missing, out of date, damaged); ``--rebuild`` does only that.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from zsqbench.cli.tables import TextTable, show_table
from zsqbench.errors import UserError
from zsqbench.files import write_text_atomic
from zsqbench.leaderboard.aggregate import as_aggregated, done_trials
from zsqbench.leaderboard.deploy import deploy_notes, deploy_table, display_deploy
from zsqbench.leaderboard.references import resolve_source
from zsqbench.leaderboard.results_folder import LEADERBOARD_NAME, rebuild_leaderboard, trial_rows
from zsqbench.leaderboard.schema import PER_TRIAL
from zsqbench.leaderboard.table import read_table, to_csv_text, to_json_text, to_markdown
from zsqbench.leaderboard.views import (
    CI_NOTE,
    COMPACT_NOTE,
    METHOD_PIVOT_NOTE,
    ORACLE_NOTE,
    PIVOT_NOTE,
    TRIAL_NAMED,
    display_aggregated,
    display_compact,
    display_trials,
    notes_for,
    pivot,
    pivot_by_method,
    pivot_names,
    trial_names,
    wide_names,
    with_chance,
)
from zsqbench.runs.result_file import find_result_files

DESCRIPTION = """\
Aggregate a per-trial leaderboard over seeds (one row per configuration: mean ± sample std of
top1_last) and show it; or show it per trial, or in the paper's table layout.
"""

TRIAL_NOTE = ("oracle*: best epoch selected on the test set, not a result; report top-1 last. --wide shows every "
              "column, the full trial ids among them")


@dataclass
class View:
    """One leaderboard view: ``machine`` for CSV/JSON, ``display`` (strings) for terminal/Markdown."""

    machine: pd.DataFrame
    display: pd.DataFrame
    title: str
    notes: list[str]
    names: list[str] | None = None  # record headings when the table is printed one record per row
    named: list[str] | None = None  # the columns those headings say

    def table(self) -> TextTable:
        return TextTable.of(self.display, self.title, self.notes, names=self.names, named=self.named)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard", help="show a leaderboard (mean ± std over seeds)",
        description=DESCRIPTION)
    p.add_argument("source", nargs="?", default="results", metavar="FILE_OR_RESULTS_DIR",
                   help="a results folder (its leaderboard.csv), a per-trial or aggregated leaderboard CSV, or "
                        "paper:NAME for a published reference table (default: results)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--per-trial", action="store_true", help="one row per trial instead of per configuration")
    view.add_argument("--pivot", nargs="?", const="bits", choices=("bits", "methods"),
                      help="paper layout, cells 'mean ± std (n)': 'bits' (the default) = rows dataset x bits, columns "
                           "generator+loss; 'methods' = rows generator+loss, columns dataset x bits (Table 3)")
    view.add_argument("--deploy", action="store_true",
                      help="what a deployable profile (ort-int8, ort-int4w) loses and gains against the academic one, "
                           "per method and bits: top-1 of both, the paired difference, the integer export's ONNX "
                           "top-1, size and speed against the FP32 teacher (docs/deployment.md)")
    p.add_argument("--wide", action="store_true",
                   help="every setting in the terminal and Markdown table (default: a compact view for 80 columns; "
                        "a table wider than the terminal is printed one record per row)")
    p.add_argument("--ci", action="store_true",
                   help="show mean ± the 95 %% confidence interval of the mean instead of ± the std over seeds")
    p.add_argument("--run", metavar="NAMES", help="only trials of these runs (comma-separated)")
    p.add_argument("--csv", dest="csv_out", type=Path, metavar="FILE",
                   help="also write the view as CSV (the aggregated view is what `zsqbench compare` reads)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the view as Markdown")
    p.add_argument("--json", action="store_true", help="print the view as JSON instead of a table")
    p.add_argument("--rebuild", action="store_true",
                   help="only regenerate RESULTS_DIR/leaderboard.csv from the trials' result.json files (repairs "
                        "a CSV damaged by an editor or an old version)")
    p.set_defaults(execute=execute)


def _select_runs(frame: pd.DataFrame, kind: str, runs: str | None, path: Path) -> pd.DataFrame:
    if not runs:
        return frame
    if kind != "per-trial" or "run" not in frame.columns:
        raise UserError(f"--run needs a per-trial leaderboard with a 'run' column; {path} has none. Drop --run")
    wanted = [r.strip() for r in runs.split(",") if r.strip()]
    unknown = sorted(set(wanted) - set(frame["run"].dropna()))
    if unknown:
        raise UserError(f"no trials of run(s) {unknown} in {path}; its runs are {sorted(set(frame['run'].dropna()))}")
    return frame[frame["run"].isin(wanted)]


def build_view(args: argparse.Namespace) -> View:
    path = resolve_source(args.source)
    frame, kind = read_table(path)
    frame = _select_runs(frame, kind, args.run, path)
    if args.deploy:
        if kind != "per-trial":
            raise UserError(f"{path} is an aggregated leaderboard; --deploy needs the trials (a results folder or its "
                            "leaderboard.csv)")
        table = deploy_table(done_trials(frame))
        shown = display_deploy(table)
        return View(table, shown, f"{path}: deployable vs academic profile ({len(table)} rows)",
                    deploy_notes(table), names=[f"{m} {b} {p}".strip() for m, b, p in zip(
                        shown["method"], shown["bits"], shown["profile"])],
                    named=["method", "bits", "profile"])
    if args.per_trial:
        if kind != "per-trial":
            raise UserError(f"{path} is an aggregated leaderboard, so it has no per-trial rows; drop --per-trial")
        trials = with_chance(done_trials(frame))
        trials = trials.sort_values([c for c in ("model", "generator", "loss", "w_bits", "seed") if c in trials.columns])
        # CSV and JSON hold every column, so the file reads back as a per-trial leaderboard
        machine = trials[list(dict.fromkeys([*(c for c in PER_TRIAL if c in trials.columns), *trials.columns]))]
        notes = [ORACLE_NOTE if args.wide else TRIAL_NOTE, *notes_for(trials, per_trial=True)]
        names = (trial_names(trials), TRIAL_NAMED) if args.wide else (None, None)
        return View(machine, display_trials(trials, args.wide), f"{path} ({len(trials)} trials)", notes, *names)
    agg = as_aggregated(frame, kind)
    ci_note = [CI_NOTE] if args.ci else []
    notes = [*ci_note, *notes_for(agg)]
    if args.pivot == "methods":
        table = pivot_by_method(agg, args.ci)
        return View(table, table, f"{path}: top1_last by generator+loss (columns dataset x budget x bits)",
                    [METHOD_PIVOT_NOTE, *notes])
    if args.pivot:
        table = pivot(agg, args.ci)
        return View(table, table, f"{path}: top1_last by dataset x budget x bits (columns generator+loss)",
                    [PIVOT_NOTE, *notes], *pivot_names(table))
    title = f"{path} ({len(agg)} configurations)"
    if args.wide:
        return View(agg, display_aggregated(agg, args.ci), title, [ORACLE_NOTE, *notes], names=wide_names(agg),
                    named=["dataset", "generator", "loss", "bits", "budget"])
    return View(agg, display_compact(agg, args.ci), title, [COMPACT_NOTE, *notes])


def _sync_folder_csv(folder: Path, required: bool) -> None:
    """Rewrite the folder's CSV if it disagrees with its trials; unless ``required`` (--rebuild),
    a folder that cannot be written (read-only, full) only gets a warning: the view is still right.
    A folder holding only a CSV (shared without its trials) is read as it is."""
    if not required and not find_result_files(folder) and (folder / LEADERBOARD_NAME).is_file():
        return
    try:
        changed = rebuild_leaderboard(folder)
    except OSError as exc:
        if required:
            raise UserError(f"cannot write {folder / LEADERBOARD_NAME}: {exc.strerror or exc}; free space or fix "
                            "the folder's permissions and retry") from None
        print(f"warning: {folder / LEADERBOARD_NAME} is out of date and could not be rewritten "
              f"({exc.strerror or exc})", file=sys.stderr)
        return
    if changed or required:
        state = "rebuilt" if changed else "already agreed with"
        print(f"{folder / LEADERBOARD_NAME}: {state} the {len(trial_rows(folder))} result file(s)", file=sys.stderr)


def execute(args: argparse.Namespace) -> int:
    source = resolve_source(args.source)
    if args.rebuild and not Path(source).is_dir():
        raise UserError(f"--rebuild needs a results folder (the --out of `zsqbench run`), not {source}")
    if Path(source).is_dir():
        _sync_folder_csv(Path(source), required=args.rebuild)
        if args.rebuild:
            return 0
    view = build_view(args)
    if args.csv_out:
        write_text_atomic(args.csv_out, to_csv_text(view.machine))
    if args.markdown:
        write_text_atomic(args.markdown, to_markdown(view.display, " ".join(view.notes)))
    if args.json:
        print(to_json_text(view.machine))
        return 0
    show_table(view.table())
    return 0
