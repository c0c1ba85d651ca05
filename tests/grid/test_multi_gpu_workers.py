"""The multi-GPU executor's workers on fake device lists (no GPU needed): how many on each device,
which device each keeps, and that one worker per device (the default) is what it always was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from zsqbench.api import JobOutcome, TrialJob
from zsqbench.api.options import fill_options
from zsqbench.errors import UserError
from zsqbench_plugins.executors import multi_gpu
from zsqbench_plugins.executors.multi_gpu import MultiGPUExecutor, MultiGPUOptions, describe_workers, worker_devices


def _executor(max_parallel: int | None = None, **options) -> MultiGPUExecutor:
    return MultiGPUExecutor(MultiGPUOptions(**options), max_parallel)


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(multi_gpu.torch.cuda, "device_count", lambda: 4)


def test_one_worker_per_device_by_default(four_gpus):
    assert _executor().worker_devices() == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert _executor(devices=["cuda:2", "cuda:0"]).worker_devices() == ["cuda:2", "cuda:0"]
    assert _executor(max_parallel=2).worker_devices() == ["cuda:0", "cuda:1"]  # as before: the first devices
    assert describe_workers(["cuda:0", "cuda:1"]) == "cuda:0, cuda:1"


def test_trials_per_gpu_deals_workers_round_the_devices(four_gpus):
    slots = _executor(trials_per_gpu=3).worker_devices()
    assert len(slots) == 12 and all(slots.count(f"cuda:{i}") == 3 for i in range(4))
    assert slots[:4] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # the first workers spread over all devices
    # --max-parallel caps the workers and still spreads them
    assert _executor(max_parallel=6, trials_per_gpu=2).worker_devices() == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert _executor(devices=["cuda:1"], trials_per_gpu=4).worker_devices() == ["cuda:1"] * 4
    assert describe_workers(worker_devices(["cuda:0", "cuda:1"], 2)) == "cuda:0 x2, cuda:1 x2"


def test_trials_per_gpu_is_a_positive_integer(four_gpus):
    assert fill_options(MultiGPUExecutor, {"trials_per_gpu": 2}, "executor", "multi-gpu")["trials_per_gpu"] == 2
    for bad in (0, -1, "two"):
        with pytest.raises(UserError, match="trials_per_gpu"):
            fill_options(MultiGPUExecutor, {"trials_per_gpu": bad}, "executor", "multi-gpu")


def test_no_gpu_is_still_refused(monkeypatch):
    monkeypatch.setattr(multi_gpu.torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="no CUDA GPU"):
        _executor(trials_per_gpu=2).worker_devices()


def _record_worker(job: TrialJob, progress=None) -> JobOutcome:
    """A job that writes which device its worker holds and the worker's process id (module level:
    it pickles by reference into the spawned workers)."""
    Path(job.trial_dir).write_text(f"{job.env['device']} {os.getpid()}")
    return JobOutcome(job.trial_id, "done")


class _Quiet:
    def message(self, text: str) -> None:
        self.text = text


@pytest.mark.slow
def test_each_worker_keeps_one_device_and_a_device_holds_trials_per_gpu_workers(tmp_path):
    """Two fake devices (``cpu:0``, ``cpu:1``: a worker pins a CUDA device only) with two workers
    each: every worker process stays on the device it took, and no device gets more than two."""
    jobs = [TrialJob(f"t{i}", str(tmp_path / f"t{i}"), f"t{i}", {"device": "cpu"}) for i in range(12)]
    done: list[JobOutcome] = []
    progress = _Quiet()
    executor = _executor(devices=["cpu:0", "cpu:1"], trials_per_gpu=2)
    executor.run(jobs, _record_worker, lambda job, outcome: done.append(outcome), progress)
    assert sorted(o.trial_id for o in done) == sorted(j.trial_id for j in jobs)
    assert all(o.status == "done" for o in done)
    assert progress.text == "multi-gpu: 12 trial(s) on 4 worker(s): cpu:0 x2, cpu:1 x2"
    seen = [(tmp_path / j.trial_id).read_text().split() for j in jobs]
    device_of: dict[str, set[str]] = {}
    for device, pid in seen:
        device_of.setdefault(pid, set()).add(device)
    assert all(len(devices) == 1 for devices in device_of.values())  # pinned for the worker's life
    per_device = {d: sum(1 for ds in device_of.values() if d in ds) for d in ("cpu:0", "cpu:1")}
    # at most trials_per_gpu workers per device (which workers get jobs at all depends on how fast
    # the pool starts them: the dealing itself is checked in the assignment test above)
    assert all(n <= 2 for n in per_device.values()) and len(device_of) <= 4


def test_a_worker_pins_its_cuda_device(monkeypatch):
    """What a worker does with its slot: the CUDA device becomes its current one; CPU slots pin nothing."""
    pinned = []
    monkeypatch.setattr(multi_gpu.torch.cuda, "set_device", lambda d: pinned.append(str(d)))
    threads = torch.get_num_threads()

    class Slots:
        def __init__(self, items):
            self.items = list(items)

        def get(self):
            return self.items.pop(0)

    try:
        slots = Slots(["cuda:1", "cpu:0"])
        multi_gpu._init_worker(slots, 1)
        assert multi_gpu._WORKER_DEVICE == "cuda:1" and pinned == ["cuda:1"]
        multi_gpu._init_worker(slots, 1)
        assert multi_gpu._WORKER_DEVICE == "cpu:0" and pinned == ["cuda:1"]
    finally:
        multi_gpu._WORKER_DEVICE = None
        torch.set_num_threads(threads)
