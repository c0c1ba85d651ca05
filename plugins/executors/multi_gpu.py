"""Worker processes on devices (by default one on every visible GPU), trials queued across them.

A CIFAR ResNet-20 trial uses a fraction of a modern GPU, so ``trials_per_gpu`` starts several
workers on each device: each is pinned to its device for its whole life, and the trials' leases
decide, as always, which worker trains which trial."""

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

    trials_per_gpu: int = Field(
        1, ge=1, description="worker processes per device, each training one trial at a time (small models leave "
                             "a GPU mostly idle with one; `benchmarks/device_check.sh` measures 1, 2, 4 and 8)"
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


def worker_devices(devices: list[str], trials_per_gpu: int = 1, max_parallel: int | None = None) -> list[str]:
    """The device of each worker: ``trials_per_gpu`` on each device, dealt round the devices (so that
    ``max_parallel`` caps the workers while still spreading them), at most ``max_parallel`` in all."""
    slots = [device for _ in range(trials_per_gpu) for device in devices]
    return slots[:max_parallel] if max_parallel else slots


def describe_workers(slots: list[str]) -> str:
    """``cuda:0, cuda:1`` (one worker each), or ``cuda:0 x2, cuda:1 x2`` (several on a device)."""
    counts = {device: slots.count(device) for device in slots}
    return ", ".join(device if n == 1 else f"{device} x{n}" for device, n in counts.items())


class MultiGPUExecutor(Executor):
    name = "multi-gpu"
    description = "worker processes on the visible GPUs (trials_per_gpu each, default 1), trials queued across them"
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
        return devices

    def worker_devices(self) -> list[str]:
        """One entry per worker process: its device (:func:`worker_devices`)."""
        return worker_devices(self.devices(), self.options.trials_per_gpu, self.max_parallel)

    def run(self, jobs, execute, on_done, progress) -> None:
        slots = self.worker_devices()
        ctx = mp.get_context("spawn")  # CUDA cannot be re-initialized in forked children
        queue = ctx.Manager().Queue()
        for d in slots:  # each worker takes one slot when it starts and keeps that device
            queue.put(d)
        threads = max(1, (os.cpu_count() or 1) // len(slots))
        progress.message(f"multi-gpu: {len(jobs)} trial(s) on {len(slots)} worker(s): {describe_workers(slots)}")
        with ProcessPoolExecutor(len(slots), mp_context=ctx, initializer=_init_worker,
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
