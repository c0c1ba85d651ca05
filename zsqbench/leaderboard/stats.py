"""The statistics of a comparison: paired or Welch differences, their intervals, Holm's adjustment,
and what the observed spread lets a number of seeds detect.

Two trials with the same seed share their calibration (generator initialization, warm-up batches,
PTQ accuracy), and most of the spread over seeds comes from it. Pairing the arms by seed removes that
shared part, so a paired test is the one the design supports whenever both arms ran the same seeds;
Welch's unequal-variance test is the fallback when they did not (or only means and stds are known).
Every test, interval and distribution is scipy's; only the bookkeeping is here.

Power is that of the two-sided t-test at level ``ALPHA``: the probability that ``|T| > t_crit`` when
``T`` follows the noncentral t with the test's degrees of freedom and noncentrality effect / SE.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
#: Seeds-needed answers above this are reported as "more than" it: no grid will run that many.
MAX_SEEDS = 100_000

Test = Literal["paired", "welch"]
Interval = Literal["t", "bootstrap"]


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Difference:
    """B − A with the test that fits the design. ``n_a``/``n_b`` are the seeds per arm; ``n_pairs``
    the seeds both share (paired only). ``mde``: the smallest true difference this many seeds
    detect with probability ``POWER`` at level ``ALPHA``; ``seeds_needed``: seeds per arm for the
    requested effect (None: not asked, or more than ``MAX_SEEDS``)."""

    test: Test
    n_a: int
    n_b: int
    n_pairs: int | None
    delta: float
    se: float | None
    df: float | None
    t: float | None
    p: float | None
    ci_low: float | None
    ci_high: float | None
    interval: Interval
    mde: float | None
    seeds_needed: int | None


def power(effect: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Probability that the two-sided t-test rejects when the true difference is ``effect``."""
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) / se
    wrong_side = float(stats.nct.cdf(-crit, df, nc))  # rejecting with the wrong sign: tiny, and
    if math.isnan(wrong_side):  # scipy's series underflows to NaN once it is below ~1e-16
        wrong_side = 0.0
    return float(stats.nct.sf(crit, df, nc)) + wrong_side


def minimum_detectable_effect(se: float, df: float, alpha: float = ALPHA, target: float = POWER) -> float | None:
    """The effect at which the test reaches ``target`` power (None without a spread)."""
    if not (se > 0 and df > 0 and math.isfinite(se)):
        return None
    upper = se
    while power(upper, se, df, alpha) < target:
        upper *= 2
    return float(optimize.brentq(lambda e: power(e, se, df, alpha) - target, 0.0, upper, xtol=1e-10 * se))


def smallest_n(se_df: Callable[[int], tuple[float, float]], effect: float, alpha: float = ALPHA,
               target: float = POWER) -> int | None:
    """The smallest n ≥ 2 whose (SE, df) reaches ``target`` power for ``effect``: power grows with n,
    so double until it is reached, then bisect. None above ``MAX_SEEDS``."""
    def enough(n: int) -> bool:
        se, df = se_df(n)
        return power(abs(effect), se, df, alpha) >= target

    low, high = 1, 2
    while not enough(high):
        if high >= MAX_SEEDS:
            return None
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def _t_interval(delta: float, se: float | None, df: float | None, confidence: float) -> tuple[float | None, float | None]:
    if se is None or df is None or not df > 0:
        return None, None
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return _finite(delta - half), _finite(delta + half)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable, seed: int, confidence: float,
               paired: bool) -> tuple[float | None, float | None]:
    with warnings.catch_warnings():  # a two-seed sample is degenerate: scipy warns, the interval says so
        warnings.simplefilter("ignore")
        res = stats.bootstrap(samples, statistic, paired=paired, vectorized=True, confidence_level=confidence,
                              n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", rng=np.random.default_rng(seed))
    return _finite(res.confidence_interval.low), _finite(res.confidence_interval.high)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                      interval: Interval = "t", bootstrap_seed: int = 0, effect: float | None = None) -> Difference:
    """B − A over seeds both arms ran, ``a[i]`` and ``b[i]`` from the same seed: scipy's ``ttest_rel``."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError("a paired difference needs two equally long, non-empty sequences")
    d = y - x
    n = len(d)
    delta = float(d.mean())
    se = df = t = p = None
    low = high = None
    if n >= 2:
        sd = float(d.std(ddof=1))
        se, df = sd / math.sqrt(n), float(n - 1)
        with warnings.catch_warnings():  # identical differences: zero spread, t is infinite or undefined
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_rel(y, x)
            t, p = _finite(res.statistic), _finite(res.pvalue)
            if interval == "t":
                ci = res.confidence_interval(confidence)
                low, high = _finite(ci.low), _finite(ci.high)
        if interval == "bootstrap":
            low, high = _bootstrap((x, y), lambda u, v, axis=-1: np.mean(v - u, axis=axis), bootstrap_seed,
                                   confidence, paired=True)
    mde = minimum_detectable_effect(se, df) if se is not None and df is not None else None
    needed = None
    if effect is not None and se:
        sd = se * math.sqrt(n)
        needed = smallest_n(lambda m: (sd / math.sqrt(m), float(m - 1)), effect)
    return Difference("paired", n, n, n, delta, _finite(se), df, t, p, low, high, interval, mde, needed)


def _welch_se_df(var_a: float, n_a: int, var_b: float, n_b: int) -> tuple[float, float]:
    qa, qb = var_a / n_a, var_b / n_b
    se = math.sqrt(qa + qb)
    denom = qa ** 2 / (n_a - 1) + qb ** 2 / (n_b - 1)
    return se, ((qa + qb) ** 2 / denom) if denom > 0 else math.inf


def welch_difference(mean_a: float, std_a: float | None, n_a: int, mean_b: float, std_b: float | None, n_b: int,
                     confidence: float = CONFIDENCE, effect: float | None = None,
                     samples: tuple[Sequence[float], Sequence[float]] | None = None, interval: Interval = "t",
                     bootstrap_seed: int = 0) -> Difference:
    """B − A for independent arms from their means and sample stds (Welch–Satterthwaite degrees of
    freedom): scipy's ``ttest_ind_from_stats``. With ``samples`` the interval may be bootstrapped."""
    delta = float(mean_b - mean_a)
    se = df = t = p = None
    if n_a >= 2 and n_b >= 2 and std_a is not None and std_b is not None:
        se, df = _welch_se_df(std_a ** 2, n_a, std_b ** 2, n_b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_ind_from_stats(mean_b, std_b, n_b, mean_a, std_a, n_a, equal_var=False)
        t, p = _finite(float(res.statistic)), _finite(float(res.pvalue))
        if se == 0:
            se = df = None
    if interval == "bootstrap" and samples is not None and n_a >= 2 and n_b >= 2:
        xa, xb = (np.asarray(s, dtype=float) for s in samples)
        low, high = _bootstrap((xa, xb), lambda u, v, axis=-1: np.mean(v, axis=axis) - np.mean(u, axis=axis),
                               bootstrap_seed, confidence, paired=False)
    else:
        interval = "t"
        low, high = _t_interval(delta, se, df, confidence)
    mde = minimum_detectable_effect(se, df) if se is not None and df is not None else None
    needed = None
    if effect is not None and se is not None:
        va, vb = std_a ** 2, std_b ** 2  # type: ignore[operator]
        needed = smallest_n(lambda m: _welch_se_df(va, m, vb, m), effect)
    return Difference("welch", n_a, n_b, None, delta, _finite(se), _finite(df) if df is not None else None, t, p,
                      low, high, interval, mde, needed)


def welch_from_samples(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                       interval: Interval = "t", bootstrap_seed: int = 0, effect: float | None = None) -> Difference:
    """Welch's test on the per-seed values themselves (unrounded means and stds)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    std_a = float(xa.std(ddof=1)) if len(xa) > 1 else None
    std_b = float(xb.std(ddof=1)) if len(xb) > 1 else None
    return welch_difference(float(xa.mean()), std_a, len(xa), float(xb.mean()), std_b, len(xb), confidence, effect,
                            samples=(a, b), interval=interval, bootstrap_seed=bootstrap_seed)


def mean_ci_halfwidth(std: float | None, n: int, confidence: float = CONFIDENCE) -> float | None:
    """Half-width of the t interval of a mean over ``n`` seeds (None with one seed)."""
    if std is None or n < 2 or not math.isfinite(std):
        return None
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the p-values present (None stays None): controls the chance
    of any false claim among all rows of one comparison."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
