"""Executors: where the jobs of a grid run (this process, one process per GPU, a cluster)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from zsqbench.api.options import NoOptions, PluginOptions


@dataclass(frozen=True)
class TrialJob:
    """One trial to run, in a form that pickles to another process or machine.

    The trial folder already holds ``spec.json``; the job claims the trial's lease, then writes
    ``result.json`` (done) or ``error.json`` (failed) there, resuming from ``checkpoint.pt`` if one
    exists. Executors that change a job (a worker's device) use ``dataclasses.replace``.
    """

    trial_id: str
    trial_dir: str
    label: str
    env: dict[str, Any]  # zsqbench.runs.environment.Environment fields as plain values
    # The state the coordinator asked to start over from (--force, --retry-failed), or None. The
    # worker resets the folder only if it still finds it in that state once it holds the lease.
    reset_state: str | None = None


@dataclass(frozen=True)
class JobOutcome:
    trial_id: str
    status: str  # "done", "failed", "diverged", or "elsewhere" (another worker holds or finished it)
    error: str = ""


#: ``execute(job, progress=None)`` runs one job wherever it is called (resuming from the trial's
#: checkpoint; ``progress`` only where a display is live) and says how it ended. The core passes
#: :func:`zsqbench.grid.worker.execute_job`, a module-level function, so it pickles by reference to
#: other processes and machines (which need zsqbench installed).
ExecuteJob = Callable[..., JobOutcome]


class Executor(ABC):
    """Runs trial jobs somewhere.

    :meth:`run` calls ``execute(job)`` for each job wherever it runs, and reports every finished
    job through ``on_done(job, outcome)`` in the coordinating process, which alone writes the
    leaderboard. ``progress`` (a :class:`zsqbench.progress.ProgressSink`) shows messages.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions

    def __init__(self, options: PluginOptions, max_parallel: int | None = None) -> None:
        self.options = options
        self.max_parallel = max_parallel

    @abstractmethod
    def run(self, jobs: list[TrialJob], execute: ExecuteJob, on_done: Callable[[TrialJob, JobOutcome], None],
            progress: Any) -> None: ...
