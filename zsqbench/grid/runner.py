"""Running a grid of trials into a results folder, through an executor plugin.

Layout: ``<out>/<run>/<trial_id>/`` is a :class:`~zsqbench.trial.folder.TrialFolder`;
``<out>/leaderboard.csv`` gets one row per done trial, written only by the coordinating process.

Re-running the same command skips done trials, resumes incomplete ones from their last
checkpoint, and leaves failed ones alone unless ``retry_failed``. The trial id includes the
teacher checkpoint, so a done trial is never reused (nor an incomplete one resumed) for another
teacher: that is another trial.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsqbench.api.executor import JobOutcome, TrialJob
from zsqbench.api.plugins import Plugins, get_plugins
from zsqbench.errors import UserError
from zsqbench.leaderboard.table import upsert_row
from zsqbench.leaderboard.rows import result_row
from zsqbench.trial.environment import Environment
from zsqbench.trial.folder import TrialFolder
from zsqbench.trial.monitor import TrialDiverged
from zsqbench.trial.progress import NullProgress, ProgressSink
from zsqbench.trial.record import build_result
from zsqbench.trial.resources import TrialResources
from zsqbench.trial.spec import TrialSpec
from zsqbench.trial.teachers import load_teacher
from zsqbench.trial.trainer import run_trial

LEADERBOARD = "leaderboard.csv"


@dataclass
class GridReport:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (trial id, error)
    left_failed: list[str] = field(default_factory=list)  # failed earlier, not retried


def trial_folder(out: Path, run: str, spec: TrialSpec) -> TrialFolder:
    return TrialFolder.of(out, run, spec.trial_id)


# ------------------------------------------------------------------ inside a worker


_RESOURCES = TrialResources()  # test sets and FP accuracies shared by the jobs of one process


def execute_job(job: TrialJob, progress: ProgressSink | None = None, plugins: Plugins | None = None) -> JobOutcome:
    """Run (or resume) one trial in its folder. Safe to call in any process or on any machine
    that sees the folder; never touches the leaderboard."""
    folder = TrialFolder(Path(job.trial_dir))
    spec = folder.read_spec()
    try:
        env = Environment.from_dict(job.env)
        outcome = run_trial(spec, plugins or get_plugins(), env, progress or NullProgress(), _RESOURCES, folder)
    except TrialDiverged as exc:
        folder.write_error("diverged", str(exc))
        return JobOutcome(job.trial_id, "diverged", str(exc))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        folder.write_error("failed", message, traceback.format_exc())
        return JobOutcome(job.trial_id, "failed", message)
    folder.write_result(build_result(spec, outcome, env, folder.run))
    return JobOutcome(job.trial_id, "done")


# ------------------------------------------------------------------ the coordinator


def _precheck(specs: list[TrialSpec], plugins: Plugins, env: Environment, progress: ProgressSink) -> None:
    """Fail on missing data or weights (or fetch them) before any folder is touched or any job dispatched."""
    seen: set[tuple] = set()
    for spec in specs:
        key = (spec.model, spec.dataset, spec.teacher)
        if key in seen:
            continue
        seen.add(key)
        _RESOURCES.test_set(spec.dataset, env, progress)
        if spec.teacher is not None:
            load_teacher(plugins.models.get(spec.model), spec.teacher, env.data_root, env.teacher_weights,
                         env.offline, progress)


def _refuse_other_precision(recorded: str, trial_id: str, env: Environment, folder: TrialFolder) -> None:
    """The trial id does not include the compute settings (most change rounding only), but
    the precision changes accuracy: a bf16 request must not be answered by an fp32 result,
    or resume an fp32 checkpoint (or the reverse), just because the spec is the same."""
    if recorded != env.precision:
        raise UserError(f"trial {trial_id} in {folder.path.parent} was run at precision {recorded}, this run asks "
                        f"for {env.precision}; write to another run folder (--run NAME or --out DIR) or pass "
                        "--force to start it again")


def run_grid(
    specs: list[TrialSpec],
    plugins: Plugins,
    env: Environment,
    device: str,
    out: Path,
    run: str,
    progress: ProgressSink,
    executor_name: str = "local",
    executor_options: dict[str, Any] | None = None,
    max_parallel: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
) -> GridReport:
    executor_cls = plugins.executors.get(executor_name)
    try:
        executor = executor_cls(executor_cls.Options(**(executor_options or {})), max_parallel)
    except Exception as exc:  # pydantic ValidationError and friends
        raise UserError(f"bad option for executor '{executor_name}': {str(exc).splitlines()[0]}") from None
    report = GridReport()
    plan: list[tuple[TrialSpec, TrialFolder, str]] = []
    for spec in specs:
        folder = trial_folder(out, run, spec)
        state = folder.state
        if state == "done" and not force:
            done = folder.read_result()
            _refuse_other_precision((done.get("compute") or {}).get("precision", "fp32"), spec.trial_id, env, folder)
            report.skipped.append(done)
            continue
        if state == "failed" and not (retry_failed or force):
            report.left_failed.append(spec.trial_id)
            continue
        if state == "incomplete" and not force:
            saved = folder.load_checkpoint(spec.trial_id)  # a corrupt checkpoint stops the grid before anything changes
            if saved is not None:
                _refuse_other_precision(saved.get("precision", "fp32"), spec.trial_id, env, folder)
        plan.append((spec, folder, state))
    if plan:
        _precheck([s for s, _, _ in plan], plugins, env, progress)

    jobs: list[TrialJob] = []
    for index, (spec, folder, state) in enumerate(plan, 1):
        folder.path.mkdir(parents=True, exist_ok=True)
        if force or state == "failed":
            folder.reset()
        folder.write_spec(spec)
        label = f"[{index}/{len(plan)}] {spec.generator.name}+{spec.loss.name} {spec.bits_label} seed {spec.seed}"
        jobs.append(TrialJob(spec.trial_id, str(folder.path), label, env.to_dict(device)))
    for tid in report.left_failed:
        progress.message(f"trial {tid} failed earlier; skipped (use --retry-failed)")
    if report.skipped:
        progress.message(f"{len(report.skipped)} trial(s) already done, skipped")

    leaderboard = out / LEADERBOARD

    def on_done(job: TrialJob, outcome: JobOutcome) -> None:
        if outcome.status == "done":
            result = TrialFolder(Path(job.trial_dir)).read_result()
            upsert_row(leaderboard, result_row(result))
            report.done.append(result)
            progress.message(
                f"{job.label}: FP {result['fp_top1']:.2f}  PTQ {result['ptq_top1']:.2f}  "
                f"last {result['top1_last']:.2f}  ({result['wall_s']:.0f} s)"
            )
        else:
            report.failed.append((job.trial_id, f"{outcome.status}: {outcome.error}"))
            progress.message(f"{job.label}: {outcome.status}: {outcome.error}")

    if jobs:
        executor.run(jobs, execute_job, on_done, progress)
    return report


def grid_states(specs: list[TrialSpec], out: Path, run: str) -> list[dict[str, Any]]:
    """The rows of a dry run: each trial with its teacher, schedule and state."""
    return [
        {"trial_id": s.trial_id, "generator": s.generator.name, "loss": s.loss.name, "bits": s.bits_label,
         "seed": s.seed, "budget": s.budget_name, "epochs": s.budget.epochs,
         "iters_per_epoch": s.budget.iters_per_epoch, "batch_size": s.budget.batch_size,
         "warmup_epochs": s.budget.warmup_epochs, "lr_milestones": list(s.budget.lr_milestones),
         "teacher": s.teacher.short if s.teacher else "", "state": trial_folder(out, run, s).state}
        for s in specs
    ]


def folder_summary(out: Path) -> list[dict[str, Any]]:
    """Every trial folder under a results directory with its state (for `zsqbench status`)."""
    rows = []
    for folder in TrialFolder.find(out):
        spec = folder.read_spec()
        state = folder.state
        row = {"run": folder.run, "trial_id": folder.trial_id, "generator": spec.generator.name,
               "loss": spec.loss.name, "bits": spec.bits_label, "seed": spec.seed, "budget": spec.budget_name,
               "teacher": spec.teacher.short if spec.teacher else "(before teacher ids)", "state": state,
               "epochs_done": folder.metrics_count(), "epochs": spec.budget.epochs, "error": ""}
        if state == "failed":
            try:
                row["error"] = folder.read_error().get("error", "")
            except UserError:
                row["error"] = "unreadable error.json"
        rows.append(row)
    return rows
