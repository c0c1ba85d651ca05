"""Every table the CLI prints, readable at the width it is printed at (80 columns included), and
plain text under a pipe.

A table is laid out as a table only when it fits whole: on a terminal as a rich table whose cells
never wrap, under a pipe (a file, a pager, a CI log) as aligned plain text without box drawing.
A table that does not fit is printed one record per row: the row's name on a line, then its
``column: value`` pairs packed into lines of the width. A cell is never split across lines (a
number cut into "72.4 / 0 ± / 0.31" cannot be read or grepped); only prose (titles, notes, long
flag lists) wraps, at spaces.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from zsqbench.cli import console as _console
from zsqbench.leaderboard.schema import plain

GAP = "  "  # between the columns of a plain table
PAIR_GAP = "   "  # between the "column: value" pairs of a record
INDENT = "  "
#: a cell that reads as a number: a leading number ended by the cell's end, a space or a unit sign ("54.61 ± 1.2",
#: "1.2x", "92 %", "3e-05"); a trial id such as "9200e365…" starts with digits but is not one
_NUMBER = re.compile(r"^[-+−]?(\d[\d,]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?(?=$|[\s%x×±*–/-])")


@dataclass
class TextTable:
    """Display strings by column. In the record layout each row is headed by its ``names`` entry
    (default: its first cell), and the ``named`` columns (default: the first), which the heading
    already says, are not repeated below it."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""
    notes: list[str] = field(default_factory=list)
    names: list[str] | None = None
    named: list[str] | None = None

    @classmethod
    def of(cls, frame: pd.DataFrame, title: str = "", notes: list[str] | None = None, **options: Any) -> "TextTable":
        rows = [["" if plain(v) is None else str(plain(v)) for v in row] for row in frame.itertuples(index=False)]
        return cls([str(c) for c in frame.columns], rows, title, [n for n in notes or [] if n], **options)

    def headings(self) -> list[str]:
        return self.names if self.names is not None else [row[0] for row in self.rows]

    def pairs(self, row: list[str]) -> list[str]:
        """The row's filled cells as "column: value", less those its heading names."""
        named = set(self.columns[:1] if self.named is None else self.named)
        return [f"{c}: {v}" for c, v in zip(self.columns, row) if v and c not in named]

    def widths(self) -> list[int]:
        return [max([cell_len(c), *(cell_len(r[i]) for r in self.rows)]) for i, c in enumerate(self.columns)]

    def numeric(self) -> list[bool]:
        """Columns of numbers are right-aligned (every filled cell starts like a number)."""
        return [bool(cells) and all(_NUMBER.match(v) for v in cells)
                for cells in ([r[i] for r in self.rows if r[i]] for i in range(len(self.columns)))]


def prose(text: str, width: int, indent: str = "") -> list[str]:
    """Text wrapped at spaces to the width (a word longer than the width, a path, is cut)."""
    return textwrap.wrap(text, width=max(width, 20), initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False) or [""]


def plain_lines(table: TextTable) -> list[str]:
    """An aligned table without box drawing; one line per row, header underlined with dashes."""
    widths, numeric = table.widths(), table.numeric()

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w - cell_len(c) + len(c)) if right else c.ljust(w - cell_len(c) + len(c))
                  for c, w, right in zip(cells, widths, numeric)]
        return GAP.join(padded).rstrip()

    return [line(table.columns), GAP.join("-" * w for w in widths), *(line(r) for r in table.rows)]


def record_lines(table: TextTable, width: int) -> list[str]:
    """One block per row: its heading, then its filled ``column: value`` pairs packed into lines."""
    lines: list[str] = []
    for name, row in zip(table.headings(), table.rows):
        lines.extend(prose(name, width))
        current = ""
        for pair in table.pairs(row):
            if current and cell_len(current) + len(PAIR_GAP) + cell_len(pair) <= width:
                current += PAIR_GAP + pair
                continue
            if current:
                lines.append(current)
            if cell_len(INDENT + pair) > width:  # only prose (a long flag list) is this long: wrap it
                lines.extend(prose(pair, width, INDENT))
                current = ""
            else:
                current = INDENT + pair
        if current:
            lines.append(current)
    return lines


def rich_table(table: TextTable) -> Table:
    """A terminal table whose cells never wrap (it is only used when it fits)."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold")
    for column, right in zip(table.columns, table.numeric()):
        grid.add_column(Text(column), no_wrap=True, overflow="ellipsis", justify="right" if right else "left")
    for row in table.rows:
        grid.add_row(*(Text(c) for c in row))
    return grid


def fits(table: TextTable, console: Console) -> bool:
    if not table.columns:
        return True
    if console.is_terminal:
        natural = console.options.update_width(1 << 16)  # measured unconstrained, then compared
        return Measurement.get(console, natural, rich_table(table)).maximum <= console.width
    return sum(table.widths()) + len(GAP) * (len(table.columns) - 1) <= console.width


def say(text: str, console: Console | None = None) -> None:
    """A line of prose on stdout, wrapped at spaces to the width; never read as rich markup."""
    console = console or _console.out
    for line in prose(text, console.width):
        console.print(Text(line), soft_wrap=True, highlight=False)


def show_table(table: TextTable, console: Console | None = None) -> None:
    """Title, the table (as a table when it fits, else one record per row), then its notes."""
    console = console or _console.out
    if table.title:
        say(table.title, console)
    if not table.rows:
        say("(no rows)", console)
    elif fits(table, console) and console.is_terminal:
        console.print(rich_table(table))
    else:
        lines = plain_lines(table) if fits(table, console) else record_lines(table, console.width)
        for line in lines:
            console.print(Text(line), soft_wrap=True, highlight=False)
    for note in table.notes:
        say(note, console)
