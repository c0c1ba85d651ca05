"""Per-epoch figures of trials: training curves, curvature, gradient norms (matplotlib, optional).

A grid has many trials (16 is a small one), so a colour per trial would repeat and a legend per
trial would be unreadable. Each trial's style is factored instead: colour = generator+loss,
line style = bit-width, marker = seed, and the legend lists those factors (a few entries
however many trials). A trial that finished at chance has hollow markers.

Loss terms of different methods differ in sign and by orders of magnitude (AKT's logit term at
−917 beside KD terms near 1), which a linear axis flattens to two lines. Each term has its own
panel, and a panel whose values cross zero or span more than a decade is drawn on a symmetric
log scale (linear within the smallest magnitude, logarithmic beyond), so every curve's shape
stays visible and its sign readable.
"""

from __future__ import annotations

import math
from typing import Any

from zsqbench.bits import bits_label
from zsqbench.leaderboard.labels import AT_CHANCE, at_chance

MAX_LEGEND = 14
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 1, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _spec(result: dict[str, Any]) -> dict[str, Any]:
    return result.get("spec") or {}


def _method(result: dict[str, Any]) -> str:
    spec = _spec(result)
    try:
        return f"{spec['generator']['name']}+{spec['loss']['name']}"
    except (KeyError, TypeError):
        return "?"


def _bits(result: dict[str, Any]) -> str:
    spec = _spec(result)
    return bits_label(spec["w_bits"], spec["a_bits"]) if "w_bits" in spec and "a_bits" in spec else "?"


def trial_at_chance(result: dict[str, Any]) -> bool:
    return bool(at_chance(result.get("top1_last"), _spec(result).get("dataset")))


def palette(n: int) -> list[Any]:
    """n distinct colours: the default cycle up to 10, tab20 up to 20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


class TrialStyles:
    """Colour by generator+loss, line style by bit-width, marker by seed; hollow at chance."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        self.methods = sorted({_method(r) for r in results})
        self.bits = sorted({_bits(r) for r in results})
        self.seeds = sorted({str(_spec(r).get("seed", "?")) for r in results})
        self.colors = dict(zip(self.methods, palette(len(self.methods))))
        self.any_chance = any(trial_at_chance(r) for r in results)

    def of(self, result: dict[str, Any]) -> dict[str, Any]:
        color = self.colors[_method(result)]
        seed = str(_spec(result).get("seed", "?"))
        return {"color": color, "linestyle": LINESTYLES[self.bits.index(_bits(result)) % len(LINESTYLES)],
                "marker": MARKERS[self.seeds.index(seed) % len(MARKERS)], "markersize": 4,
                "markerfacecolor": "none" if trial_at_chance(result) else color}

    def handles(self) -> list[Any]:
        """Legend entries for the factors (methods, then bit-widths and seeds when there are several)."""
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, label=m) for m, c in self.colors.items()]
        if len(self.bits) > 1:
            handles += [Line2D([], [], color="gray", linestyle=LINESTYLES[i % len(LINESTYLES)], label=b)
                        for i, b in enumerate(self.bits)]
        if len(self.seeds) > 1:
            handles += [Line2D([], [], color="gray", linestyle="none", marker=MARKERS[i % len(MARKERS)],
                               label=f"seed {s}") for i, s in enumerate(self.seeds)]
        if self.any_chance:
            handles.append(Line2D([], [], color="gray", linestyle="none", marker="o", markerfacecolor="none",
                                  label=f"hollow: {AT_CHANCE} (not a result)"))
        return handles


def symlog_threshold(values: list[float]) -> float | None:
    """The linear range of a symmetric log axis for these values, or None when a linear axis shows
    them well (one sign, within a decade)."""
    finite = [v for v in values if math.isfinite(v)]
    magnitudes = [abs(v) for v in finite if v != 0]
    if not magnitudes:
        return None
    crosses = min(finite) < 0 < max(finite)
    if not crosses and max(magnitudes) <= 10 * min(magnitudes):
        return None
    return 10.0 ** math.floor(math.log10(min(magnitudes)))


def _epochs(result: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    # result.json counts epochs from 0; the figures count from 1, as the progress messages do.
    return [(e.get("epoch", i) + 1, e) for i, e in enumerate(result["epochs"]) if isinstance(e, dict)]


def training_curves(results: list[dict[str, Any]], Figure: Any) -> Any:
    """(c) per-epoch student top-1 and each loss term (one panel each), one line per trial."""
    from matplotlib.ticker import MaxNLocator

    terms = sorted({t for r in results for _, e in _epochs(r) for t in (e.get("losses") or {})},
                   key=lambda t: (t != "total", t))
    n = 1 + len(terms)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.8 * ncols + 2.2, 3.6 * nrows), layout="constrained")
    axes = [ax for row in fig.subplots(nrows, ncols, squeeze=False) for ax in row]
    for ax in axes[n:]:
        ax.set_axis_off()
    styles = TrialStyles(results)
    drawn: dict[str, list[float]] = {t: [] for t in terms}
    for result in results:
        style = styles.of(result)
        epochs = _epochs(result)
        acc = [(ep, e["top1"]) for ep, e in epochs if e.get("top1") is not None]
        if acc:
            axes[0].plot(*zip(*acc), **style)
        for ax, term in zip(axes[1:], terms):
            pts = [(ep, e["losses"][term]) for ep, e in epochs if term in (e.get("losses") or {})]
            if pts:
                ax.plot(*zip(*pts), **style)
                drawn[term].extend(v for _, v in pts)
    axes[0].set_title("student top-1 (%) per epoch")
    for ax, term in zip(axes[1:], terms):
        threshold = symlog_threshold(drawn[term])
        if threshold is not None:
            ax.set_yscale("symlog", linthresh=threshold)
        ax.set_title(f"loss term '{term}' (epoch mean)" + (f", symlog (linear within ±{threshold:g})"
                                                             if threshold is not None else ""), fontsize=9)
    last = max((ep for r in results for ep, _ in _epochs(r)), default=1)
    for ax in axes[:n]:
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last + 0.5)  # the same epochs on every panel (warm-up epochs have no loss)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(handles=styles.handles(), loc="outside right upper", fontsize=7)
    fig.suptitle(f"training curves of {len(results)} trial(s): colour = generator+loss, line = bit-width, "
                 "marker = seed")
    return fig


def curvature(analyses: list[dict[str, Any]], Figure: Any) -> Any:
    """Hessian trace vs epoch, one line per trial with standard-error bars (the AKT paper's
    Figure 3 layout when the trials are spatial / channel / akt at one bit-width)."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for idx, a in enumerate(analyses):
        s = a["spec"]
        pts = sorted((int(e) + 1, v["trace"], v["stderr"]) for e, v in a["epochs"].items())
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=f"C{idx % 10}",
                    label=f"{s['generator']}+{s['loss']} {bits_label(s['w_bits'], s['a_bits'])} s{s['seed']} "
                          f"({a['trial_id'][:8]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("tr(H) of the student loss")
    ax.set_title("curvature (Hutchinson, fixed batch; lower = flatter)")
    ax.grid(alpha=0.3)
    if len(analyses) <= MAX_LEGEND:
        ax.legend(fontsize=7)
    return fig


def gradient_norms(results: list[dict[str, Any]], Figure: Any) -> Any:
    """Mean and max global student gradient norm per training epoch, log scale, styled as the
    training curves."""
    fig = Figure(figsize=(11.8, 3.8), layout="constrained")
    mean_ax, max_ax = fig.subplots(1, 2)
    styles = TrialStyles(results)
    for result in results:
        pts = [(ep, e.get("grad_norm_mean"), e.get("grad_norm_max"))
               for ep, e in _epochs(result) if e.get("grad_norm_mean") is not None]
        if not pts:
            continue
        xs, means, maxes = zip(*pts)
        style = styles.of(result)
        mean_ax.plot(xs, means, **style)
        max_ax.plot(xs, maxes, **style)
    for ax, title in ((mean_ax, "mean global gradient norm"), (max_ax, "max global gradient norm")):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.legend(handles=styles.handles(), loc="outside right upper", fontsize=7)
    return fig
