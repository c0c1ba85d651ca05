"""`zsqbench ledger [RESULTS...]`: every published number of a cell with its source, where the
literature disagrees with itself, and how our runs stand against each claim."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.cli.tables import TextTable, show_table
from zsqbench.files import write_text_atomic
from zsqbench.leaderboard.ledger import Cell, Ledger, build_ledger
from zsqbench.leaderboard.schema import to_csv_text
from zsqbench.leaderboard.table import to_markdown

DESCRIPTION = """\
One row per cell (method, model, dataset, bits, quantizer profile): every published number of it
with its source (paper, table, the method's own authors or not, metric, spread, FP teacher), and a
conflict flag where two claims differ by more than their stated spreads (1 point where none is
stated). With RESULTS (results folders or leaderboard CSVs), each of our configurations (mean ± std
over seeds, budget, machine) against each claim: the difference with its 95 % CI and a verdict
(reproduced, below, above, or not comparable: budget, profile, teacher, metric).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="published claims per cell, their conflicts, and our runs against them",
                       description=DESCRIPTION)
    p.add_argument("results", nargs="*", metavar="RESULTS",
                   help="results folders or leaderboard CSVs of your runs (none: the claims alone)")
    p.add_argument("--all", action="store_true", dest="every_cell",
                   help="with RESULTS, also list the cells they do not reproduce")
    p.add_argument("--conflicts", action="store_true", help="only cells whose claims conflict")
    p.add_argument("--force", action="store_true",
                   help="give verdicts where ours and a claim are not like for like (labelled), and set claims of "
                        "other profiles against ours too")
    p.add_argument("--csv", dest="csv_out", type=Path, metavar="FILE",
                   help="also write one row per cell and claim as CSV")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the ledger as Markdown")
    p.add_argument("--json", action="store_true", help="print the ledger as JSON instead of a table")
    p.set_defaults(execute=execute)


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+.2f}"


def _versus(cell: Cell) -> str:
    return "; ".join(
        f"vs {v.claim:.2f} ({v.source.split(' (')[0]}): {_signed(v.difference)}"
        + (f" [{_signed(v.ci_low)}, {_signed(v.ci_high)}]" if v.ci_low is not None else "") + f" {v.verdict}"
        for v in cell.versus)


def display(ledger: Ledger) -> pd.DataFrame:
    """The ledger as display strings: one row per cell (and reproduction)."""
    with_results = any(c.reproduction for c in ledger.cells)
    rows = []
    for c in ledger.cells:
        row = {"cell": c.name, "claims": "; ".join(claim.label() for claim in c.claims) or "none published",
               "conflict": c.conflict}
        if with_results:
            row["ours"] = c.reproduction.label() if c.reproduction else ""
            row["versus"] = _versus(c)
        rows.append(row)
    columns = ["cell", "claims", "conflict", *(["ours", "versus"] if with_results else [])]
    return pd.DataFrame(rows, columns=columns)


def flat_rows(ledger: Ledger) -> pd.DataFrame:
    """One row per cell and claim (and reproduction), every number in a column of its own."""
    rows: list[dict[str, Any]] = []
    for c in ledger.cells:
        rep = c.reproduction
        base = {"cell": c.name, "generator": c.generator, "loss": c.loss, "model": c.model, "dataset": c.dataset,
                "w_bits": c.w_bits, "a_bits": c.a_bits, "profile": c.profile, "method": c.method,
                "conflict": c.conflict}
        ours = {} if rep is None else {
            "ours_source": rep.source, "ours_budget": rep.budget, "ours_schedule": rep.schedule, "ours_n": rep.n,
            "ours_seeds": ";".join(str(s) for s in rep.seeds), "ours_last_mean": rep.last_mean,
            "ours_last_std": rep.last_std, "ours_oracle_mean": rep.oracle_mean, "ours_oracle_std": rep.oracle_std,
            "ours_fp_top1": rep.fp_top1, "ours_recipe": rep.recipe, "ours_machines": "; ".join(rep.machines)}
        pairs = list(zip(c.claims, c.versus)) if c.versus else [(claim, None) for claim in c.claims]
        for claim, v in pairs or [(None, None)]:
            row = dict(base)
            if claim is not None:
                row.update({"claim_value": claim.value, "claim_spread": claim.spread,
                            "claim_spread_seeds": claim.spread_seeds, "claim_metric": claim.metric,
                            "claim_fp_top1": claim.fp_top1, "claim_profile": claim.profile, "claim_paper": claim.paper,
                            "claim_tables": ", ".join(claim.tables), "claim_origin": claim.origin,
                            "claim_caveat": claim.caveat,
                            "claim_references": " ".join(claim.references)})
            row.update(ours)
            if v is not None:
                row.update({"compared_metric": v.metric, "difference": v.difference, "ci_low": v.ci_low,
                            "ci_high": v.ci_high, "test": v.test, "verdict": v.verdict,
                            "reasons": ";".join(v.reasons)})
            rows.append(row)
    return pd.DataFrame(rows)


def table(ledger: Ledger) -> TextTable:
    frame = display(ledger)
    counts = f"{len(ledger.cells)} cell(s)"
    conflicts = sum(bool(c.conflict) for c in ledger.cells)
    title = (f"ledger of published claims ({counts}, {conflicts} with conflicting claims)" if not ledger.sources else
             f"ledger: {', '.join(ledger.sources)} against the published claims ({counts})")
    return TextTable.of(frame, title, ledger.notes, names=list(frame["cell"]), named=["cell"])


def execute(args: argparse.Namespace) -> int:
    ledger = build_ledger(args.results, force=args.force, conflicts_only=args.conflicts,
                          every_cell=args.every_cell)
    if args.csv_out:
        write_text_atomic(args.csv_out, to_csv_text(flat_rows(ledger)))
    if args.markdown:
        write_text_atomic(args.markdown, to_markdown(display(ledger), " ".join(ledger.notes)))
    if args.json:
        print(json.dumps(ledger.to_dict(), indent=2))
        return 0
    show_table(table(ledger))
    return 0
