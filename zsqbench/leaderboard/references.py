"""Published reference tables shipped with zsqbench, addressed by name: ``paper:akt``.

They are aggregated leaderboards (``source`` = ``reference``) holding the numbers a paper reports,
with where each comes from in ``note``; ``zsqbench compare paper:akt mine.csv`` compares with them
from any folder, not only a source checkout.
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
}


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
