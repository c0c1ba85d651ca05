"""`zsqbench status`: what a results folder holds: done, incomplete, failed trials."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rich.table import Table

from zsqbench.cli.console import out
from zsqbench.grid.runner import folder_summary


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="summarize a results folder",
                       description="Summarize the trials in a results folder by state.")
    p.add_argument("results", nargs="?", type=Path, default=Path("results"), help="results folder (default ./results)")
    p.add_argument("--all", action="store_true", help="list every trial, not only unfinished ones")
    p.add_argument("--json", action="store_true", help="print every trial as JSON")
    p.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    rows = folder_summary(args.results)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    counts = Counter(r["state"] for r in rows)
    out.print(f"{args.results}: {len(rows)} trial(s): " + ", ".join(f"{counts[s]} {s}" for s in
              ("done", "incomplete", "failed") if counts[s]), highlight=False)
    shown = rows if args.all else [r for r in rows if r["state"] != "done"]
    if shown:
        table = Table()
        for col in ("run", "trial_id", "generator", "loss", "bits", "seed", "budget", "teacher", "state", "epochs",
                    "error"):
            table.add_column(col, overflow="fold")
        for r in shown:
            table.add_row(r["run"], r["trial_id"], r["generator"], r["loss"], r["bits"], str(r["seed"]), r["budget"],
                          r["teacher"], r["state"], f"{r['epochs_done']}/{r['epochs']}", r["error"][:80])
        out.print(table)
    return 0
