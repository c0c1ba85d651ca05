"""Running one trial job wherever an executor puts it: claim the lease, train, record, release.

Any number of workers, in any processes or on any machines that share the results folder, may be
handed the same trial: the lease (:mod:`zsqbench.runs.lease`) lets exactly one train it, the
others report it as running (or finished) elsewhere. What the worker finds once it holds the lease
decides what it does, since the coordinator's view may be minutes old:

- done: finished by another worker meanwhile (unless the job asked to start a done trial again);
- failed: failed in another worker meanwhile (unless the job retries it), or failed on a machine
  fault (a full disk), which is resumed;
- the state the job asked to reset (``--force``, ``--retry-failed``): reset, then trained;
- otherwise: trained, resuming from the checkpoint if there is one.

A fault of the machine while writing (``OSError``: a full disk, an I/O error) leaves the previous
files intact (every write is atomic) and marks the trial failed *resumably*: the next run resumes
it from its last checkpoint. A worker that lost its lease writes nothing more.
"""

from __future__ import annotations

import errno
import traceback
from pathlib import Path

from zsqbench.api.executor import JobOutcome, TrialJob
from zsqbench.api.plugins import Plugins, get_plugins
from zsqbench.progress import NullProgress, ProgressSink
from zsqbench.runs.environment import Environment
from zsqbench.runs.folder import TrialFolder
from zsqbench.runs.lease import LeaseLost
from zsqbench.runs.record import build_result
from zsqbench.trial.monitor import TrialDiverged
from zsqbench.trial.resources import TrialResources
from zsqbench.trial.trainer import run_trial

RESOURCES = TrialResources()  # test sets and FP accuracies shared by the jobs of one process

#: What to do about an OS error writing a results folder, by errno: the part of the one-line error
#: a user acts on (anything else is named by its own message).
_WRITE_FIXES = {
    errno.ENOSPC: "the disk is full: free space there (the trial resumes) or pass another --out",
    errno.EDQUOT: "the disk quota is exceeded: free space there (the trial resumes) or pass another --out",
    errno.EROFS: "the file system is read-only: pass an --out on a writable disk",
    errno.EACCES: "no permission to write there: fix its permissions or pass another --out",
    errno.EPERM: "no permission to write there: fix its permissions or pass another --out",
    errno.ENOTDIR: "a file is in the way of a folder: remove it or pass another --out",
    errno.EEXIST: "a file is in the way of a folder: remove it or pass another --out",
}


def write_problem(exc: OSError, folder: Path, doing: str = "write to") -> str:
    """One line for an OS error using ``folder``: the folder, the system's reason and the fix."""
    reason = exc.strerror or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(folder) else ""
    fix = _WRITE_FIXES.get(exc.errno, "check that the folder is usable, or pass another --out")
    return f"cannot {doing} {folder}: {reason}{where}; {fix}"


def execute_job(job: TrialJob, progress: ProgressSink | None = None, plugins: Plugins | None = None) -> JobOutcome:
    """Run (or resume) one trial in its folder, if this worker can claim it. Safe to call in any
    process or on any machine that sees the folder; never touches the leaderboard."""
    folder = TrialFolder(Path(job.trial_dir))
    env = Environment.from_dict(job.env)
    try:
        claimed = folder.claim(env.lease_timeout_s)
    except OSError as exc:  # no lease file can be made: nothing was written, the next run tries again
        return JobOutcome(job.trial_id, "failed", write_problem(exc, folder.path))
    if not claimed:
        holder = folder.holder
        who = f"{holder.owner.describe()}, heartbeat {holder.age():.0f} s ago" if holder else "another worker"
        return JobOutcome(job.trial_id, "elsewhere", f"running elsewhere ({who})")
    outcome = "interrupted"
    try:
        skip = _prepare(folder, job)
        if skip:
            outcome = f"skipped: {skip}"
            return JobOutcome(job.trial_id, "elsewhere", skip)
        result = _train(folder, job, env, progress or NullProgress(), plugins)
        outcome = f"trained: {result.status}"
        return result
    except LeaseLost as exc:
        outcome = "lease lost"
        return JobOutcome(job.trial_id, "elsewhere", str(exc))
    finally:
        folder.release(outcome)


def _prepare(folder: TrialFolder, job: TrialJob) -> str:
    """Bring the claimed folder into the state to train from; a reason to skip it, or ''."""
    state = folder.state
    if job.reset_state is not None and state == job.reset_state:
        folder.reset()
        return ""
    if state == "done":
        return "finished elsewhere"
    if state == "failed":
        if not folder.failed_resumably():
            return "failed elsewhere (see its error.json)"
        folder.clear_error()
    return ""


def _train(folder: TrialFolder, job: TrialJob, env: Environment, progress: ProgressSink,
           plugins: Plugins | None) -> JobOutcome:
    spec = folder.read_spec()
    try:
        outcome = run_trial(spec, plugins or get_plugins(), env, progress, RESOURCES, folder)
        folder.write_result(build_result(spec, outcome, env, folder.run))
    except TrialDiverged as exc:
        return _failed(folder, job, "diverged", str(exc))
    except (KeyboardInterrupt, SystemExit, LeaseLost):
        raise
    except OSError as exc:
        message = f"{type(exc).__name__}: {exc}"
        return _failed(folder, job, "failed", message, traceback.format_exc(), resumable=True)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        return _failed(folder, job, "failed", message, traceback.format_exc())
    return JobOutcome(job.trial_id, "done")


def _failed(folder: TrialFolder, job: TrialJob, status: str, message: str, trace: str | None = None,
            resumable: bool = False) -> JobOutcome:
    """Record the failure in error.json if the disk still takes it; the outcome says it either way."""
    try:
        folder.write_error(status, message, trace, resumable=resumable)
    except OSError as exc:
        message += f" (and error.json could not be written: {exc.strerror or exc})"
    if resumable:
        message += "; the trial resumes from its last checkpoint on the next run"
    return JobOutcome(job.trial_id, status, message)
