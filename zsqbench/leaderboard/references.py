"""Published reference tables shipped with zsqbench, addressed by name: ``paper:akt``.

They are aggregated leaderboards (``source`` = ``reference``) holding the numbers a paper reports,
with where each comes from in ``note``; ``zsqbench compare paper:akt mine.csv`` compares with them
from any folder, not only a source checkout. Every number also carries its provenance in columns of
its own (:data:`PROVENANCE`: which paper and table print it, whether the method's own authors, a
re-implementation or a quotation, the metric, the spread and seeds where stated, the quantizer
profile where known), which ``zsqbench ledger`` reads (:mod:`zsqbench.leaderboard.ledger`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from zsqbench.errors import UserError

PREFIX = "paper:"
#: name -> (file under references/, what it holds)
REFERENCES: dict[str, tuple[str, str]] = {
    "akt": ("akt-paper.csv", "AKT paper, Tables 2 and 4 (ResNet-20, CIFAR-10/100; best epoch on the test set)"),
    "published": ("published.csv", "AKT paper Table 3 (incl. TexQ, RIS) and the published ResNet-20 numbers of AIT, "
                  "Qimera, ZeroQ and IntraQ, each row with its source (best epoch on the test set)"),
    "imagenet": ("imagenet-published.csv", "published ImageNet top-1 (IMAGENET.md §6): AdaDFQ paper Table 2 "
                 "(ResNet-18/50, MobileNetV2; W3-W5) and the GDFQ, Qimera, IntraQ, ZeroQ and DSG READMEs, "
                 "each row with its FP baseline and source (best epoch on the test set)"),
    "synq": ("synq-paper.csv", "SynQ paper (ICLR 2025) Table 1: its own rows (mean ± std over 5 seeds) and the "
             "competitors as it reports them (GDFQ, ARC, Qimera, ARC+AIT, IntraQ, AdaSG, AdaDFQ, HAST, TexQ, PLF; "
             "ResNet-20 CIFAR-10/100, ResNet-18/50, MobileNetV2; W3A3 and W4A4)"),
    "hast": ("hast-paper.csv", "HAST paper (CVPR 2023), its own W3A3 results as issue 28 transcribes them "
             "(ResNet-20 CIFAR-10, ResNet-18 ImageNet; not in the stored specifications: check against the paper)"),
}

#: The provenance of each published number: the columns every shipped table holds besides the
#: aggregated leaderboard's (``profile`` is one of those too). docs/results-and-statistics.md lists them.
PROVENANCE: dict[str, str] = {
    "method": "the method as the source names it (e.g. 'HAST', 'AdaDFQ+AKT')",
    "paper": "the paper or README that prints the number",
    "table": "where in it (e.g. 'Table 2', 'Tables 2, 4', 'results figure')",
    "origin": "'own' (the method's authors), 're-implementation' (the source re-ran the method, e.g. a † mark) or "
              "'reported' (the source prints it without saying whether it re-ran or quoted it)",
    "metric": "'best-epoch' (the best epoch selected on the test set: the official codes' report), 'last' or "
              "'unknown'",
    "spread": "the ± the source states (empty when none)",
    "spread_seeds": "the number of runs the value and its ± are over, when stated",
    "profile": "the quantizer profile of the code that produced the number where known (the ZeroQ-lineage codes: "
               "zsq-asym-pc), else 'unknown'",
    "fp_top1": "the FP teacher accuracy the source gives (empty when it states none)",
}
#: Caveats a reference row's ``note`` may open with (then ": " and the source): the ledger shows them beside
#: the number, where the rest of the note only reaches the JSON and CSV.
CAVEATS = ("protocol unknown, other checkpoint",)


def note_caveat(note: object) -> str:
    """The caveat a reference row's note opens with (one of :data:`CAVEATS`), or ''."""
    text = "" if note is None else str(note)
    return next((c for c in CAVEATS if text.startswith(c)), "")


METRICS = ("best-epoch", "last", "unknown")
ORIGINS = ("own", "re-implementation", "reported")


def reference_path(name: str) -> Path:
    try:
        filename, _ = REFERENCES[name]
    except KeyError:
        known = ", ".join(PREFIX + n for n in sorted(REFERENCES))
        raise UserError(f"unknown reference table '{PREFIX}{name}'; known: {known}") from None
    return Path(str(resources.files("zsqbench.leaderboard").joinpath("references", filename)))


def resolve_source(source: str | Path) -> Path:
    """A leaderboard argument: ``paper:NAME`` for a shipped reference table, else a path."""
    text = str(source)
    return reference_path(text[len(PREFIX):]) if text.startswith(PREFIX) else Path(source)
