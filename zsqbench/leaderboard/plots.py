"""Figures from a results folder: accuracy vs bit-width, gain over kd, and training curves.

matplotlib is optional (``pip install "zsqbench[plot]"``) and imported only here, when a plot is
asked for. Figures are drawn on the Agg canvas directly (no pyplot, no global backend switch), so
plotting works headless and leaves the caller's matplotlib state alone. Every file is written
atomically, like the results.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.files import write_bytes_atomic
from zsqbench.leaderboard.compare import Options, Side, load_side, within
from zsqbench.trial.folder import TrialFolder

FORMATS = ("png", "svg")
VARIANT_COLUMNS = ("model", "quantizer", "budget")  # shown in labels only when they vary
MAX_LEGEND = 14


def require_matplotlib() -> Any:
    """The Figure class, or a one-line error saying how to install the plotting extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError('plotting needs matplotlib, which is not installed; run pip install "zsqbench[plot]"') from None
    return Figure


# ----------------------------------------------------------------------------------------------
# Inputs


def load_trial_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Finished trials' result.json files under <folder>/<run>/<trial_id>/, by trial id."""
    found: dict[str, dict[str, Any]] = {}
    for trial in TrialFolder.find(folder):
        if trial.state != "done":
            continue
        result = trial.read_result()
        if not isinstance(result.get("epochs"), list):
            raise UserError(f"result file {trial.file(trial.RESULT)} has no 'epochs' list; delete its trial "
                            "folder and re-run")
        if result.get("status", "done") == "done":
            found[str(result.get("trial_id", trial.trial_id))] = result
    return found


def select_trials(results: dict[str, dict[str, Any]], wanted: list[str] | None) -> list[dict[str, Any]]:
    """All trials, or those named by id or unique id prefix (an unknown or ambiguous name is an error)."""
    if not wanted:
        return list(results.values())
    chosen = []
    for name in wanted:
        matches = [tid for tid in results if tid == name] or [tid for tid in results if tid.startswith(name)]
        if len(matches) != 1:
            problem = "matches no finished trial" if not matches else f"matches {len(matches)} finished trials"
            raise UserError(f"--trials: '{name}' {problem} with a result.json "
                            f"({len(results)} available); pass full trial ids from `zsqbench leaderboard --per-trial`")
        chosen.append(results[matches[0]])
    return chosen


# ----------------------------------------------------------------------------------------------
# Figures


def _empty(fig: Any, message: str) -> Any:
    """A figure that says why it is empty, so the set of written files does not depend on the data."""
    fig.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def _variants(frame: pd.DataFrame) -> list[str]:
    return [c for c in VARIANT_COLUMNS if frame[c].nunique() > 1]


def _suffix(row: dict[str, Any], variants: list[str]) -> str:
    return "".join(f" [{row[c]}]" for c in variants)


def _bit_positions(frame: pd.DataFrame) -> dict[tuple[int, int], int]:
    pairs = sorted({(int(w), int(a)) for w, a in zip(frame["w_bits"], frame["a_bits"])})
    return {p: i for i, p in enumerate(pairs)}


def accuracy_vs_bits(agg: pd.DataFrame, Figure: Any) -> Any:
    """(a) top1_last mean ± std against bit-width, one line per generator+loss, one panel per dataset."""
    datasets = sorted(agg["dataset"].unique())
    fig = Figure(figsize=(5.5 * max(1, len(datasets)), 4.2), layout="constrained")
    if not datasets:
        return _empty(fig, "no finished trials in leaderboard.csv")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        sub = agg[agg["dataset"] == dataset]
        variants = _variants(sub)
        pos = _bit_positions(sub)
        for _, line in sub.groupby(["generator", "loss", *variants], sort=True):
            line = line.sort_values(["w_bits", "a_bits"])
            first = line.iloc[0].to_dict()
            ax.errorbar([pos[(int(w), int(a))] for w, a in zip(line["w_bits"], line["a_bits"])],
                        line["top1_last_mean"], yerr=line["top1_last_std"].fillna(0.0), marker="o", capsize=3,
                        label=f"{first['generator']}+{first['loss']}{_suffix(first, variants)}")
        fp = sub["fp_top1"].dropna()
        if len(fp):
            ax.axhline(float(fp.mean()), color="gray", linestyle="--", linewidth=1, label="FP teacher")
        ax.set_xticks(list(pos.values()), [bits_label(w, a) for w, a in pos])
        ax.set_xlabel("bit-width")
        ax.set_ylabel("top-1 after the last epoch (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("top1_last: mean ± sample std over seeds")
    return fig


def gains_over_kd(side: Side) -> pd.DataFrame:
    """Each non-kd loss minus kd in the same configuration, with the 95 % CI of the difference:
    paired by seed where both ran the same seeds (the comparison `zsqbench compare --by loss
    --baseline kd` prints), Welch's otherwise."""
    columns = ["model", "dataset", "generator", "quantizer", "budget", "w_bits", "a_bits", "loss", "gain",
               "ci_low", "ci_high", "test"]
    if "kd" not in set(side.aggregated["loss"].astype(str)):
        return pd.DataFrame(columns=columns)
    rows, _ = within(side, "loss", "kd", Options())
    return pd.DataFrame([{"model": r.model, "dataset": r.dataset, "generator": r.generator, "quantizer": r.quantizer,
                          "budget": r.budget, "w_bits": r.w_bits, "a_bits": r.a_bits, "loss": r.loss, "gain": r.delta,
                          "ci_low": r.ci_low, "ci_high": r.ci_high, "test": r.test}
                         for r in rows if r.delta is not None and not any(f.startswith("forced:") for f in r.flags)],
                        columns=columns)  # rows that are not like-for-like (another teacher, budget) are not drawn


def _error_bar(row: dict[str, Any]) -> tuple[float, float]:
    if row["ci_low"] is None or row["ci_high"] is None or pd.isna(row["ci_low"]):
        return 0.0, 0.0
    return row["gain"] - row["ci_low"], row["ci_high"] - row["gain"]


def gain_over_kd(side: Side, Figure: Any) -> Any:
    """(b) bars of (loss − kd) per bit-width, one panel per dataset × generator."""
    gains = gains_over_kd(side)
    panels = sorted({(d, g) for d, g in zip(gains["dataset"], gains["generator"])})
    datasets = sorted({d for d, _ in panels})
    generators = sorted({g for _, g in panels})
    fig = Figure(figsize=(4.5 * max(1, len(generators)), 3.6 * max(1, len(datasets))), layout="constrained")
    if not panels:
        return _empty(fig, "no loss other than kd shares a configuration with a kd row: nothing to compare with kd")
    axes = fig.subplots(len(datasets), len(generators), squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, generator in enumerate(generators):
            ax = axes[i][j]
            sub = gains[(gains["dataset"] == dataset) & (gains["generator"] == generator)]
            if sub.empty:
                ax.set_axis_off()
                continue
            variants = _variants(sub)
            pos = _bit_positions(sub)
            series = sorted({(r["loss"], _suffix(r, variants)) for r in sub.to_dict("records")})
            width = 0.8 / len(series)
            for k, (loss, suffix) in enumerate(series):
                bars = [r for r in sub.to_dict("records") if r["loss"] == loss and _suffix(r, variants) == suffix]
                x = [pos[(int(r["w_bits"]), int(r["a_bits"]))] - 0.4 + width * (k + 0.5) for r in bars]
                err = [_error_bar(r) for r in bars]
                ax.bar(x, [r["gain"] for r in bars], width=width, yerr=[[e[0] for e in err], [e[1] for e in err]],
                       capsize=3, label=f"{loss}{suffix}")
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks(list(pos.values()), [bits_label(w, a) for w, a in pos])
            ax.set_title(f"{dataset} {generator}")
            ax.set_ylabel("top-1 gain over kd (points)")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7)
    tests = set(gains["test"])
    how = ("paired by seed" if tests == {"paired"} else "Welch" if tests == {"welch"}
           else "paired by seed where the seeds match, else Welch")
    fig.suptitle(f"gain of each loss over the generator's native loss (kd): top1_last; bars: 95 % CI ({how})")
    return fig


def _trial_label(result: dict[str, Any]) -> str:
    spec = result.get("spec") or {}
    tid = str(result.get("trial_id", "?"))[:8]
    try:
        return (f"{spec['generator']['name']}+{spec['loss']['name']} {bits_label(spec['w_bits'], spec['a_bits'])} "
                f"s{spec['seed']} ({tid})")
    except (KeyError, TypeError):
        return tid


def training_curves(results: list[dict[str, Any]], Figure: Any) -> Any:
    """(c) per-epoch student top-1 and each loss term, one line per trial (warm-up epochs have no loss)."""
    from matplotlib.ticker import MaxNLocator

    terms = sorted({t for r in results for e in r["epochs"] if isinstance(e, dict) for t in (e.get("losses") or {})},
                   key=lambda t: (t != "total", t))
    n = 1 + len(terms)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.6 * nrows), layout="constrained")
    if not results:
        return _empty(fig, "no finished trial has a result.json in this folder")
    axes = [ax for row in fig.subplots(nrows, ncols, squeeze=False) for ax in row]
    for ax in axes[n:]:
        ax.set_axis_off()
    for idx, result in enumerate(results):
        color = f"C{idx % 10}"
        label = _trial_label(result)
        # result.json counts epochs from 0; the figure counts from 1, as the progress messages do.
        epochs = [(e.get("epoch", i) + 1, e) for i, e in enumerate(result["epochs"]) if isinstance(e, dict)]
        acc = [(ep, e["top1"]) for ep, e in epochs if e.get("top1") is not None]
        if acc:
            axes[0].plot(*zip(*acc), marker=".", color=color, label=label)
        for ax, term in zip(axes[1:], terms):
            pts = [(ep, e["losses"][term]) for ep, e in epochs if term in (e.get("losses") or {})]
            if pts:
                ax.plot(*zip(*pts), marker=".", color=color, label=label)
    axes[0].set_title("student top-1 (%) per epoch")
    for ax, term in zip(axes[1:], terms):
        ax.set_title(f"loss term '{term}' (epoch mean)")
    for ax in axes[:n]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if len(results) <= MAX_LEGEND:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"training curves of {len(results)} trial(s)"
                 + ("" if len(results) <= MAX_LEGEND else " (too many for a legend; pick some with --trials)"))
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
    """Mean and max global student gradient norm per training epoch, log scale."""
    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    mean_ax, max_ax = fig.subplots(1, 2)
    for idx, result in enumerate(results):
        pts = [(e.get("epoch", i) + 1, e.get("grad_norm_mean"), e.get("grad_norm_max"))
               for i, e in enumerate(result["epochs"]) if isinstance(e, dict) and e.get("grad_norm_mean") is not None]
        if not pts:
            continue
        xs, means, maxes = zip(*pts)
        label = _trial_label(result)
        mean_ax.plot(xs, means, marker=".", color=f"C{idx % 10}", label=label)
        max_ax.plot(xs, maxes, marker=".", color=f"C{idx % 10}", label=label)
    for ax, title in ((mean_ax, "mean global gradient norm"), (max_ax, "max global gradient norm")):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if len(results) <= MAX_LEGEND:
        mean_ax.legend(fontsize=7)
    return fig


def load_analyses(folder: Path, trial_ids: set[str] | None) -> list[dict[str, Any]]:
    analyses = []
    for trial in TrialFolder.find(folder):
        a = trial.read_analysis("hessian")
        if a and a.get("epochs") and (trial_ids is None or a.get("trial_id") in trial_ids):
            analyses.append(a)
    return analyses


# ----------------------------------------------------------------------------------------------
# Writing


def save(fig: Any, out_dir: Path, stem: str, formats: list[str]) -> list[Path]:
    """Render to memory, then write each file atomically (a reader never sees half a PNG)."""
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else None  # reproducible SVGs
        fig.savefig(buf, format=fmt, dpi=150, metadata=metadata)
        path = out_dir / f"{stem}.{fmt}"
        write_bytes_atomic(path, buf.getvalue())
        paths.append(path)
    return paths


def plot_folder(folder: Path, out_dir: Path, trials: list[str] | None = None,
                formats: list[str] | tuple[str, ...] = ("png",)) -> list[Path]:
    """Write the figures for a results folder; returns the written paths.

    Always: accuracy vs bits, gain over kd, training curves. When the data exist: the
    curvature figure (saved Hessian analyses) and gradient-norm curves."""
    Figure = require_matplotlib()
    if not folder.is_dir():
        raise UserError(f"results folder not found: {folder}; pass the --out folder of `zsqbench run`")
    side = load_side(folder)  # aggregated rows and the trials that pair the gains by seed
    agg = side.aggregated
    chosen = select_trials(load_trial_results(folder), trials)
    figures = {
        "accuracy_vs_bits": accuracy_vs_bits(agg, Figure),
        "gain_over_kd": gain_over_kd(side, Figure),
        "training_curves": training_curves(chosen, Figure),
    }
    analyses = load_analyses(folder, {str(r.get("trial_id")) for r in chosen} if trials else None)
    if analyses:
        figures["curvature"] = curvature(analyses, Figure)
    if any(e.get("grad_norm_mean") is not None for r in chosen for e in r["epochs"] if isinstance(e, dict)):
        figures["gradient_norms"] = gradient_norms(chosen, Figure)
    written: list[Path] = []
    for stem, fig in figures.items():
        written.extend(save(fig, out_dir, stem, list(formats)))
    return written
