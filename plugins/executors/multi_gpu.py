"""One worker process per device (by default every visible GPU), trials queued across them."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch
from pydantic import Field, field_validator

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

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, devices: list[str] | None) -> list[str] | None:
        """A device a worker cannot use is refused while planning, not as a crash of every worker."""
        for name in devices or []:
            try:
                kind = torch.device(name).type
            except RuntimeError:
                kind = None
            if kind not in ("cuda", "cpu"):
                raise ValueError(f"'{name}' is not a device a worker can use; write 'cuda:N' (or 'cpu'), "
                                 "e.g. devices=['cuda:0','cuda:1']")
        return devices


class MultiGPUExecutor(Executor):
    name = "multi-gpu"
    description = "one worker process per visible GPU, trials queued across them"
    Options = MultiGPUOptions

    def devices(self) -> list[str]:
        visible = torch.cuda.device_count()
        devices = self.options.devices or [f"cuda:{i}" for i in range(visible)]
        if not devices:
            raise UserError("the multi-gpu executor found no CUDA GPU; use --executor local")
        missing = [d for d in devices if torch.device(d).type == "cuda" and (torch.device(d).index or 0) >= visible]
        if missing:
            raise UserError(f"multi-gpu.devices: {', '.join(missing)} not visible here ({visible} CUDA GPU(s)); "
                            "list visible GPUs (cuda:0 ...) or leave the option out for all of them")
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
