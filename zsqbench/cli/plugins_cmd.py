"""`zsqbench plugins`: every loaded plugin with its kind, source and description."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from zsqbench.cli.console import out
from zsqbench.api.plugins import get_plugins


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list loaded plugins", description="List every loaded plugin.")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    rows = [
        {"name": e.name, "kind": e.kind, "source": e.source, "description": e.description}
        for e in plugins.all_entries()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="zsqbench plugins")
    for col in ("name", "kind", "source", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["source"], r["description"])
    out.print(table)
    return 0
