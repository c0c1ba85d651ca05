"""A trial's row of the per-trial leaderboard, from its result.json."""

from __future__ import annotations

import math
from typing import Any

from zsqbench.leaderboard.labels import at_chance
from zsqbench.leaderboard.schema import PER_TRIAL
from zsqbench.runs.result_file import LATENCY_HEADLINE, trial_profile


def compute_fields(compute: dict[str, Any] | None) -> dict[str, Any]:
    """The compute settings of a result as columns; results recorded before they were ran fp32, NCHW."""
    compute = compute or {}
    return {"precision": compute.get("precision", "fp32"), "channels_last": bool(compute.get("channels_last")),
            "compile": bool(compute.get("compile")), "tf32": compute.get("tf32")}


def _number(record: dict[str, Any] | None, key: str, factor: float, digits: int) -> float | None:
    """A positive number of an export record, scaled and rounded; None when absent or not one."""
    value = (record or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return round(value * factor, digits)


#: The student learning rate of a spec that names none (``OptimSettings``' default).
DEFAULT_STUDENT_LR = 1e-4


def _lr(value: float) -> str:
    """1e-06 -> "1e-6", 0.0001 -> "1e-4", 2.5e-05 -> "2.5e-5", 0.05 -> "0.05"."""
    if value == 0 or value >= 1e-2:
        return f"{value:g}"
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def student_recipe(spec: dict[str, Any]) -> str:
    """A trial's student recipe in a few words, from its spec: the student lr, then the KD term of its
    generator's native loss as the toolkit's KD settings name it in the generator's options (the GDFQ
    family's ``kd_weight``·T² with ``kd_reduction``, the offline pipelines' ``kd_alpha``·T², always
    batchmean; "+ CE" where ``ce_weight`` > 0): "lr 1e-6, 8000·KL_bm", "lr 1e-4, 400·KL_mean + CE". A
    generator with neither reads "own loss" (AdaDFQ's entropy term); a budget that never trains, "no
    training (PTQ)". The methods' further terms (HAST's feature alignment, SynQ's CAM) are on their cards."""
    budget = spec.get("budget") or {}
    if budget.get("epochs") is not None and budget.get("epochs") == budget.get("warmup_epochs"):
        return "no training (PTQ)"
    lr = (spec.get("optim") or {}).get("student_lr", DEFAULT_STUDENT_LR)
    opts = (spec.get("generator") or {}).get("options") or {}
    t = opts.get("temperature")
    if t is not None and "kd_weight" in opts:
        kd = f"{opts['kd_weight'] * t * t:g}·KL_{'bm' if opts.get('kd_reduction') == 'batchmean' else 'mean'}"
    elif t is not None and "kd_alpha" in opts:
        kd = f"{opts['kd_alpha'] * t * t:g}·KL_bm"
    else:
        kd = "own loss"
    if kd != "own loss" and (opts.get("ce_weight") or 0) > 0:
        kd += " + CE"
    return f"lr {_lr(float(lr))}, {kd}"


def result_row(result: dict[str, Any], export: dict[str, Any] | None = None) -> dict[str, Any]:
    """``export``: the trial's verified export record (``export/onnx.json``), if it has one."""
    spec = result["spec"]
    budget = spec["budget"]
    row = {
        "trial_id": result["trial_id"],
        "run": result["run"],
        "model": spec["model"],
        "dataset": spec["dataset"],
        "generator": spec["generator"]["name"],
        "loss": spec["loss"]["name"],
        "quantizer": spec["quantizer"]["name"],
        "profile": trial_profile(spec["quantizer"]["name"], spec["quantizer"].get("options")),
        "w_bits": spec["w_bits"],
        "a_bits": spec["a_bits"],
        "seed": spec["seed"],
        "budget": spec["budget_name"],
        "epochs": budget["epochs"],
        "iters_per_epoch": budget["iters_per_epoch"],
        "batch_size": budget["batch_size"],
        "warmup_epochs": budget["warmup_epochs"],
        "ptq_only": budget["epochs"] == budget["warmup_epochs"],
        "recipe": student_recipe(spec),
        "fp_top1": round(result["fp_top1"], 2),
        "ptq_top1": round(result["ptq_top1"], 2),
        "top1_last": round(result["top1_last"], 2),
        "top1_oracle": round(result["top1_oracle"], 2),
        "at_chance": at_chance(round(result["top1_last"], 2), spec["dataset"]),
        "onnx_top1": round(export["onnx_top1"], 2) if export else None,
        "onnx_kib": _number(export, "size_true_bits_bytes", 1 / 1024, 1),
        "onnx_latency_ratio": (_number(export, "latency_ratio", 1, 3) if export
                               and export.get("latency_batch") == LATENCY_HEADLINE["batch"]
                               and export.get("latency_threads") == LATENCY_HEADLINE["threads"] else None),
        "wall_s": round(result["wall_s"], 1),
        "flags": ";".join(result.get("flags", [])),
        "device": result["device"],
        "machine": (result.get("machine") or {}).get("kind") or result["device"],
        **compute_fields(result.get("compute")),
        "teacher_weights": result["teacher"]["weights"],
        "teacher_sha256": result["teacher"]["sha256"],
        "data_sha256": result["data"]["sha256"],
        "zsqbench_version": result["versions"]["zsqbench"],
        "torch_version": result["versions"]["torch"],
        "git_hash": result["git_hash"],
        "finished_at": result["finished_at"],
    }
    assert tuple(row) == PER_TRIAL, "result_row and schema.PER_TRIAL must list the same columns"
    return row
