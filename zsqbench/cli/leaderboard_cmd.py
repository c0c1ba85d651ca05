"""`zsqbench leaderboard`: the per-trial CSV aggregated over seeds (mean ± std), per trial, or as a pivot.

One view is chosen (aggregated by default, ``--per-trial`` or ``--pivot``) and that same view is
printed and written to every requested file, so a Markdown table and the terminal never disagree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from rich.table import Table

from zsqbench.leaderboard.aggregate import as_aggregated, done_trials
from zsqbench.cli.console import out
from zsqbench.errors import UserError
from zsqbench.files import write_text_atomic
from zsqbench.leaderboard.tables import read_table, to_csv_text, to_json_text, to_markdown
from zsqbench.leaderboard.views import ORACLE_NOTE, PIVOT_NOTE, display_aggregated, pivot

PER_TRIAL_SHOWN = ["trial_id", "model", "generator", "loss", "w_bits", "a_bits", "seed", "budget",
                   "fp_top1", "ptq_top1", "top1_last", "top1_oracle", "wall_s"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard", help="show a leaderboard (mean ± std over seeds)",
        description="Aggregate a per-trial leaderboard over seeds (one row per configuration: mean ± sample std "
                    "of top1_last) and show it; or show it per trial, or in the paper's table layout.")
    p.add_argument("csv", nargs="?", type=Path, default=Path("results/leaderboard.csv"),
                   help="per-trial (or aggregated) leaderboard CSV (default results/leaderboard.csv)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--per-trial", action="store_true", help="one row per trial instead of per configuration")
    view.add_argument("--pivot", action="store_true",
                      help="paper layout: rows dataset x bits, columns generator+loss, cells 'mean ± std (n)'")
    p.add_argument("--run", metavar="NAMES", help="only trials of these runs (comma-separated)")
    p.add_argument("--csv", dest="csv_out", type=Path, metavar="FILE",
                   help="also write the view as CSV (the aggregated view is what `zsqbench compare` reads)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the view as Markdown")
    p.add_argument("--json", action="store_true", help="print the view as JSON instead of a table")
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


def build_view(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """(machine view for CSV/JSON, display view for terminal/Markdown, title, note)."""
    frame, kind = read_table(args.csv)
    frame = _select_runs(frame, kind, args.run, args.csv)
    if args.per_trial:
        if kind != "per-trial":
            raise UserError(f"{args.csv} is an aggregated leaderboard, so it has no per-trial rows; drop --per-trial")
        trials = done_trials(frame)
        cols = [c for c in PER_TRIAL_SHOWN if c in trials.columns]
        view = trials[cols].sort_values([c for c in ("model", "generator", "loss", "w_bits", "seed") if c in cols])
        return view, view, f"{args.csv} ({len(view)} trials)", ORACLE_NOTE
    agg = as_aggregated(frame, kind)
    if args.pivot:
        table = pivot(agg)
        return table, table, f"{args.csv}: top1_last by dataset x bits (columns generator+loss)", PIVOT_NOTE
    return agg, display_aggregated(agg), f"{args.csv} ({len(agg)} configurations)", ORACLE_NOTE


def execute(args: argparse.Namespace) -> int:
    machine, display, title, note = build_view(args)
    if args.csv_out:
        write_text_atomic(args.csv_out, to_csv_text(machine))
    if args.markdown:
        write_text_atomic(args.markdown, to_markdown(display, note))
    if args.json:
        print(to_json_text(machine))
        return 0
    table = Table(title=title, caption=note)
    for c in display.columns:
        table.add_column(str(c), overflow="fold")
    for row in display.itertuples(index=False):
        table.add_row(*("" if pd.isna(v) else str(v) for v in row))
    out.print(table)
    return 0
