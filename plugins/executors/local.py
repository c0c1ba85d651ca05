"""Run trials one after another in this process, with the live progress display."""

from __future__ import annotations

from zsqbench.api import Executor, hookimpl


class LocalExecutor(Executor):
    name = "local"
    description = "sequential, in this process (default)"

    def run(self, jobs, execute, on_done, progress) -> None:
        for job in jobs:
            progress.message(f"{job.label}: trial {job.trial_id}")
            on_done(job, execute(job, progress))  # in this process: the live progress display


@hookimpl
def register_executors(register) -> None:
    register(LocalExecutor)
