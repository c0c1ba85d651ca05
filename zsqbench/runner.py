"""Running a list of trials into a results folder.

Layout: ``<out>/<run>/<trial_id>/{spec.json,result.json}`` plus ``<out>/leaderboard.csv``.
``result.json`` is the done marker, written atomically after the trial finished; a trial
without it is not done and is run again.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsqbench.files import write_json_atomic
from zsqbench.plugins import Plugins
from zsqbench.results import build_result, read_result, result_row, upsert_leaderboard, write_result
from zsqbench.spec import TrialSpec
from zsqbench.train import Environment, ProgressSink, TrialDiverged, TrialResources, run_trial


@dataclass
class GridReport:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[TrialSpec, str]] = field(default_factory=list)


def trial_dir(out: Path, run: str, spec: TrialSpec) -> Path:
    return out / run / spec.trial_id


def trial_state(out: Path, run: str, spec: TrialSpec) -> str:
    folder = trial_dir(out, run, spec)
    if (folder / "result.json").is_file():
        return "done"
    if folder.is_dir():
        return "incomplete"
    return "pending"


def run_grid(
    specs: list[TrialSpec],
    plugins: Plugins,
    env: Environment,
    out: Path,
    run: str,
    progress: ProgressSink,
    force: bool = False,
) -> GridReport:
    report = GridReport()
    resources = TrialResources()
    leaderboard = out / "leaderboard.csv"
    for index, spec in enumerate(specs, 1):
        folder = trial_dir(out, run, spec)
        label = f"[{index}/{len(specs)}] {spec.generator.name}+{spec.loss.name} {spec.bits_label} seed {spec.seed}"
        if not force and (folder / "result.json").is_file():
            report.skipped.append(read_result(folder / "result.json"))
            progress.message(f"{label}: already done ({spec.trial_id}), skipped")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "spec.json", spec.model_dump(mode="json"))
        progress.message(f"{label}: trial {spec.trial_id}")
        try:
            outcome = run_trial(spec, plugins, env, progress, resources)
        except TrialDiverged as exc:
            report.failed.append((spec, str(exc)))
            write_json_atomic(folder / "error.json", {"status": "diverged", "error": str(exc)})
            progress.message(f"{label}: diverged: {exc}")
            continue
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            from zsqbench.errors import UserError

            if isinstance(exc, UserError):
                raise
            report.failed.append((spec, f"{type(exc).__name__}: {exc}"))
            write_json_atomic(
                folder / "error.json",
                {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
            )
            progress.message(f"{label}: failed: {type(exc).__name__}: {exc}")
            continue
        result = build_result(spec, outcome, env, run)
        write_result(folder, result)
        upsert_leaderboard(leaderboard, result_row(result))
        report.done.append(result)
        progress.message(
            f"{label}: FP {outcome.fp_top1:.2f}  PTQ {outcome.ptq_top1:.2f}  last {outcome.top1_last:.2f}  "
            f"({outcome.wall_s:.0f} s)"
        )
    return report
