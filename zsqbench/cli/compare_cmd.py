"""`zsqbench compare A B` and `zsqbench compare RESULTS --by loss --baseline kd`: B − A per
configuration, paired by seed where both arms ran the same seeds, with CIs, Holm-adjusted p-values
and what the seeds can detect."""

from __future__ import annotations

import argparse
import json
import math

from zsqbench.bits import bits_label
from zsqbench.cli.tables import TextTable, show_table
from zsqbench.errors import UserError
from zsqbench.leaderboard.compare import BY_FIELDS, compare, compare_within
from zsqbench.leaderboard.compare_rows import CompareRow, Comparison
from zsqbench.leaderboard.labels import PUBLISHED
from zsqbench.leaderboard.stats import MAX_SEEDS

DESCRIPTION = """\
B − A per configuration. Two sources (results folders, per-trial or aggregated CSVs, or paper:NAME
for a published table) are joined on dataset, generator, loss and bits; with --by, one source is
compared with itself: every other value of that field against --baseline, cell by cell. Arms known
trial by trial that ran the same seeds are paired by seed (paired t-test); others use Welch's test.
Each row gets a 95 % confidence interval, a Holm-adjusted p-value and the minimum effect its seeds
can detect. Rows with different quantizer profiles, budgets or teachers are refused unless --force;
published reference rows are exempt from the budget and teacher checks and labelled.
"""


def _effect(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of top-1 points such as 0.3, got '{text}'")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare two leaderboards, or values of one field inside a results folder",
        description=DESCRIPTION)
    p.add_argument("a", metavar="A", help="baseline: a results folder, a leaderboard CSV or paper:NAME (paper:akt); "
                                          "with --by, the one source")
    p.add_argument("b", metavar="B", nargs="?", help="compared with A (delta = B − A), same forms; not with --by")
    p.add_argument("--by", choices=BY_FIELDS, help="compare values of this field inside A (needs --baseline)")
    p.add_argument("--baseline", metavar="VALUE", help="the value of --by the others are compared with (e.g. kd)")
    p.add_argument("--metric", choices=("last", "oracle"), default="last",
                   help="top1_last (default, the headline) or top1_oracle (best epoch chosen on the test set, "
                        "which is what the papers report)")
    p.add_argument("--unpaired", action="store_true", help="Welch's test even where rows could be paired by seed")
    p.add_argument("--ci", choices=("t", "bootstrap"), default="t",
                   help="t interval (default) or a seeded percentile bootstrap of the mean difference")
    p.add_argument("--bootstrap-seed", type=int, default=0, metavar="N", help="seed of the bootstrap (default 0)")
    p.add_argument("--effect", type=_effect, metavar="POINTS",
                   help="also report the seeds needed to detect this difference (top-1 points) with 80 %% power")
    p.add_argument("--force", action="store_true", help="compare rows even when model, quantizer, profile, budget or teacher "
                                                         "differ (they are flagged)")
    p.add_argument("--joined-only", action="store_true",
                   help="list only rows with a delta (the counts of the others are still given)")
    p.add_argument("--wide", action="store_true",
                   help="also show each row's MDE (and seeds needed with --effect); a table wider than the "
                        "terminal is printed one record per row")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(execute=execute)


def _fmt(mean: float | None, std: float | None, n: int | None, published: bool = False) -> str:
    if mean is None:
        return "–"
    spread = f" ± {std:.2f}" if std is not None else ""
    return f"{mean:.2f}{spread} ({PUBLISHED if published else n})"


def _p(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def _ci(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]"


def _test(r: CompareRow) -> str:
    """What actually ran: a paired or Welch test, or none (a delta from one value per side)."""
    if r.test == "paired":
        return f"paired ({r.n_pairs})"
    if r.test == "welch":
        return "Welch"
    if r.delta is None:
        return ""
    if r.a_published or r.b_published:
        return f"no test ({PUBLISHED})"
    return "no test (n=1)" if min(r.a_n or 0, r.b_n or 0) < 2 else "no test (no spread)"


def _needed(n: int | None, mde: float | None) -> str:
    if n is not None:
        return str(n)
    return f">{MAX_SEEDS}" if mde is not None else ""


def _p_holm(p: float | None, adjusted: float | None, mark: str) -> str:
    if p is None:
        return ""
    if adjusted is None:  # outside Holm's family: a side at chance
        return f"{_p(p)} (–)"
    return f"{_p(p)} ({_p(adjusted)}){' ' + mark if mark else ''}"


def _budget(r: CompareRow) -> str:
    return r.budget if not r.budget_a or r.budget_a == r.budget else f"{r.budget_a} / {r.budget}"


def comparison_table(result: Comparison, wide: bool = False) -> TextTable:
    """The rows as text: configuration, budget, A, B, delta, CI, the test that ran, p (Holm), flags;
    ``wide`` adds the MDE and the seeds needed. "A/B is reference" flags are left to the notes,
    which say it once; a side at chance is flagged on its row."""
    title = (f"{result.b}: each {result.by} against {result.a.split('=', 1)[1]!r}" if result.by else
             f"A = {result.a}   B = {result.b}")
    columns = ["configuration", "budget", "A (n)", "B (n)", "delta", "95% CI", "test", "p (Holm)"]
    if wide:
        columns.append("MDE")
        if result.effect is not None:
            columns.append(f"seeds for {result.effect:g}")
    rows = []
    for r in result.rows:
        delta = "" if r.delta is None else f"{r.delta:+.2f}"
        shown = [f for f in r.flags if not f.endswith(" is reference")]
        cells = [f"{r.dataset} {r.generator}+{r.loss} {bits_label(r.w_bits, r.a_bits)}", _budget(r),
                 _fmt(r.a_mean, r.a_std, r.a_n, r.a_published), _fmt(r.b_mean, r.b_std, r.b_n, r.b_published),
                 delta, _ci(r.ci_low, r.ci_high), _test(r), _p_holm(r.p_value, r.p_holm, r.mark)]
        if wide:
            cells.append("" if r.mde is None else f"{r.mde:.2f}")
            if result.effect is not None:
                cells.append(_needed(r.seeds_needed, r.mde))
        rows.append([*cells, ", ".join([*([r.status] if r.status != "both" else []), *shown])])
    return TextTable([*columns, "flags"], rows, f"{title}   (top1_{result.metric}, delta = B − A)", result.notes,
                     names=[f"{row[0]} {row[1]}" for row in rows], named=["configuration", "budget"])


def print_comparison(result: Comparison, wide: bool = False) -> None:
    show_table(comparison_table(result, wide))


def execute(args: argparse.Namespace) -> int:
    options = {"metric": args.metric, "force": args.force, "unpaired": args.unpaired, "interval": args.ci,
               "bootstrap_seed": args.bootstrap_seed, "effect": args.effect}
    if args.by:
        if args.b is not None:
            raise UserError(f"--by compares values inside one source; drop {args.b} or drop --by")
        if not args.baseline:
            raise UserError(f"--by {args.by} needs --baseline VALUE, the {args.by} the others are compared with "
                            "(e.g. --baseline kd)")
        result = compare_within(args.a, args.by, args.baseline, **options)
    else:
        if args.b is None:
            raise UserError("compare needs two sources (A B), or one with --by FIELD --baseline VALUE")
        if args.baseline:
            raise UserError("--baseline goes with --by; drop it or add --by FIELD")
        result = compare(args.a, args.b, **options)
    if args.joined_only:
        result.rows = [r for r in result.rows if r.delta is not None]
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_comparison(result, args.wide)
    return 0
