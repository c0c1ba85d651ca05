"""Ray: one task per trial (one GPU each by default) on an existing cluster or a local instance.

Install with ``pip install "zsqbench[ray]"``. Every worker must see the results folder and
the data root (a shared filesystem), as with SLURM.
"""

from __future__ import annotations

from pydantic import Field

from zsqbench.api import Executor, JobOutcome, PluginOptions, hookimpl
from zsqbench.errors import UserError


class RayOptions(PluginOptions):
    address: str | None = Field(None, description="Ray cluster address ('auto', 'ray://host:10001'); None = start a local instance")
    gpus_per_trial: float = Field(1.0, ge=0, description="GPUs each trial task requests (0 on CPU-only clusters)")
    cpus_per_trial: float = Field(1.0, ge=0)
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a locally started instance")


def _execute(execute, job):
    return execute(job)


class RayExecutor(Executor):
    name = "ray"
    description = "one Ray task per trial on a Ray cluster (pip install 'zsqbench[ray]')"
    Options = RayOptions

    def run(self, jobs, execute, on_done, progress) -> None:
        try:
            import ray
        except ImportError:
            raise UserError('the ray executor needs Ray: pip install "zsqbench[ray]"') from None
        o: RayOptions = self.options  # type: ignore[assignment]
        started_here = not ray.is_initialized()
        if started_here:
            kwargs = {"include_dashboard": False, "log_to_driver": False}
            if o.address is None and o.num_cpus:
                kwargs["num_cpus"] = o.num_cpus
            ray.init(address=o.address, **kwargs)
        try:
            task = ray.remote(num_gpus=o.gpus_per_trial, num_cpus=o.cpus_per_trial, max_retries=1)(_execute)
            limit = self.max_parallel or len(jobs)
            queue = list(jobs)
            in_flight: dict = {}
            progress.message(f"ray: {len(jobs)} trial(s), at most {limit} at once")
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    job = queue.pop(0)
                    in_flight[task.remote(execute, job)] = job
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    job = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # the task died (worker crash, node loss)
                        outcome = JobOutcome(job.trial_id, "failed", f"ray task failed: {type(exc).__name__}")
                    on_done(job, outcome)
        finally:
            if started_here:
                ray.shutdown()


@hookimpl
def register_executors(register) -> None:
    register(RayExecutor)
