"""Method cards: where a method comes from, how far our implementation departs from it, and what
has been checked here.

A researcher choosing between zsqbench and a paper's repository needs to know, per method, which
paper and which snapshot of which code the implementation was specified from, under what licence
that code is (we never copy it), every place where we deliberately do something else (defects not
copied, no test-set selection), the published numbers with their source, and what we verified
ourselves. A plugin class carries this as its ``card``; ``zsqbench plugins NAME`` prints it and
README's method table is checked against the cards by a test.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PublishedNumber(BaseModel):
    """One published top-1, as its source reports it (usually the best epoch on the test set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="teacher, e.g. 'resnet20_cifar10'")
    bits: str = Field(description="bit-width label, e.g. 'W4A4'")
    top1: float = Field(ge=0, le=100)
    source: str = Field(description="where the number is printed (paper table, README, figure)")


class MethodCard(BaseModel):
    """What a plugin's users should know about the method behind it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(description="the method's usual name, e.g. 'GDFQ'")
    paper: str = Field(description="title of the paper")
    venue: str = Field(description="venue and year, or 'preprint'")
    code: str = Field(description="the official repository (owner/name), or 'none published'")
    commit: str = Field("", description="the commit of that repository our specification was written from")
    code_license: str = Field(description="licence of the official code; we re-implement, never copy")
    spec: str = Field(description="the page that documents the implementation, e.g. 'docs/methods/gdfq.md'")
    student_recipe: str = Field(
        "", description="how the student is trained, in a few words: its loss and learning rate under the CIFAR "
        "presets (they differ by family: a short-budget row compares recipes too); '' where none applies")
    differences: tuple[str, ...] = Field(
        (), description="what our implementation deliberately does differently from the official code")
    published: tuple[PublishedNumber, ...] = ()
    verified: tuple[str, ...] = Field((), description="what has been checked here, with the numbers")

    def lines(self) -> list[str]:
        """The card as plain text lines (what `zsqbench plugins NAME` prints)."""
        out = [f"{self.method}: {self.paper} ({self.venue})",
               f"official code: {self.code}" + (f" @ {self.commit}" if self.commit else ""),
               f"licence of that code: {self.code_license} (zsqbench re-implements it; see {self.spec})"]
        if self.student_recipe:
            out.append(f"student recipe: {self.student_recipe}")
        if self.differences:
            out.append("deliberately different from the official code:")
            out.extend(f"  - {d}" for d in self.differences)
        if self.published:
            out.append("published top-1 (the papers' numbers: best epoch on the test set unless said otherwise):")
            out.extend(f"  - {p.model} {p.bits}: {p.top1:.2f} % ({p.source})" for p in self.published)
        if self.verified:
            out.append("verified here:")
            out.extend(f"  - {v}" for v in self.verified)
        return out


def method_table(entries: list[tuple[str, str, MethodCard]]) -> list[str]:
    """README's method table (Markdown rows) from (plugin name, kind, card) triples."""
    rows = ["| plugin | kind | method | student recipe (CIFAR presets) | official code (snapshot we specified from) "
            "| licence of that code |",
            "|---|---|---|---|---|---|"]
    for name, kind, card in entries:
        code = f"{card.code} @ {card.commit}" if card.commit else card.code
        rows.append(f"| `{name}` | {kind} | {card.method} | {card.student_recipe or '–'} | {code} | "
                    f"{card.code_license} |")
    return rows
