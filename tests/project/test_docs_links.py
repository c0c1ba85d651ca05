"""The user documentation (README.md and docs/) is read on GitHub and in a checkout: every relative
link must reach a file that exists, and every #anchor a heading of that file, or the reader lands
nowhere after a section moves. The user pages must also cite only what a reader of the repository can
open (no issue numbers, no specification files kept outside it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: The pages written for users. Not docs/methods/README.md, which maps the specification sections the
#: code cited to its pages and so names those files on purpose, nor docs/ARCHITECTURE.md, the map of the code, whose
#: citations follow the code's (both change when the code's citations do).
USER_PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "ARCHITECTURE.md")]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_slug_follows_github():
    assert slug("Checking a teacher: `zsqbench teacher-eval`") == "checking-a-teacher-zsqbench-teacher-eval"
    assert slug("Budgets: presets and the methods' own schedules") == "budgets-presets-and-the-methods-own-schedules"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_cite_nothing_outside_the_repository(page):
    text = page.read_text()
    cited = re.findall(r"METHODS[\w-]*\.md|METHODS(?:-[A-Z-]+)? §|IMAGENET(?:\.md)? §|IMAGENET\.md|"
                       r"\bissue[ -]\d+|\bD\d{1,2}\b", text)
    assert not cited, f"{page.relative_to(ROOT)} cites {sorted(set(cited))}; point to docs/methods/ instead"
