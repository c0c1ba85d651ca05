"""`zsqbench plugins [NAME]`: every loaded plugin with its kind, source and description; with a
name, that plugin's options and its method card."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.markup import escape

from zsqbench.api.plugins import get_plugins
from zsqbench.api.registry import Entry
from zsqbench.cli.console import out
from zsqbench.cli.tables import TextTable, show_table
from zsqbench.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list loaded plugins, or show one with its options and method card",
                       description="List every loaded plugin; with NAME, show that plugin's options and its method "
                                   "card (paper, official code and licence, what we do differently, published "
                                   "numbers, what was verified here).")
    p.add_argument("name", nargs="?", help="a plugin name, e.g. gdfq or akt")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    if args.name:
        return _show(args.name, list(plugins.all_entries()), args.json)
    rows = [
        {"name": e.name, "kind": e.kind, "source": e.source, "description": e.description}
        for e in plugins.all_entries()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cells = [[r["name"], r["kind"], r["source"], r["description"]] for r in rows]
    show_table(TextTable(["name", "kind", "source", "description"], cells, "zsqbench plugins",
                         names=[f"{r['name']} ({r['kind']}, {r['source']})" for r in rows],
                         named=["name", "kind", "source"]))
    return 0


def options_of(obj: Any) -> list[dict[str, Any]]:
    """A plugin class's options: name, default and meaning (empty for instances and option-less plugins)."""
    options = getattr(obj, "Options", None) if isinstance(obj, type) else None
    if options is None:
        return []
    return [{"name": name, "default": field.get_default(call_default_factory=True), "description": field.description or ""}
            for name, field in options.model_fields.items()]


def _show(name: str, entries: list[Entry[Any]], as_json: bool) -> int:
    found = [e for e in entries if e.name == name]
    if not found:
        known = ", ".join(sorted({e.name for e in entries}))
        raise UserError(f"no plugin named '{name}'; known: {known}")
    shown = []
    for entry in found:
        card = getattr(entry.obj, "card", None)
        shown.append({"name": entry.name, "kind": entry.kind, "source": entry.source,
                      "description": entry.description, "options": options_of(entry.obj),
                      "card": card.model_dump(mode="json") if card is not None else None})
    if as_json:
        print(json.dumps(shown if len(shown) > 1 else shown[0], indent=2, default=str))
        return 0
    for entry, item in zip(found, shown):
        out.print(f"[bold]{escape(entry.name)}[/bold] {escape(f'({entry.kind}, from {entry.source})')}",
                  highlight=False)
        out.print(entry.description, highlight=False, markup=False)
        if item["options"]:
            out.print("options (set with -o NAME.OPTION=VALUE):", highlight=False)
            for opt in item["options"]:
                out.print(f"  {opt['name']} = {opt['default']!r}  {opt['description']}", highlight=False,
                          markup=False)
        card = getattr(entry.obj, "card", None)
        if card is None:
            out.print("no method card", highlight=False)
        else:
            for line in card.lines():
                out.print(line, highlight=False, markup=False)
    return 0
