"""Run trials one after another in this process, with the live progress display."""

from __future__ import annotations

from zsqbench.api import Executor, hookimpl
from zsqbench.grid.runner import execute_job


class LocalExecutor(Executor):
    name = "local"
    description = "sequential, in this process (default)"

    def run(self, jobs, on_done, progress) -> None:
        for job in jobs:
            progress.message(f"{job.label}: trial {job.trial_id}")
            on_done(job, execute_job(job, progress))


@hookimpl
def register_executors(register) -> None:
    register(LocalExecutor)
