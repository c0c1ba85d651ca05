"""`zsqbench plot [RESULTS_DIR]`: accuracy vs bits, gain over kd, training curves (needs matplotlib)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zsqbench.errors import UserError

DESCRIPTION = """\
Write figures from a results folder (leaderboard.csv and <run>/<trial_id>/result.json):
accuracy_vs_bits (top1_last mean ± std per generator+loss), gain_over_kd (each loss minus kd per
generator and bit-width) and training_curves (per-epoch top-1 and loss terms). A figure with nothing
to show is not written (a line on stderr says why); trials at chance are drawn hollow or hatched.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help='plot a results folder (needs pip install "zsqbench[plot]")',
        description=DESCRIPTION)
    p.add_argument("folder", nargs="?", type=Path, default=Path("results"),
                   help="results folder (default results)")
    p.add_argument("--out", type=Path, metavar="DIR", help="where to write the figures (default FOLDER/plots)")
    p.add_argument("--trials", metavar="IDS", help="training curves only for these trial ids or unique prefixes "
                                                   "(comma-separated; default all)")
    p.add_argument("--format", default="png", metavar="FMT",
                   help="png (default), svg, or both as png,svg")
    p.set_defaults(execute=execute)


def _formats(text: str) -> list[str]:
    from zsqbench.leaderboard.plots import FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {text!r}: choose from {', '.join(FORMATS)} (comma-separated for several)")
    return list(dict.fromkeys(formats))


def execute(args: argparse.Namespace) -> int:
    from zsqbench.leaderboard.plots import plot_folder  # keeps `zsqbench --help` free of plotting imports

    trials = [t.strip() for t in args.trials.split(",") if t.strip()] if args.trials else None
    out_dir = args.out or args.folder / "plots"
    report = plot_folder(args.folder, out_dir, trials=trials, formats=_formats(args.format))
    for path in report.written:
        print(path)  # stdout: only the files written, one per line, for scripts
    for stem, why in report.skipped.items():
        print(f"{stem}: not written: {why}", file=sys.stderr)
    return 0
