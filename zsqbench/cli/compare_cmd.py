"""`zsqbench compare A.csv B.csv`: B − A per configuration, with seed counts and Welch's p-value."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from zsqbench.bits import bits_label
from zsqbench.cli.console import out
from zsqbench.leaderboard.compare import Comparison, compare


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare two leaderboards (B − A, Welch's t-test)",
        description="Join two leaderboards (results folders, per-trial or aggregated CSVs, or paper:NAME for a "
                    "published table, e.g. paper:akt and yours) on "
                    "dataset, generator, loss and bits, and show B − A with Welch's t-test over seeds. Rows with "
                    "different budgets or teachers are refused unless --force; published reference rows are exempt "
                    "and labelled.")
    p.add_argument("a", metavar="A", help="baseline: a results folder, a leaderboard CSV or paper:NAME (paper:akt)")
    p.add_argument("b", metavar="B", help="compared with A (delta = B − A), same forms")
    p.add_argument("--metric", choices=("last", "oracle"), default="last",
                   help="top1_last (default, the headline) or top1_oracle (best epoch chosen on the test set, "
                        "which is what the papers report)")
    p.add_argument("--force", action="store_true", help="compare rows even when model, quantizer, budget or teacher "
                                                         "differ (they are flagged)")
    p.add_argument("--joined-only", action="store_true",
                   help="list only rows found on both sides (the counts of the others are still given)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(execute=execute)


def _fmt(mean: float | None, std: float | None, n: int | None) -> str:
    if mean is None:
        return "–"
    spread = f" ± {std:.2f}" if std is not None else ""
    return f"{mean:.2f}{spread} ({n})"


def _p(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def print_comparison(result: Comparison) -> None:
    """A table; "A/B is reference" flags are left to the caption, which says it once."""
    table = Table(title=f"A = {result.a}   B = {result.b}   (top1_{result.metric}, delta = B − A)",
                  caption="\n".join(result.notes))
    for col in ("dataset", "generator", "loss", "bits"):
        table.add_column(col, no_wrap=True)
    for col in ("A (n)", "B (n)", "delta", "p", "sig", "flags"):
        table.add_column(col, overflow="fold")
    for r in result.rows:
        delta = "" if r.delta is None else f"{r.delta:+.2f}"
        shown = [f for f in r.flags if not f.endswith(" is reference")]
        flags = ", ".join([*([r.status] if r.status != "both" else []), *shown])
        table.add_row(r.dataset, r.generator, r.loss, bits_label(r.w_bits, r.a_bits), _fmt(r.a_mean, r.a_std, r.a_n),
                      _fmt(r.b_mean, r.b_std, r.b_n), delta, _p(r.p_value), r.mark, flags)
    out.print(table)


def execute(args: argparse.Namespace) -> int:
    result = compare(args.a, args.b, metric=args.metric, force=args.force)
    if args.joined_only:
        result.rows = [r for r in result.rows if r.status == "both"]
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_comparison(result)
    return 0
