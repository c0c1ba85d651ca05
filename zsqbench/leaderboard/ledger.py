"""The ledger: every published number of a cell (method, model, dataset, bits, quantizer profile) with
its provenance, where the literature disagrees with itself, and how our own runs stand against each
claim (``zsqbench ledger``).

A claim is one published number (:mod:`~zsqbench.leaderboard.references`: paper, table, origin,
metric, spread, FP teacher, profile). Claims of a cell *conflict* when two differ by more than their
stated spreads together, or by more than :data:`CONFLICT_POINTS` where neither states one. A
reproduction is our trials of the cell under one budget and teacher (mean ± std over seeds). Against
each claim it gets the difference (ours − claim) with a 95 % t interval — Welch's when the claim
states a spread over several runs, else the interval of our mean — and a verdict: ``reproduced``
(the interval contains 0), ``below``, ``above``, ``no CI (n=1)``, or ``not comparable (REASON)``
when the two are not like for like: budget (ours is not the paper's schedule), profile, teacher (FP
accuracies more than :data:`TEACHER_TOLERANCE` apart, or none stated) or metric (the claim's
selection is unknown). The difference uses our metric that matches the claim's: the best epoch on
the test set (``top1_oracle``) for a best-epoch claim, ``top1_last`` otherwise.

Torch-free, like the leaderboard: it reads result files through :mod:`zsqbench.runs.result_file`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsqbench.bits import bits_label
from zsqbench.leaderboard.ledger_sources import Reproduction, read_reproductions
from zsqbench.leaderboard.references import REFERENCES, note_caveat, reference_path
from zsqbench.leaderboard.schema import plain
from zsqbench.leaderboard.stats import mean_ci_halfwidth, welch_difference
from zsqbench.leaderboard.table import read_table

#: Two claims without a stated spread conflict when they differ by more than this (top-1 points).
CONFLICT_POINTS = 1.0
#: FP accuracies further apart than this are different teachers (points; printed to two decimals).
TEACHER_TOLERANCE = 0.1
UNKNOWN = "unknown"
#: The order in which reasons are named: the first is the verdict's, all are in the JSON and CSV.
REASONS = ("budget", "profile", "teacher", "metric")


@dataclass
class Claim:
    """One published number and where it comes from (several tables of one paper: one claim)."""

    value: float
    spread: float | None
    spread_seeds: int | None
    metric: str
    fp_top1: float | None
    profile: str
    budget: str
    method: str
    paper: str
    tables: list[str]
    origin: str
    references: list[str]
    note: str

    @property
    def caveat(self) -> str:
        """The caveat the note opens with (:data:`~zsqbench.leaderboard.references.CAVEATS`), or ''."""
        return note_caveat(self.note)

    @property
    def source(self) -> str:
        tables = self.tables
        numbers = [n.strip() for t in tables for n in re.sub(r"^Tables? ", "", t).split(",")]
        if len(numbers) > 1 and all(re.match(r"Tables? ", t) for t in tables) and all(n.isdigit() for n in numbers):
            tables = ["Tables " + ", ".join(sorted(set(numbers), key=int))]
        return " ".join([self.paper, *tables, f"({self.origin})"])

    def label(self) -> str:
        spread = f" ± {self.spread:.2f}" if self.spread is not None else ""
        seeds = f" over {self.spread_seeds}" if self.spread_seeds else ""
        extra = [f"FP {self.fp_top1:.2f}" if self.fp_top1 is not None else "FP not stated"]
        if self.metric != "best-epoch":
            extra.append(f"metric {self.metric}")
        if self.caveat:
            extra.append(self.caveat)
        return f"{self.value:.2f}{spread}{seeds} {self.source}, {', '.join(extra)}"


@dataclass
class Versus:
    """A reproduction against one claim."""

    claim: float
    source: str
    metric: str
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    test: str
    verdict: str
    reasons: list[str] = field(default_factory=list)


@dataclass
class Cell:
    generator: str
    loss: str
    model: str
    dataset: str
    w_bits: int
    a_bits: int
    profile: str
    method: str
    claims: list[Claim]
    conflict: str = ""
    reproduction: Reproduction | None = None
    versus: list[Versus] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.model} {self.generator}+{self.loss} {bits_label(self.w_bits, self.a_bits)} {self.profile}"


@dataclass
class Ledger:
    cells: list[Cell]
    notes: list[str]
    sources: list[str]

    def to_dict(self) -> dict[str, Any]:
        cells = []
        for c in self.cells:
            cell = {**asdict(c), "name": c.name}
            for shown, claim in zip(cell["claims"], c.claims):
                shown["caveat"] = claim.caveat
            cells.append(cell)
        return {"sources": self.sources, "notes": self.notes, "cells": cells}


def model_key(model: str, dataset: str) -> str:
    """The published tables name ImageNet teachers as the papers do ('resnet18'); trials by the
    plugin's name ('resnet18_imagenet'). One spelling for both: the plugin's."""
    return f"{model}_imagenet" if dataset == "imagenet" and not model.endswith("_imagenet") else model


def _number(value: Any) -> float | None:
    value = plain(value)
    return None if value is None or (isinstance(value, str) and not value.strip()) else float(value)


def _text(value: Any, default: str = "") -> str:
    value = plain(value)
    return default if value is None else str(value)


def load_claims() -> list[tuple[tuple, Claim]]:
    """Every number of every shipped reference table as (cell key, claim); the same number of one
    paper in two tables (AKT's Tables 2 and 3) is one claim naming both."""
    merged: dict[tuple, tuple[tuple, Claim]] = {}
    for name in REFERENCES:
        frame, _ = read_table(reference_path(name))
        for r in frame.to_dict("records"):
            key = (r["generator"], r["loss"], model_key(r["model"], r["dataset"]), r["dataset"], int(r["w_bits"]),
                   int(r["a_bits"]))
            value = float(r["top1_last_mean"])
            seeds = _number(r.get("spread_seeds"))
            claim = Claim(value, _number(r.get("spread")), None if seeds is None else int(seeds),
                          _text(r.get("metric"), UNKNOWN), _number(r.get("fp_top1")), _text(r.get("profile"), UNKNOWN),
                          _text(r.get("budget"), "paper"), _text(r.get("method"), f"{r['generator']}+{r['loss']}"),
                          _text(r.get("paper"), f"paper:{name}"), [t for t in [_text(r.get("table"))] if t],
                          _text(r.get("origin"), "reported"), [f"paper:{name}"], _text(r.get("note")))
            same = (key, claim.paper, claim.origin, round(value, 2), claim.budget)
            if same in merged:
                known = merged[same][1]
                known.tables += [t for t in claim.tables if t not in known.tables]
                known.references += [n for n in claim.references if n not in known.references]
            else:
                merged[same] = (key, claim)
    return list(merged.values())


def conflict_of(claims: list[Claim]) -> str:
    """The widest disagreement between two claims beyond their stated spreads (or 1 point), or ''."""
    worst: tuple[float, str] | None = None
    for i, a in enumerate(claims):
        for b in claims[i + 1:]:
            spreads = [s for s in (a.spread, b.spread) if s is not None]
            allowed = sum(spreads) if spreads else CONFLICT_POINTS
            gap = abs(a.value - b.value)
            if gap > allowed + 1e-9 and (worst is None or gap > worst[0]):
                low, high = sorted((a, b), key=lambda c: c.value)
                why = "their stated spreads" if spreads else f"{CONFLICT_POINTS:g} point"
                worst = (gap, f"{high.value:.2f} ({high.paper}) vs {low.value:.2f} ({low.paper}): {gap:.2f} apart, "
                              f"more than {why}")
    return "" if worst is None else worst[1]


def _budget_matches(rep: Reproduction, claim: Claim) -> bool:
    if rep.paper_schedule is not None:
        return rep.paper_schedule and rep.budget.split("-")[-1] == claim.budget
    return rep.budget in (claim.budget, f"in1k-{claim.budget}")


def _reasons(rep: Reproduction, claim: Claim) -> list[str]:
    found = {"budget": not _budget_matches(rep, claim),
             "profile": claim.profile != rep.profile,
             "teacher": claim.fp_top1 is None or rep.fp_top1 is None
             or abs(claim.fp_top1 - rep.fp_top1) > TEACHER_TOLERANCE + 1e-9,
             "metric": claim.metric not in ("best-epoch", "last")}
    return [r for r in REASONS if found[r]]


def versus(rep: Reproduction, claim: Claim, force: bool = False) -> Versus:
    """Ours − the claim with its 95 % interval and the verdict."""
    oracle = claim.metric == "best-epoch"
    values = rep.oracle_values if oracle else rep.last_values
    mean, std = (rep.oracle_mean, rep.oracle_std) if oracle else (rep.last_mean, rep.last_std)
    if values:
        mean, std = float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)
    n = len(values) if values else rep.n
    diff = mean - claim.value
    low = high = None
    test = ""
    if claim.spread is not None and (claim.spread_seeds or 0) >= 2 and n >= 2 and std is not None:
        d = welch_difference(claim.value, claim.spread, claim.spread_seeds, mean, std, n)
        low, high, test = d.ci_low, d.ci_high, "Welch"
    elif n >= 2 and std is not None:
        half = mean_ci_halfwidth(std, n)
        if half is not None:
            low, high, test = diff - half, diff + half, "t (ours)"
    reasons = _reasons(rep, claim)
    if reasons and not force:
        verdict = f"not comparable ({reasons[0]})"
    elif low is None or high is None:
        verdict = "no CI (n=1)" if n < 2 else "no CI"
    else:
        verdict = "reproduced" if low <= 0 <= high else ("below" if high < 0 else "above")
        if reasons:
            verdict += f" (forced: {', '.join(reasons)} differ)"
    return Versus(claim.value, claim.source, "top1_oracle" if oracle else "top1_last", round(diff, 4),
                  None if low is None else round(low, 4), None if high is None else round(high, 4), test, verdict,
                  reasons)


def build_ledger(sources: list[str | Path] | None = None, force: bool = False, conflicts_only: bool = False,
                 every_cell: bool = False) -> Ledger:
    """The ledger of the shipped claims, with the reproductions of ``sources`` (results folders or
    leaderboard CSVs). With sources, only the cells they reproduce are listed unless ``every_cell``;
    ``force`` pairs a reproduction with the claims of other profiles too and gives verdicts where
    the two are not like for like (labelled)."""
    claims = load_claims()
    reproductions = [rep for source in sources or [] for rep in read_reproductions(source)]
    groups: dict[tuple, dict[str, Any]] = {}
    for key, claim in claims:
        groups.setdefault(key, {"claims": [], "reps": []})["claims"].append(claim)
    for rep in reproductions:
        key = (rep.generator, rep.loss, model_key(rep.model, rep.dataset), rep.dataset, rep.w_bits, rep.a_bits)
        groups.setdefault(key, {"claims": [], "reps": []})["reps"].append(rep)
    cells: list[Cell] = []
    for key in sorted(groups, key=lambda k: (k[3], k[2], k[0], k[1], k[4], k[5])):
        group = groups[key]
        known = sorted({c.profile for c in group["claims"] if c.profile != UNKNOWN})
        for profile in sorted(set(known) | {r.profile for r in group["reps"]}) or [UNKNOWN]:
            shown = [c for c in group["claims"] if force or c.profile in (profile, UNKNOWN)]
            method = next((c.method for c in shown if c.origin == "own"), shown[0].method if shown else
                          f"{key[0]}+{key[1]}")
            base = dict(generator=key[0], loss=key[1], model=key[2], dataset=key[3], w_bits=key[4], a_bits=key[5],
                        profile=profile, method=method, claims=shown, conflict=conflict_of(shown))
            reps = [r for r in group["reps"] if r.profile == profile]
            if not reps and (every_cell or not sources) and any(c.profile in (profile, UNKNOWN) for c in shown):
                cells.append(Cell(**base))
            for rep in reps:
                cells.append(Cell(**base, reproduction=rep, versus=[versus(rep, c, force) for c in shown]))
    if conflicts_only:
        cells = [c for c in cells if c.conflict]
    return Ledger(cells, _notes(cells, bool(sources)), [str(s) for s in sources or []])


def _notes(cells: list[Cell], with_results: bool) -> list[str]:
    notes = [f"Claims: published top-1 with their source (origin: own = the method's authors, re-implementation = "
             f"the source re-ran it, reported = printed without saying); FP = the teacher's accuracy the source "
             f"gives. A conflict: two claims of one cell further apart than their stated spreads (or "
             f"{CONFLICT_POINTS:g} point when none is stated)."]
    if with_results:
        notes.append("Ours: mean ± sample std over seeds of top1_oracle against a best-epoch claim (the same "
                     "selection on the test set the papers used), of top1_last otherwise; difference = ours − "
                     "claim with its 95 % t interval (Welch's when the claim states a spread over runs). "
                     "reproduced: the interval contains 0. not comparable: the budget is not the paper's schedule, "
                     f"the profile or the teacher (FP more than {TEACHER_TOLERANCE:g} apart) differs, or the claim's "
                     "metric is unknown; the first reason is named, --json lists all.")
    if not cells:
        notes.append("no cell to show" + (": the results reproduce no published cell (the ledger lists only the "
                                          "cells of its results; --all shows every claim)" if with_results else ""))
    return notes

