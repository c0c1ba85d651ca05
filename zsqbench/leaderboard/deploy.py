"""The ``deploy`` view (`zsqbench leaderboard --deploy`): what a deployable profile costs and gains against
the academic one, per method and bit-width, on the machine that exported it (docs/deployment.md).

One row per configuration (model, dataset, generator, loss, budget, bits) and deployable profile: the
academic profile's top-1 and the deployable profile's (means over seeds), their difference paired by seed,
the integer export's top-1 in ONNX Runtime, its size at the true bit-widths and its speed against the FP32
teacher (batch 100, 2 threads). A deployable profile is one named ``ort-*`` (plugins/quantizers/profiles.py);
the view reads the per-trial table only (torch-free), so the prefix is the rule.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.leaderboard.schema import is_missing, plain
from zsqbench.runs.result_file import DEFAULT_PROFILE

DEPLOYABLE_PREFIX = "ort-"
KEY = ["model", "dataset", "generator", "loss", "budget", "w_bits", "a_bits"]
NOTE = ("academic: top-1 last under the academic profile (named when not zsq-asym-pc); deploy: under the deployable "
        "profile, in PyTorch; Δ: deploy − academic, mean over the seeds both have (n); ONNX: the deployable "
        "student's integer export in ONNX Runtime; KiB at the true bit-widths; speed: FP32 teacher ms / integer "
        "model ms at batch 100, 2 threads, on the machine that exported it")


def _mean(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def _row(key: dict[str, Any], academic: pd.DataFrame, profile: str | None, deploy: pd.DataFrame) -> dict[str, Any]:
    acad_profile = (DEFAULT_PROFILE if (academic["profile"] == DEFAULT_PROFILE).any()
                    else str(academic["profile"].iloc[0])) if len(academic) else None
    academic = academic[academic["profile"] == acad_profile] if acad_profile else academic
    paired = academic[["seed", "top1_last"]].merge(deploy[["seed", "top1_last"]], on="seed", suffixes=("_a", "_d"))
    diffs = (pd.to_numeric(paired["top1_last_d"]) - pd.to_numeric(paired["top1_last_a"])).dropna()
    exported = deploy[deploy["onnx_top1"].notna()] if "onnx_top1" in deploy else deploy.iloc[0:0]
    ratio = _mean(deploy["onnx_latency_ratio"]) if "onnx_latency_ratio" in deploy else None
    return {
        **key, "academic_profile": acad_profile, "deploy_profile": profile,
        "academic_seeds": len(academic), "deploy_seeds": len(deploy),
        "academic_top1_mean": _mean(academic["top1_last"]), "deploy_top1_mean": _mean(deploy["top1_last"]),
        "paired_seeds": len(diffs), "paired_diff_mean": float(diffs.mean()) if len(diffs) else None,
        "exported": len(exported), "onnx_top1_mean": _mean(exported["onnx_top1"]) if len(exported) else None,
        "onnx_kib_mean": _mean(deploy["onnx_kib"]) if "onnx_kib" in deploy else None,
        "latency_ratio_mean": ratio, "speedup": 1 / ratio if ratio else None,
        "machines": ";".join(sorted({str(m) for m in deploy.get("machine", pd.Series(dtype=str)).dropna()})),
    }


def deploy_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The view's rows (numbers, for CSV and JSON) from finished trials of a per-trial table."""
    missing = [c for c in [*KEY, "seed", "top1_last"] if c not in trials.columns]
    if missing:
        raise UserError(f"--deploy needs a per-trial leaderboard (a results folder or its leaderboard.csv); "
                        f"this table lacks {missing}")
    trials = trials.copy()
    trials["profile"] = (trials["profile"] if "profile" in trials else pd.Series(index=trials.index, dtype=object))
    trials["profile"] = trials["profile"].where(trials["profile"].notna(), DEFAULT_PROFILE).astype(str)
    deployable = trials["profile"].str.startswith(DEPLOYABLE_PREFIX)
    rows = []
    for values, group in trials.groupby(KEY, dropna=False, sort=True):
        key = {k: plain(v) for k, v in zip(KEY, values)}
        academic = group[~deployable.loc[group.index]]
        profiles = sorted(group.loc[deployable.loc[group.index], "profile"].unique())
        for profile in profiles or [None]:
            rows.append(_row(key, academic, profile, group[group["profile"] == profile] if profile else group.iloc[0:0]))
    columns = [*KEY, "academic_profile", "deploy_profile", "academic_seeds", "deploy_seeds", "academic_top1_mean",
               "deploy_top1_mean", "paired_seeds", "paired_diff_mean", "exported", "onnx_top1_mean", "onnx_kib_mean",
               "latency_ratio_mean", "speedup", "machines"]
    return pd.DataFrame(rows, columns=columns)


def _num(value: Any, digits: int, sign: bool = False) -> str:
    if is_missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{float(value):+.{digits}f}".replace("-", "−") if sign else f"{float(value):.{digits}f}"


def display_deploy(table: pd.DataFrame) -> pd.DataFrame:
    """The view as display strings, narrow enough for 80 columns (model, dataset and budget only where
    they vary: then they lead the method cell)."""
    varying = [c for c in ("model", "dataset", "budget") if table[c].nunique(dropna=False) > 1]
    rows = []
    for r in table.to_dict("records"):
        method = " ".join([*(str(r[c]) for c in varying), f"{r['generator']}+{r['loss']}"])
        academic = _num(r["academic_top1_mean"], 2)
        if r["academic_profile"] and r["academic_profile"] != DEFAULT_PROFILE and academic:
            academic += f" ({r['academic_profile']})"
        rows.append({
            "method": method, "bits": bits_label(r["w_bits"], r["a_bits"]), "profile": r["deploy_profile"] or "",
            "academic": academic, "deploy": _num(r["deploy_top1_mean"], 2),
            "Δ (n)": (f"{_num(r['paired_diff_mean'], 2, sign=True)} ({r['paired_seeds']})"
                      if r["paired_seeds"] else ""),
            "ONNX": _num(r["onnx_top1_mean"], 2), "KiB": _num(r["onnx_kib_mean"], 0),
            "speed": f"{_num(r['speedup'], 2)}x" if r["speedup"] else "",
        })
    columns = ["method", "bits", "profile", "academic", "deploy", "Δ (n)", "ONNX", "KiB", "speed"]
    return pd.DataFrame(rows, columns=columns)


def deploy_notes(table: pd.DataFrame) -> list[str]:
    notes = [NOTE]
    machines = sorted({m for ms in table["machines"] for m in str(ms).split(";") if m})
    if machines:
        notes.append(f"machine: {'; '.join(machines)}")
    if not table["deploy_profile"].notna().any():
        notes.append("no trial ran under a deployable profile: run one with -o uniform.profile=ort-int8 (or "
                     "ort-int4w) and --export onnx")
    return notes
