"""What a comparison returns: its rows and notes, and the options it ran with. Their own module so
that the comparison (:mod:`~zsqbench.leaderboard.compare`) and its notes
(:mod:`~zsqbench.leaderboard.compare_notes`) both read them without importing each other."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from zsqbench.leaderboard.stats import Interval

Metric = Literal["last", "oracle"]


@dataclass
class CompareRow:
    """One joined configuration; the key fields hold B's values. ``status``: 'both', 'only A',
    'only B' (or, within a folder, 'no baseline'). ``test``: 'paired', 'welch', or '' when no test
    ran (no delta, or one seed or published value on a side: a delta without a p-value).
    ``budget_a``: A's budget; ``a_chance``/``b_chance``: 'at chance' / 'k/n at chance' / ''."""

    dataset: str
    generator: str
    loss: str
    w_bits: int
    a_bits: int
    status: str
    model: str = ""
    quantizer: str = ""
    profile: str = ""
    budget: str = ""
    budget_a: str = ""
    baseline: str | None = None
    a_mean: float | None = None
    a_std: float | None = None
    a_n: int | None = None
    b_mean: float | None = None
    b_std: float | None = None
    b_n: int | None = None
    delta: float | None = None
    test: str = ""
    n_pairs: int | None = None
    se: float | None = None
    df: float | None = None
    t_stat: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    interval: str = ""
    mde: float | None = None
    seeds_needed: int | None = None
    mark: str = ""
    a_chance: str = ""
    b_chance: str = ""
    a_published: bool = False
    b_published: bool = False
    flags: list[str] = field(default_factory=list)

    @property
    def meaningful(self) -> bool:
        """False when a side finished at chance: its delta measures a failed run, not the method."""
        return not (self.a_chance or self.b_chance)


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    rows: list[CompareRow]
    notes: list[str]
    by: str | None = None
    effect: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "metric": self.metric, "by": self.by, "effect": self.effect,
                "rows": [{**asdict(r), "meaningful": r.meaningful} for r in self.rows], "notes": self.notes}


@dataclass(frozen=True)
class Options:
    """How to test: ``unpaired`` forces Welch; ``interval`` 't' or 'bootstrap' (seeded);
    ``effect``: the difference (points) whose seeds-needed is reported."""

    metric: Metric = "last"
    force: bool = False
    unpaired: bool = False
    interval: Interval = "t"
    bootstrap_seed: int = 0
    effect: float | None = None
