"""Figures from a results folder: accuracy vs bit-width, gain over kd, and training curves.

matplotlib is optional (``pip install "zsqbench[plot]"``) and imported only here, when a plot is
asked for. Figures are drawn on the Agg canvas directly (no pyplot, no global backend switch), so
plotting works headless and leaves the caller's matplotlib state alone. Every file is written
atomically, like the results. A figure with nothing to show is not written, and the report says
why; numbers that are not results are marked (at chance: hollow markers or hatched bars; smoke
budgets: in the title; one seed: no error bar, labelled so), never drawn bare.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.files import write_bytes_atomic
from zsqbench.leaderboard.compare import Side, load_side, within
from zsqbench.leaderboard.compare_rows import Options
from zsqbench.leaderboard.curves import curvature, gradient_norms, palette, training_curves
from zsqbench.leaderboard.labels import AT_CHANCE, chance_label, smoke_note
from zsqbench.runs.folder import TrialFolder

FORMATS = ("png", "svg")
VARIANT_COLUMNS = ("model", "quantizer", "budget")  # shown in labels only when they vary


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


class NothingToPlot(Exception):
    """A figure with nothing to show is not written (a blank figure reported as written misleads);
    the message says why, in one line."""


def _variants(frame: pd.DataFrame) -> list[str]:
    return [c for c in VARIANT_COLUMNS if frame[c].nunique() > 1]


def _suffix(row: dict[str, Any], variants: list[str]) -> str:
    return "".join(f" [{row[c]}]" for c in variants)


def _bit_positions(frame: pd.DataFrame) -> dict[tuple[int, int], int]:
    pairs = sorted({(int(w), int(a)) for w, a in zip(frame["w_bits"], frame["a_bits"])})
    return {p: i for i, p in enumerate(pairs)}


def _smoke_title(budgets: Any) -> str:
    return "\n(smoke budget: plumbing checks, not results)" if smoke_note(budgets) else ""


def _legend(ax: Any, extra: list[Any]) -> None:
    handles, _ = ax.get_legend_handles_labels()  # beside the panel, never over the data
    ax.legend(handles=[*handles, *extra], fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def accuracy_vs_bits(agg: pd.DataFrame, Figure: Any) -> Any:
    """(a) top1_last mean ± std against bit-width, one line per generator+loss, one panel per dataset.
    Points without a spread (one seed) get no error bar; points at chance are hollow."""
    from matplotlib.lines import Line2D

    datasets = sorted(agg["dataset"].unique())
    if not datasets:
        raise NothingToPlot("no finished trial in the leaderboard")
    fig = Figure(figsize=(7.5 * len(datasets), 4.2), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        sub = agg[agg["dataset"] == dataset]
        variants = _variants(sub)
        pos = _bit_positions(sub)
        chance = one_seed = False
        lines = list(sub.groupby(["generator", "loss", *variants], sort=True))
        for color, (_, line) in zip(palette(len(lines)), lines):
            line = line.sort_values(["w_bits", "a_bits"])
            first = line.iloc[0].to_dict()
            x = [pos[(int(w), int(a))] for w, a in zip(line["w_bits"], line["a_bits"])]
            ax.plot(x, line["top1_last_mean"], color=color, label=f"{first['generator']}+{first['loss']}"
                                                                   f"{_suffix(first, variants)}")
            for xi, r in zip(x, line.to_dict("records")):
                flagged = bool(chance_label(r))
                chance |= flagged
                ax.plot([xi], [r["top1_last_mean"]], marker="o", color=color,
                        markerfacecolor="none" if flagged else color)
                if pd.isna(r["top1_last_std"]):
                    one_seed = True
                else:
                    ax.errorbar([xi], [r["top1_last_mean"]], yerr=[r["top1_last_std"]], fmt="none", ecolor=color,
                                capsize=3)
        fp = sub["fp_top1"].dropna()
        if len(fp):
            ax.axhline(float(fp.mean()), color="gray", linestyle="--", linewidth=1, label="FP teacher")
        ax.set_xticks(list(pos.values()), [bits_label(w, a) for w, a in pos])
        ax.set_xlabel("bit-width")
        ax.set_ylabel("top-1 after the last epoch (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        extra = [Line2D([], [], color="gray", linestyle="none", marker="o", markerfacecolor="none",
                        label=f"hollow: {AT_CHANCE} (not a result)")] if chance else []
        if one_seed:
            extra.append(Line2D([], [], color="gray", linestyle="none", marker="o", label="no bar: n=1, no spread"))
        _legend(ax, extra)
    fig.suptitle("top1_last: mean ± sample std over seeds" + _smoke_title(agg["budget"]))
    return fig


def gains_over_kd(side: Side) -> pd.DataFrame:
    """Each non-kd loss minus kd in the same configuration, with the 95 % CI of the difference:
    paired by seed where both ran the same seeds (the comparison `zsqbench compare --by loss
    --baseline kd` prints), Welch's otherwise, none with one seed a side (``test`` empty, no CI).
    ``meaningful`` is False where a side finished at chance."""
    columns = ["model", "dataset", "generator", "quantizer", "budget", "w_bits", "a_bits", "loss", "gain",
               "ci_low", "ci_high", "test", "meaningful"]
    if "kd" not in set(side.aggregated["loss"].astype(str)):
        return pd.DataFrame(columns=columns)
    rows, _ = within(side, "loss", "kd", Options())
    return pd.DataFrame([{"model": r.model, "dataset": r.dataset, "generator": r.generator, "quantizer": r.quantizer,
                          "budget": r.budget, "w_bits": r.w_bits, "a_bits": r.a_bits, "loss": r.loss, "gain": r.delta,
                          "ci_low": r.ci_low, "ci_high": r.ci_high, "test": r.test, "meaningful": r.meaningful}
                         for r in rows if r.delta is not None and not any(f.startswith("forced:") for f in r.flags)],
                        columns=columns)  # rows that are not like-for-like (another teacher, budget) are not drawn


def _has_ci(row: dict[str, Any]) -> bool:
    return not (row["ci_low"] is None or row["ci_high"] is None or pd.isna(row["ci_low"]))


def _draw_gains(ax: Any, x: list[float], rows: list[dict[str, Any]], width: float, color: Any, label: str) -> None:
    """Bars with their CI where there is one; points (no bar, no CI) where one seed a side gives none.
    A gain with a side at chance is hatched (bar) or hollow (point)."""
    bars = [(xi, r) for xi, r in zip(x, rows) if _has_ci(r)]
    points = [(xi, r) for xi, r in zip(x, rows) if not _has_ci(r)]
    for xi, r in bars:
        ax.bar([xi], [r["gain"]], width=width, color=color, edgecolor="black" if not r["meaningful"] else color,
               hatch=None if r["meaningful"] else "//", label=label if label else None,
               yerr=[[r["gain"] - r["ci_low"]], [r["ci_high"] - r["gain"]]], capsize=3)
        label = ""
    for xi, r in points:
        ax.plot([xi], [r["gain"]], marker="D", linestyle="none", color=color,
                markerfacecolor=color if r["meaningful"] else "none", label=f"{label} (n=1, no CI)" if label else None)
        label = ""


def gain_over_kd(side: Side, Figure: Any) -> Any:
    """(b) bars of (loss − kd) per bit-width, one panel per dataset × generator."""
    from matplotlib.patches import Patch

    gains = gains_over_kd(side)
    panels = sorted({(d, g) for d, g in zip(gains["dataset"], gains["generator"])})
    if not panels:
        raise NothingToPlot("no loss other than kd shares a configuration (model, bits, budget, teacher) with a kd "
                            "row, so there is no gain over kd to draw; run the same grid with --loss kd,OTHER")
    datasets = sorted({d for d, _ in panels})
    generators = sorted({g for _, g in panels})
    fig = Figure(figsize=(6.5 * len(generators), 3.6 * len(datasets)), layout="constrained")
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
            records = sub.to_dict("records")
            series = sorted({(r["loss"], _suffix(r, variants)) for r in records})
            width = 0.8 / len(series)
            for k, ((loss, suffix), color) in enumerate(zip(series, palette(len(series)))):
                rows = [r for r in records if r["loss"] == loss and _suffix(r, variants) == suffix]
                x = [pos[(int(r["w_bits"]), int(r["a_bits"]))] - 0.4 + width * (k + 0.5) for r in rows]
                _draw_gains(ax, x, rows, width, color, f"{loss}{suffix}")
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks(list(pos.values()), [bits_label(w, a) for w, a in pos])
            ax.set_title(f"{dataset} {generator}")
            ax.set_ylabel("top-1 gain over kd (points)")
            ax.grid(axis="y", alpha=0.3)
            extra = []
            if not sub["meaningful"].all():
                extra = [Patch(facecolor="white", edgecolor="black", hatch="//",
                               label=f"hatched/hollow: a side {AT_CHANCE}, gain not meaningful")]
            _legend(ax, extra)
    tests = set(gains["test"]) - {""}
    how = ("no CI: one seed a side" if not tests else "paired by seed" if tests == {"paired"} else
           "Welch" if tests == {"welch"} else "paired by seed where the seeds match, else Welch")
    fig.suptitle(f"gain of each loss over the generator's native loss (kd): top1_last; bars: 95 % CI ({how})"
                 + _smoke_title(gains["budget"]))
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


@dataclass
class PlotReport:
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure -> why it was not written


def plot_folder(folder: Path, out_dir: Path, trials: list[str] | None = None,
                formats: list[str] | tuple[str, ...] = ("png",)) -> PlotReport:
    """Write the figures for a results folder.

    Accuracy vs bits, gain over kd and training curves when they have something to show (else
    the report says why each was not written); the curvature figure (saved Hessian analyses) and
    gradient-norm curves when their data exist."""
    Figure = require_matplotlib()
    if not folder.is_dir():
        raise UserError(f"results folder not found: {folder}; pass the --out folder of `zsqbench run`")
    side = load_side(folder)  # aggregated rows and the trials that pair the gains by seed
    chosen = select_trials(load_trial_results(folder), trials)
    builders = {
        "accuracy_vs_bits": lambda: accuracy_vs_bits(side.aggregated, Figure),
        "gain_over_kd": lambda: gain_over_kd(side, Figure),
        "training_curves": lambda: _curves(chosen, Figure),
    }
    analyses = load_analyses(folder, {str(r.get("trial_id")) for r in chosen} if trials else None)
    if analyses:
        builders["curvature"] = lambda: curvature(analyses, Figure)
    if any(e.get("grad_norm_mean") is not None for r in chosen for e in r["epochs"] if isinstance(e, dict)):
        builders["gradient_norms"] = lambda: gradient_norms(chosen, Figure)
    report = PlotReport()
    for stem, build in builders.items():
        try:
            fig = build()
        except NothingToPlot as why:
            report.skipped[stem] = str(why)
            continue
        report.written.extend(save(fig, out_dir, stem, list(formats)))
    return report


def _curves(results: list[dict[str, Any]], Figure: Any) -> Any:
    if not results:
        raise NothingToPlot("no finished trial has a result.json with its epochs in this folder")
    return training_curves(results, Figure)
