"""The per-trial leaderboard of a results folder, rebuilt from its result.json files (and the
records of verified ONNX exports beside them, for ``onnx_top1``).

The result files are the truth; ``<results>/leaderboard.csv`` is a view of them, regenerated whole
(never patched) under a lock and written atomically. Any number of workers may finish trials at
the same moment: each writes its result.json first and then rebuilds under the lock, so the last
rebuild has seen every result written before it, and no row can be dropped. A CSV damaged by an
editor or an old version is repaired by the next rebuild (``zsqbench leaderboard DIR --rebuild``).

The lock is an OS file lock (``filelock``: ``flock``, which Linux maps to POSIX locks on NFS); the
kernel releases it when its holder dies, so a killed worker never leaves the folder locked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from zsqbench.api.spec import spec_trial_id
from zsqbench.errors import UserError
from zsqbench.files import read_json_object, write_text_atomic
from zsqbench.leaderboard.rows import result_row
from zsqbench.leaderboard.schema import PER_TRIAL, to_csv_text
from zsqbench.runs.result_file import find_result_files, read_export_record, validate_result

LEADERBOARD_NAME = "leaderboard.csv"
LOCK_NAME = ".leaderboard.lock"
#: A rebuild takes milliseconds per hundred trials; a lock held this long belongs to a stuck process.
LOCK_TIMEOUT_S = 120.0


def _read_result(path: Path) -> dict[str, Any]:
    """As :meth:`TrialFolder.read_result <zsqbench.runs.folder.TrialFolder.read_result>` reads it (that
    module needs torch, which the leaderboard does not load)."""
    return validate_result(read_json_object(path, "result file", "delete its trial folder and re-run"), path,
                           spec_trial_id)


def trial_results(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every done trial's result under ``results`` (checked, current format), with its file."""
    if not Path(results).is_dir():
        raise UserError(f"results folder not found: {results}; pass the --out folder of `zsqbench run`")
    return [(p, _read_result(p)) for p in find_result_files(results)]


def trial_rows(results: Path) -> list[dict[str, Any]]:
    """One row per done trial under ``results``, in the order they finished."""
    rows = [result_row(result, read_export_record(p.parent)) for p, result in trial_results(results)]
    return sorted(rows, key=lambda r: (str(r["finished_at"]), r["run"], r["trial_id"]))


def leaderboard_text(results: Path) -> str:
    """The CSV the folder's leaderboard should hold; a user error when no trial has finished."""
    rows = trial_rows(results)
    if not rows:
        raise UserError(f"results folder {results} has no finished trial yet (no */*/result.json); pass the "
                        "--out folder of a `zsqbench run` or a leaderboard CSV")
    return to_csv_text(pd.DataFrame(rows).reindex(columns=list(PER_TRIAL)))


def _locked(results: Path) -> FileLock:
    return FileLock(str(Path(results) / LOCK_NAME), timeout=LOCK_TIMEOUT_S)


def rebuild_leaderboard(results: Path) -> bool:
    """Regenerate ``leaderboard.csv`` from the result files, under the lock; False if it already
    agreed with them (then nothing is written)."""
    path = Path(results) / LEADERBOARD_NAME
    try:
        with _locked(results):
            text = leaderboard_text(results)
            if path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text:
                return False
            write_text_atomic(path, text)
            return True
    except Timeout:
        raise UserError(f"the leaderboard lock {Path(results) / LOCK_NAME} was held for over {LOCK_TIMEOUT_S:.0f} s; "
                        "if no zsqbench process is stuck writing it, delete the lock file and retry") from None
