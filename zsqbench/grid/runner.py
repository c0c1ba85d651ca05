"""Running a grid of trials into a results folder, through an executor plugin (the coordinator).

Layout: ``<out>/<run>/<trial_id>/`` is a :class:`~zsqbench.runs.folder.TrialFolder`;
``<out>/leaderboard.csv`` is rebuilt from the folder's result files whenever a trial finishes
(:mod:`zsqbench.leaderboard.results_folder`), and by a run that finds it behind them (a run killed
between a trial's result file and the rebuild). A run name is one plain folder name
(:func:`check_run_name`): every path comes from ``out``, the run name and a trial id, never from a file.

Re-running the same command skips done trials, resumes incomplete ones from their last
checkpoint, and leaves failed ones alone unless ``retry_failed`` (a trial failed by a machine
fault, such as a full disk, is resumed). Trials whose lease another live worker holds are left to
it ("running elsewhere"), so any number of runs may share one results folder; the workers
(:mod:`zsqbench.grid.worker`) settle who trains what. The trial id includes the teacher
checkpoint, so a done trial is never reused (nor an incomplete one resumed) for another teacher:
that is another trial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsqbench.api.executor import JobOutcome, TrialJob
from zsqbench.api.options import fill_options
from zsqbench.api.plugins import Plugins
from zsqbench.api.spec import TrialSpec
from zsqbench.assets.teachers import load_teacher
from zsqbench.errors import UserError
from zsqbench.grid.worker import RESOURCES, execute_job, write_problem
from zsqbench.leaderboard.results_folder import LEADERBOARD_NAME, rebuild_leaderboard
from zsqbench.progress import ProgressSink
from zsqbench.runs.environment import Environment
from zsqbench.runs.folder import TrialFolder
from zsqbench.runs.lease import DEFAULT_TIMEOUT_S, LeaseInfo, LeaseOwner, clear_stale_lease


@dataclass
class GridReport:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (trial id, error)
    left_failed: list[str] = field(default_factory=list)  # failed earlier, not retried
    elsewhere: list[tuple[str, str]] = field(default_factory=list)  # (trial id, why): another worker has it


#: A run name is one folder under the results folder: no separators, no '..', no leading dot or dash.
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,99}")


def check_run_name(run: str) -> str:
    """The run name, if it names one folder right under the results folder (nothing that leads
    elsewhere, nothing hidden); else a one-line error with the fix."""
    if not _RUN_NAME.fullmatch(run) or ".." in run:
        raise UserError(f"run name {run!r} is not a plain folder name; use letters, digits and . _ - + = @ (no "
                        "'/', no '..', not starting with '.' or '-'), e.g. --run w4-sweep")
    return run


def trial_folder(out: Path, run: str, spec: TrialSpec) -> TrialFolder:
    return TrialFolder.of(out, check_run_name(run), spec.trial_id)


# ------------------------------------------------------------------ the coordinator


def _precheck(specs: list[TrialSpec], plugins: Plugins, env: Environment, progress: ProgressSink) -> None:
    """Fail on missing data or weights (or fetch them) before any folder is touched or any job dispatched."""
    seen: set[tuple] = set()
    for spec in specs:
        key = (spec.model, spec.dataset, spec.teacher)
        if key in seen:
            continue
        seen.add(key)
        RESOURCES.test_set(spec.dataset, env, progress)
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


def _plan(specs: list[TrialSpec], env: Environment, out: Path, run: str, force: bool, retry_failed: bool,
          report: GridReport) -> list[tuple[TrialSpec, TrialFolder, str]]:
    """What each trial's folder says to do with it: skipped (done), left (failed, or another
    worker's), or planned with the state it starts from. Reads only, but for a done trial's stale
    lease (its worker was killed between the result and the release), which it removes."""
    me = LeaseOwner.me()
    plan: list[tuple[TrialSpec, TrialFolder, str]] = []
    for spec in specs:
        folder = trial_folder(out, run, spec)
        state = folder.state
        if state == "done" and not force:
            done = folder.read_result()
            _refuse_other_precision((done.get("compute") or {}).get("precision", "fp32"), spec.trial_id, env, folder)
            report.skipped.append(done)
            clear_stale_lease(folder.path, env.lease_timeout_s)
            continue
        lease = folder.read_lease()
        if lease is not None and lease.stale_reason(env.lease_timeout_s, me) is None:
            report.elsewhere.append((spec.trial_id, f"running elsewhere ({lease.owner.describe()})"))
            continue
        if state == "failed" and folder.failed_resumably() and not force:
            state = "incomplete"  # a machine fault (full disk, I/O error): resume it
        if state == "failed" and not (retry_failed or force):
            report.left_failed.append(spec.trial_id)
            continue
        if state == "incomplete" and not force:
            saved = folder.load_checkpoint(spec.trial_id)  # a corrupt checkpoint stops the grid before anything changes
            if saved is not None:
                _refuse_other_precision(saved.get("precision", "fp32"), spec.trial_id, env, folder)
        plan.append((spec, folder, state))
    return plan


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
    check_run_name(run)
    executor_cls = plugins.executors.get(executor_name)
    fill_options(executor_cls, executor_options or {}, "executor", executor_name)  # one line naming the problem
    executor = executor_cls(executor_cls.Options(**(executor_options or {})), max_parallel)
    report = GridReport()
    try:
        plan = _plan(specs, env, out, run, force, retry_failed, report)
    except OSError as exc:  # a file where the results folder should be, a folder it may not read
        where = Path(out) if Path(out).is_file() else Path(out) / run
        raise UserError(write_problem(exc, where, "use")) from None
    if plan:
        _precheck([s for s, _, _ in plan], plugins, env, progress)

    jobs: list[TrialJob] = []
    for index, (spec, folder, state) in enumerate(plan, 1):
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
            folder.write_spec(spec)
        except OSError as exc:  # a full or read-only disk, a file in the way: before any trial starts
            raise UserError(write_problem(exc, folder.path)) from None
        # The reset itself happens in the worker, once it holds the lease (another run may be training it).
        reset = state if (force and state != "pending") or state == "failed" else None
        label = f"[{index}/{len(plan)}] {spec.generator.name}+{spec.loss.name} {spec.bits_label} seed {spec.seed}"
        jobs.append(TrialJob(spec.trial_id, str(folder.path), label, env.to_dict(device), reset_state=reset))
    for tid in report.left_failed:
        progress.message(f"trial {tid} failed earlier; skipped (use --retry-failed)")
    if report.skipped:
        progress.message(f"{len(report.skipped)} trial(s) already done, skipped")
    for tid, why in report.elsewhere:
        progress.message(f"trial {tid}: {why}; skipped")

    def on_done(job: TrialJob, outcome: JobOutcome) -> None:
        if outcome.status == "elsewhere":
            report.elsewhere.append((job.trial_id, outcome.error))
            progress.message(f"{job.label}: {outcome.error}; skipped")
        elif outcome.status == "done":
            result = TrialFolder(Path(job.trial_dir)).read_result()
            _update_leaderboard(out, progress)
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
    if report.skipped and not report.done and _update_leaderboard(out, progress):
        # A run killed between a result file and the rebuild (or a CSV deleted or edited) left the view
        # behind its result files; no trial finished now to rebuild it, so this run repairs it.
        progress.message(f"{out / LEADERBOARD_NAME} did not match the result files; rebuilt from them")
    return report


def _update_leaderboard(out: Path, progress: ProgressSink) -> bool:
    """Rebuild the leaderboard view (True if it changed); a failure to write it loses nothing (the
    result files are the truth), so it is a warning with the repair command, not a failed trial."""
    try:
        return rebuild_leaderboard(out)
    except (OSError, UserError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        progress.message(f"warning: could not update {out / LEADERBOARD_NAME} ({reason}); the trial's result.json is "
                         f"kept: `zsqbench leaderboard {out} --rebuild` repairs the leaderboard")
        return False


def _lease_state(folder: TrialFolder, lease: LeaseInfo | None, timeout_s: float, me: LeaseOwner) -> str:
    """The folder's state, with an incomplete trial under a lease told apart: "running" while the
    lease is live, "stale" once the next run would take it over."""
    state = folder.state
    if lease is None or state != "incomplete":
        return state
    return "stale" if lease.stale_reason(timeout_s, me) else "running"


def grid_states(specs: list[TrialSpec], out: Path, run: str,
                lease_timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """The rows of a dry run: each trial with its teacher, every budget field (None included) and state."""
    me = LeaseOwner.me()

    def state(spec: TrialSpec) -> str:
        folder = trial_folder(out, run, spec)
        return _lease_state(folder, folder.read_lease(), lease_timeout_s, me)

    return [
        {"trial_id": s.trial_id, "generator": s.generator.name, "loss": s.loss.name, "bits": s.bits_label,
         "seed": s.seed, "budget": s.budget_name, **dict(s.budget),
         "teacher": s.teacher.short if s.teacher else "", "state": state(s)}
        for s in specs
    ]


def folder_summary(out: Path, lease_timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Every trial folder under a results directory with its state (for `zsqbench status`): an
    incomplete trial whose lease is live is "running" (owner, heartbeat age), one whose lease is
    stale is "stale" (the next run takes it over and resumes it)."""
    rows = []
    me = LeaseOwner.me()
    for folder in TrialFolder.find(out):
        spec = folder.read_spec()
        lease = folder.read_lease()
        state = _lease_state(folder, lease, lease_timeout_s, me)
        row = {"run": folder.run, "trial_id": folder.trial_id, "generator": spec.generator.name,
               "loss": spec.loss.name, "bits": spec.bits_label, "seed": spec.seed, "budget": spec.budget_name,
               "teacher": spec.teacher.short if spec.teacher else "(before teacher ids)", "state": state,
               "epochs_done": folder.metrics_count(), "epochs": spec.budget.epochs, "error": "",
               "owner": "", "heartbeat_age_s": None, "stale_reason": ""}
        if lease is not None:
            reason = lease.stale_reason(lease_timeout_s, me)
            row.update(owner=lease.owner.describe(), heartbeat_age_s=round(lease.age(), 1), stale_reason=reason or "")
        if state == "failed":
            try:
                error = folder.read_error()
                row["error"] = error.get("error", "") + (" (resumable)" if error.get("resumable") else "")
            except UserError:
                row["error"] = "unreadable error.json"
        rows.append(row)
    return rows
