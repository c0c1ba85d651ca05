"""`zsqbench status`: what a results folder holds: done, running (with their worker), stale,
incomplete and failed trials."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rich.table import Table

from zsqbench.cli.console import out
from zsqbench.grid.runner import folder_summary
from zsqbench.cli.lease_flag import add_lease_timeout, lease_timeout


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="summarize a results folder",
                       description="Summarize the trials in a results folder by state: done, running (a live "
                                   "lease: its worker's host and pid, seconds since its heartbeat), stale (its "
                                   "worker stopped; the next run resumes it), incomplete, failed.")
    p.add_argument("results", nargs="?", type=Path, default=Path("results"), help="results folder (default ./results)")
    p.add_argument("--all", action="store_true", help="list every trial, not only unfinished ones")
    p.add_argument("--json", action="store_true", help="print every trial as JSON")
    add_lease_timeout(p, "a lease without heartbeat for this long is stale")
    p.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    rows = folder_summary(args.results, lease_timeout(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    counts = Counter(r["state"] for r in rows)
    out.print(f"{args.results}: {len(rows)} trial(s): " + ", ".join(f"{counts[s]} {s}" for s in
              ("done", "running", "stale", "incomplete", "failed") if counts[s]), highlight=False)
    shown = rows if args.all else [r for r in rows if r["state"] != "done"]
    if shown:
        table = Table()
        for col in ("run", "trial_id", "generator", "loss", "bits", "seed", "budget", "teacher", "state", "epochs",
                    "worker", "error"):
            table.add_column(col, overflow="fold")
        for r in shown:
            table.add_row(r["run"], r["trial_id"], r["generator"], r["loss"], r["bits"], str(r["seed"]), r["budget"],
                          r["teacher"], r["state"], f"{r['epochs_done']}/{r['epochs']}", _worker(r), r["error"][:80])
        out.print(table)
        if counts["stale"]:
            out.print("stale: the worker stopped (killed, its machine lost); the next `zsqbench run` of the grid "
                      "takes the trial over and resumes it from its checkpoint", highlight=False)
    return 0


def _worker(row: dict) -> str:
    if not row["owner"]:
        return ""
    text = f"{row['owner']}, heartbeat {row['heartbeat_age_s']:.0f} s ago"
    return text + (f" (stale: {row['stale_reason']})" if row["stale_reason"] else "")
