"""Result files and the per-trial leaderboard CSV.

``result.json`` holds everything about one trial (spec, per-epoch numbers, provenance).
``leaderboard.csv`` has one row per trial; rows are replaced by trial id, and the file is
rewritten atomically so a reader never sees half a row.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.errors import UserError
from zsqbench.files import write_json_atomic, write_text_atomic
from zsqbench.trial.provenance import device_name, git_hash, versions
from zsqbench.trial.spec import TrialSpec
from zsqbench.trial.speed import compute_label
from zsqbench.trial.train import Environment, TrialOutcome

# Column -> meaning. README.md documents the same list; a test keeps them in step.
LEADERBOARD_COLUMNS: dict[str, str] = {
    "trial_id": "hash of the canonical trial spec",
    "run": "name of the run folder under the results directory",
    "model": "teacher name",
    "dataset": "cifar10 / cifar100",
    "generator": "generator plugin",
    "loss": "loss plugin",
    "quantizer": "quantizer plugin",
    "w_bits": "weight bits",
    "a_bits": "activation bits",
    "seed": "trial seed",
    "budget": "budget preset name",
    "epochs": "epochs (warm-up included)",
    "iters_per_epoch": "iterations per epoch",
    "batch_size": "batch size",
    "warmup_epochs": "calibration epochs without student updates",
    "fp_top1": "FP teacher top-1 (%) measured on the full test set",
    "ptq_top1": "student top-1 (%) after calibration, before any student update",
    "top1_last": "student top-1 (%) after the last epoch: the headline number",
    "top1_oracle": "ORACLE: best student top-1 (%) over epochs, selected on the test set",
    "wall_s": "wall-clock seconds of the trial",
    "flags": "training warnings: exploding_gradients (an epoch's max student gradient norm > 100x the first "
             "training epoch's mean), warnings (see result.json, e.g. a zero feature term)",
    "device": "device the trial ran on",
    "compute": "compute settings it ran with: precision (fp32/bf16), then any of channels-last, compile, "
               "tf32/no-tf32; empty for results recorded before this column (fp32, NCHW)",
    "teacher_weights": "pinned checkpoint tag (or 'unpinned')",
    "teacher_sha256": "sha256 of the teacher weights file",
    "data_sha256": "sha256 of the test-set file",
    "zsqbench_version": "zsqbench version",
    "torch_version": "PyTorch version",
    "git_hash": "git commit of zsqbench ('+dirty' if modified)",
    "finished_at": "UTC time the trial finished",
}


#: A training epoch whose largest student gradient norm exceeds the first training epoch's mean
#: by this factor marks the trial as having exploding gradients (a finite run can still explode).
EXPLOSION_FACTOR = 100.0


def training_flags(epochs: list[dict[str, Any]]) -> list[str]:
    """Warnings about how training went, shown in result.json and the leaderboard."""
    flags = []
    trained = [e for e in epochs if e.get("grad_norm_mean") is not None]
    if trained:
        first = trained[0]["grad_norm_mean"]
        worst = max(e["grad_norm_max"] for e in trained)
        if first > 0 and worst > EXPLOSION_FACTOR * first:
            flags.append("exploding_gradients")
    if any(e.get("warnings") for e in epochs):
        flags.append("warnings")
    return flags


def build_result(spec: TrialSpec, outcome: TrialOutcome, env: Environment, run: str) -> dict[str, Any]:
    vers = versions()
    epochs = [vars(e) for e in outcome.epochs]
    return {
        "trial_id": spec.trial_id,
        "run": run,
        "status": "done",
        "spec": spec.model_dump(mode="json"),
        "fp_top1": outcome.fp_top1,
        "ptq_top1": outcome.ptq_top1,
        "top1_last": outcome.top1_last,
        "top1_oracle": outcome.top1_oracle,
        "oracle_note": "top1_oracle is the best epoch chosen on the test set; report top1_last",
        "epochs": epochs,
        "flags": training_flags(epochs),
        "wall_s": outcome.wall_s,
        "device": device_name(env.device),
        "teacher": {
            "name": spec.model,
            "weights": outcome.teacher.weights_tag,
            "path": str(outcome.teacher.weights_path),
            "sha256": outcome.teacher.sha256,
            "normalization": {"mean": outcome.teacher.normalization.mean, "std": outcome.teacher.normalization.std},
            "expected_top1": outcome.teacher.expected_top1,
        },
        "data": {"path": str(outcome.test_set.path), "sha256": outcome.test_set.sha256,
                 "num_images": len(outcome.test_set.labels)},
        "versions": vers,
        "git_hash": git_hash(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **outcome.extra,
    }


def result_row(result: dict[str, Any]) -> dict[str, Any]:
    spec = result["spec"]
    budget = spec["budget"]
    return {
        "trial_id": result["trial_id"],
        "run": result["run"],
        "model": spec["model"],
        "dataset": spec["dataset"],
        "generator": spec["generator"]["name"],
        "loss": spec["loss"]["name"],
        "quantizer": spec["quantizer"]["name"],
        "w_bits": spec["w_bits"],
        "a_bits": spec["a_bits"],
        "seed": spec["seed"],
        "budget": spec["budget_name"],
        "epochs": budget["epochs"],
        "iters_per_epoch": budget["iters_per_epoch"],
        "batch_size": budget["batch_size"],
        "warmup_epochs": budget["warmup_epochs"],
        "fp_top1": round(result["fp_top1"], 2),
        "ptq_top1": round(result["ptq_top1"], 2),
        "top1_last": round(result["top1_last"], 2),
        "top1_oracle": round(result["top1_oracle"], 2),
        "wall_s": round(result["wall_s"], 1),
        "flags": ";".join(result.get("flags", [])),
        "device": result["device"],
        "compute": compute_label(result.get("compute")),
        "teacher_weights": result["teacher"]["weights"],
        "teacher_sha256": result["teacher"]["sha256"],
        "data_sha256": result["data"]["sha256"],
        "zsqbench_version": result["versions"]["zsqbench"],
        "torch_version": result["versions"]["torch"],
        "git_hash": result["git_hash"],
        "finished_at": result["finished_at"],
    }


def read_leaderboard(path: Path) -> pd.DataFrame:
    """Read a per-trial leaderboard, refusing files that are not one."""
    try:
        frame = pd.read_csv(path, dtype={"trial_id": str})
    except FileNotFoundError:
        raise UserError(f"leaderboard not found: {path}; run `zsqbench run` first or pass the right path") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed leaderboard CSV {path}: {str(exc).splitlines()[0]}; regenerate it") from None
    missing = [c for c in ("trial_id", "generator", "loss", "w_bits", "a_bits", "top1_last") if c not in frame.columns]
    if missing:
        raise UserError(f"malformed leaderboard CSV {path}: missing columns {missing}; regenerate it")
    return frame


def upsert_leaderboard(path: Path, row: dict[str, Any]) -> None:
    if path.exists():
        frame = read_leaderboard(path)
        frame = frame[frame["trial_id"] != row["trial_id"]]
        frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
    else:
        frame = pd.DataFrame([row], columns=list(LEADERBOARD_COLUMNS))
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    write_text_atomic(path, buf.getvalue())


def write_result(trial_dir: Path, result: dict[str, Any]) -> None:
    write_json_atomic(trial_dir / "result.json", result)


def read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"corrupt result file {path} ({exc}); delete its trial folder and re-run") from None
