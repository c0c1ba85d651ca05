"""One worker process per device (by default every visible GPU), trials queued across them."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch
from pydantic import Field

from zsqbench.api import Executor, JobOutcome, PluginOptions, TrialJob, hookimpl
from zsqbench.errors import UserError

_WORKER_DEVICE: str | None = None


def _init_worker(devices, threads: int) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = devices.get()
    torch.set_num_threads(threads)
    if _WORKER_DEVICE.startswith("cuda"):
        torch.cuda.set_device(torch.device(_WORKER_DEVICE))


def _run_on_worker(execute, job: TrialJob) -> JobOutcome:
    env = {**job.env, "device": _WORKER_DEVICE}
    return execute(dataclasses.replace(job, env=env))


class MultiGPUOptions(PluginOptions):
    devices: list[str] | None = Field(
        None, description="devices, one worker each (default: every visible GPU; e.g. ['cuda:0','cuda:2'])"
    )


class MultiGPUExecutor(Executor):
    name = "multi-gpu"
    description = "one worker process per visible GPU, trials queued across them"
    Options = MultiGPUOptions

    def devices(self) -> list[str]:
        devices = self.options.devices or [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if not devices:
            raise UserError("the multi-gpu executor found no CUDA GPU; use --executor local")
        if self.max_parallel:
            devices = devices[: self.max_parallel]
        return devices

    def run(self, jobs, execute, on_done, progress) -> None:
        devices = self.devices()
        ctx = mp.get_context("spawn")  # CUDA cannot be re-initialized in forked children
        queue = ctx.Manager().Queue()
        for d in devices:
            queue.put(d)
        threads = max(1, (os.cpu_count() or 1) // len(devices))
        progress.message(f"multi-gpu: {len(jobs)} trial(s) on {len(devices)} worker(s): {', '.join(devices)}")
        with ProcessPoolExecutor(len(devices), mp_context=ctx, initializer=_init_worker,
                                 initargs=(queue, threads)) as pool:
            pending = {pool.submit(_run_on_worker, execute, job): job for job in jobs}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = pending.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as exc:  # the worker process died
                        outcome = JobOutcome(job.trial_id, "failed", f"worker crashed: {exc}")
                    on_done(job, outcome)


@hookimpl
def register_executors(register) -> None:
    register(MultiGPUExecutor)
