"""SLURM through submitit: a job array, one GPU per task, requeued on preemption.

A preempted or timed-out task is requeued by submitit; the trial resumes from its last
epoch checkpoint, so no finished epoch is lost. Install with ``pip install "zsqbench[slurm]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from zsqbench.api import Executor, JobOutcome, PluginOptions, TrialJob, hookimpl
from zsqbench.errors import UserError


class SubmititOptions(PluginOptions):
    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None, description="None = auto-detect SLURM; 'local' runs tasks as local processes (testing)"
    )
    partition: str | None = None
    timeout_min: int = Field(24 * 60, ge=1)
    gpus_per_task: int = Field(1, ge=0)
    cpus_per_task: int = Field(4, ge=1)
    mem_gb: int | None = None
    log_dir: str | None = Field(None, description="submitit logs (default: <results>/.submitit)")
    slurm_additional_parameters: dict[str, Any] = Field(default_factory=dict)


class _TrialTask:
    """The callable submitit pickles; checkpoint() makes a preempted task requeue itself."""

    def __init__(self, execute) -> None:
        self.execute = execute

    def __call__(self, job: TrialJob) -> JobOutcome:
        return self.execute(job)

    def checkpoint(self, job: TrialJob):
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)  # resumes from the trial's checkpoint


class SubmititExecutor(Executor):
    name = "slurm"
    description = "SLURM job arrays through submitit (pip install 'zsqbench[slurm]')"
    Options = SubmititOptions

    def run(self, jobs, execute, on_done, progress) -> None:
        try:
            import submitit
        except ImportError:
            raise UserError('the slurm executor needs submitit: pip install "zsqbench[slurm]"') from None
        o: SubmititOptions = self.options  # type: ignore[assignment]
        log_dir = Path(o.log_dir) if o.log_dir else Path(jobs[0].trial_dir).parent.parent / ".submitit"
        executor = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster=o.cluster)
        params: dict[str, Any] = {"timeout_min": o.timeout_min, "cpus_per_task": o.cpus_per_task,
                                  "tasks_per_node": 1, "nodes": 1}
        if o.gpus_per_task:
            params["gpus_per_node"] = o.gpus_per_task
        if o.mem_gb:
            params["mem_gb"] = o.mem_gb
        if executor.cluster == "slurm":
            params["slurm_array_parallelism"] = self.max_parallel or len(jobs)
            if o.partition:
                params["slurm_partition"] = o.partition
            if o.slurm_additional_parameters:
                params["slurm_additional_parameters"] = o.slurm_additional_parameters
        executor.update_parameters(**params)
        submitted = executor.map_array(_TrialTask(execute), jobs)
        progress.message(f"slurm: submitted {len(submitted)} task(s) ({executor.cluster}); logs in {log_dir}")
        by_id = {id(s): job for s, job in zip(submitted, jobs)}
        for sub in submitit.helpers.as_completed(submitted):
            job = by_id[id(sub)]
            try:
                outcome = sub.result()
            except Exception as exc:  # the task failed outside the trial (node failure, ...)
                outcome = JobOutcome(job.trial_id, "failed", f"submitit task failed: {str(exc).splitlines()[-1]}")
            on_done(job, outcome)


@hookimpl
def register_executors(register) -> None:
    register(SubmititExecutor)
