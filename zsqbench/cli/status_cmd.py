"""`zsqbench status`: what a results folder holds: done, running (with their worker), stale,
incomplete and failed trials."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from zsqbench.cli.lease_flag import add_lease_timeout, lease_timeout
from zsqbench.cli.tables import TextTable, say, show_table
from zsqbench.grid.runner import folder_summary


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="summarize a results folder",
                       description="Summarize the trials in a results folder by state: done, running (a live "
                                   "lease: its worker's host and pid, seconds since its heartbeat), stale (its "
                                   "worker stopped; the next run resumes it), incomplete, failed.")
    p.add_argument("results", nargs="?", type=Path, default=Path("results"), help="results folder (default ./results)")
    p.add_argument("--all", action="store_true", help="list every trial, not only unfinished ones")
    p.add_argument("--wide", action="store_true", help="every field of each trial (default: a compact view for 80 "
                                                       "columns; a table wider than the terminal is printed one "
                                                       "record per row)")
    p.add_argument("--json", action="store_true", help="print every trial as JSON")
    add_lease_timeout(p, "a lease without heartbeat for this long is stale")
    p.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    rows = folder_summary(args.results, lease_timeout(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    counts = Counter(r["state"] for r in rows)
    say(f"{args.results}: {len(rows)} trial(s): " + ", ".join(f"{counts[s]} {s}" for s in
        ("done", "running", "stale", "incomplete", "failed") if counts[s]))
    shown = rows if args.all else [r for r in rows if r["state"] != "done"]
    if shown:
        show_table(status_table(shown, args.wide))
        if counts["stale"]:
            say("stale: the worker stopped (killed, its machine lost); the next `zsqbench run` of the grid takes the "
                "trial over and resumes it from its checkpoint")
    return 0


def status_table(rows: list[dict], wide: bool = False) -> TextTable:
    """Compact: short id, configuration, state, epochs and what to know (worker or error); ``wide``:
    every field. Either is printed one record per row where it does not fit."""
    names = [f"{r['trial_id'][:8] if not wide else r['trial_id']} {r['generator']}+{r['loss']} {r['bits']} "
             f"seed {r['seed']} {r['budget']}" for r in rows]
    if wide:
        columns = ["run", "trial_id", "generator", "loss", "bits", "seed", "budget", "teacher", "state", "epochs",
                   "worker", "error"]
        cells = [[r["run"], r["trial_id"], r["generator"], r["loss"], r["bits"], str(r["seed"]), r["budget"],
                  r["teacher"], r["state"], f"{r['epochs_done']}/{r['epochs']}", _worker(r), r["error"]]
                 for r in rows]
        return TextTable(columns, cells, names=names, named=["trial_id", "generator", "loss", "bits", "seed", "budget"])
    columns = ["trial", "configuration", "run", "state", "epochs", "worker / error"]
    cells = [[r["trial_id"][:8], f"{r['generator']}+{r['loss']} {r['bits']} s{r['seed']} {r['budget']}", r["run"],
              r["state"], f"{r['epochs_done']}/{r['epochs']}", _worker(r) or r["error"]] for r in rows]
    return TextTable(columns, cells, names=names, named=["trial", "configuration"])


def _worker(row: dict) -> str:
    if not row["owner"]:
        return ""
    text = f"{row['owner']}, heartbeat {row['heartbeat_age_s']:.0f} s ago"
    return text + (f" (stale: {row['stale_reason']})" if row["stale_reason"] else "")
