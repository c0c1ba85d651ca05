"""`zsqbench leaderboard`: show a leaderboard CSV in the terminal, or write it as Markdown."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from zsqbench.cli.console import out
from zsqbench.files import write_text_atomic
from zsqbench.results import read_leaderboard

SHOWN = ["trial_id", "model", "generator", "loss", "w_bits", "a_bits", "seed", "budget",
         "fp_top1", "ptq_top1", "top1_last", "top1_oracle", "wall_s"]


def add_parser(sub) -> None:
    p = sub.add_parser("leaderboard", help="show a leaderboard", description="Show a leaderboard CSV.")
    p.add_argument("csv", nargs="?", type=Path, default=Path("results/leaderboard.csv"),
                   help="leaderboard CSV (default results/leaderboard.csv)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    frame = read_leaderboard(args.csv)
    cols = [c for c in SHOWN if c in frame.columns]
    view = frame[cols].sort_values([c for c in ("model", "generator", "loss", "w_bits", "seed") if c in cols])
    if args.markdown:
        write_text_atomic(args.markdown, _markdown(view))
    if args.json:
        print(view.to_json(orient="records", indent=2))
        return 0
    table = Table(title=f"{args.csv} ({len(view)} trials); top1_oracle = best epoch on the test set")
    for c in cols:
        table.add_column(c)
    for row in view.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    out.print(table)
    return 0


def _markdown(frame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    note = "\n\n`top1_oracle` is the best epoch selected on the test set (an oracle); `top1_last` is the headline.\n"
    return "\n".join([header, sep, *body]) + note
