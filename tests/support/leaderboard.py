"""Hand-made per-trial leaderboard rows for the aggregate, compare and plot tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from zsqbench.leaderboard.schema import PER_TRIAL

SHA_A = "c1757f29" + "0" * 56
SHA_B = "9b0024ac" + "1" * 56


def trial_row(generator: str = "gdfq", loss: str = "kd", bits: int = 3, seed: int = 0, top1_last: float | None = 70.0,
              dataset: str = "cifar10", **overrides: Any) -> dict[str, Any]:
    """A complete per-trial row (every schema.PER_TRIAL column) with sensible defaults."""
    row = {
        "trial_id": f"{generator}{loss}{dataset}{bits}{overrides.get('budget', 'cpu')}s{seed}".ljust(16, "0"),
        "run": "run1",
        "model": f"resnet20_{dataset}",
        "dataset": dataset,
        "generator": generator,
        "loss": loss,
        "quantizer": "uniform",
        "w_bits": bits,
        "a_bits": bits,
        "seed": seed,
        "budget": "cpu",
        "epochs": 8,
        "iters_per_epoch": 100,
        "batch_size": 64,
        "warmup_epochs": 2,
        "fp_top1": 92.6,
        "ptq_top1": 10.0,
        "top1_last": top1_last,
        "top1_oracle": None if top1_last is None else top1_last + 1.0,
        "wall_s": 600.0,
        "device": "cpu (x86_64, 2 threads)",
        "precision": "fp32",
        "channels_last": True,
        "compile": False,
        "tf32": None,
        "teacher_weights": "chenyaofo",
        "teacher_sha256": SHA_A,
        "data_sha256": "72b7c94d" + "2" * 56,
        "zsqbench_version": "0.1.0",
        "torch_version": "2.3.0",
        "git_hash": "abc123",
        "finished_at": "2025-01-01T00:00:00+00:00",
    }
    row.update(overrides)
    return row


def result_from_row(row: dict[str, Any], epochs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The result.json whose leaderboard row (leaderboard/rows.py) is ``row``: for folders whose
    leaderboard is rebuilt from their trials."""
    flags = [f for f in str(row.get("flags") or "").split(";") if f]
    return {
        "trial_id": row["trial_id"], "run": row["run"], "status": "done",
        "spec": {"model": row["model"], "dataset": row["dataset"], "generator": {"name": row["generator"], "options": {}},
                 "loss": {"name": row["loss"], "options": {}}, "quantizer": {"name": row["quantizer"], "options": {}},
                 "w_bits": row["w_bits"], "a_bits": row["a_bits"], "seed": row["seed"], "budget_name": row["budget"],
                 "budget": {k: row[k] for k in ("epochs", "iters_per_epoch", "batch_size", "warmup_epochs")}},
        "fp_top1": row["fp_top1"], "ptq_top1": row["ptq_top1"], "top1_last": row["top1_last"],
        "top1_oracle": row["top1_oracle"], "epochs": epochs or [], "flags": flags, "wall_s": row["wall_s"],
        "device": row["device"], "teacher": {"weights": row["teacher_weights"], "sha256": row["teacher_sha256"]},
        "data": {"sha256": row["data_sha256"]},
        "versions": {"zsqbench": row["zsqbench_version"], "torch": row["torch_version"]},
        "git_hash": row["git_hash"], "finished_at": row["finished_at"],
        "compute": {k: row[k] for k in ("precision", "channels_last", "compile", "tf32")},
    }


def write_trial_folder(results: Path, row: dict[str, Any], result: dict[str, Any] | None = None) -> Path:
    """A done trial's folder for a leaderboard row: ``results/<run>/<trial_id>/`` with a spec.json and
    a result.json (``result``, else :func:`result_from_row`'s)."""
    import json

    from zsqbench.testing import make_spec  # torch: only the tests that write trial folders pay for it

    trial = results / row["run"] / row["trial_id"]
    trial.mkdir(parents=True)
    spec = make_spec(row["generator"], row["loss"], bits=row["w_bits"]).model_dump(mode="json")
    (trial / "spec.json").write_text(json.dumps(spec))
    (trial / "result.json").write_text(json.dumps(result or result_from_row(row)))
    return trial


def write_trials(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Write rows as a per-trial leaderboard with pandas, as `zsqbench run` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = columns or list(PER_TRIAL) + [c for c in rows[0] if c not in PER_TRIAL]
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes, to check a failed command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_result(trial_id: str, run: str = "run1", seed: int = 0, top1_last: float = 70.0,
                finished_at: str = "2025-01-01T00:00:00+00:00") -> dict[str, Any]:
    """A result.json payload with every field the leaderboard reads (as runs/record.py writes it)."""
    return {
        "trial_id": trial_id, "run": run, "status": "done",
        "spec": {"model": "resnet20_cifar10", "dataset": "cifar10", "generator": {"name": "gdfq", "options": {}},
                 "loss": {"name": "kd", "options": {}}, "quantizer": {"name": "uniform", "options": {}},
                 "w_bits": 4, "a_bits": 4, "seed": seed, "budget_name": "smoke",
                 "budget": {"epochs": 2, "iters_per_epoch": 2, "batch_size": 16, "warmup_epochs": 1}},
        "fp_top1": 92.6, "ptq_top1": 60.0, "top1_last": top1_last, "top1_oracle": top1_last + 1.0,
        "epochs": [], "flags": [], "wall_s": 12.0, "device": "cpu (x86_64, 2 threads)",
        "teacher": {"weights": "chenyaofo", "sha256": SHA_A}, "data": {"sha256": "72b7c94d" + "2" * 56},
        "versions": {"zsqbench": "0.1.0", "torch": "2.14.1"}, "git_hash": "abc123", "finished_at": finished_at,
        "compute": {"precision": "fp32", "channels_last": True, "compile": False, "tf32": None},
    }
