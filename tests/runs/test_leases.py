"""Trial leases: one holder at a time, stale leases taken over exactly once, lost leases write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from zsqbench.runs.folder import TrialFolder
from zsqbench.runs.lease import (
    LEASE,
    LeaseInfo,
    LeaseLost,
    LeaseOwner,
    TrialLease,
    heartbeat_interval,
    read_lease,
    read_log,
)


def _foreign_lease(trial_dir, heartbeat_age_s: float, host: str = "elsewhere-node", **owner) -> None:
    """A lease file as another machine's worker would have written it."""
    fields = {"host": host, "pid": 4242, "process_start": None, "boot_id": None, "slurm_task": None,
              "slurm_restart": 0, "token": "foreign", **owner}
    now = time.time()
    info = LeaseInfo(LeaseOwner(**fields), now - heartbeat_age_s - 5, now - heartbeat_age_s)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / LEASE).write_text(json.dumps(info.to_dict()))


def test_a_held_lease_keeps_other_workers_out_until_released(tmp_path):
    first, second = TrialLease(tmp_path / "t"), TrialLease(tmp_path / "t")
    assert first.acquire()
    try:
        assert not second.acquire()
        assert second.holder.owner.token == first.me.token and second.holder.owner.pid == first.me.pid
    finally:
        first.release()
    assert read_lease(tmp_path / "t") is None
    assert second.acquire()
    second.release()
    assert [e["event"] for e in read_log(tmp_path / "t")] == ["claim", "release", "claim", "release"]


def test_a_live_lease_of_another_machine_is_respected(tmp_path):
    _foreign_lease(tmp_path / "t", heartbeat_age_s=10)
    lease = TrialLease(tmp_path / "t", timeout_s=600)
    assert not lease.acquire()
    assert lease.holder.owner.describe() == "elsewhere-node pid 4242"
    assert read_lease(tmp_path / "t").owner.token == "foreign"


def test_a_lease_without_heartbeat_past_the_timeout_is_taken_over(tmp_path):
    _foreign_lease(tmp_path / "t", heartbeat_age_s=30)
    lease = TrialLease(tmp_path / "t", timeout_s=20)
    assert lease.acquire()
    try:
        assert read_lease(tmp_path / "t").owner.token == lease.me.token
        (event,) = read_log(tmp_path / "t")
        assert event["event"] == "takeover" and event["previous"] == "elsewhere-node pid 4242"
        assert "no heartbeat for" in event["reason"]
    finally:
        lease.release()


def test_a_dead_process_on_this_host_frees_its_lease_at_once(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    me = LeaseOwner.me()
    _foreign_lease(tmp_path / "t", heartbeat_age_s=0, host=me.host, pid=dead_pid, boot_id=me.boot_id)
    lease = TrialLease(tmp_path / "t", timeout_s=3600)
    assert lease.acquire()
    lease.release()
    assert f"process {dead_pid} is gone" in read_log(tmp_path / "t")[0]["reason"]


def test_a_requeued_slurm_task_reclaims_its_own_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "777")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    _foreign_lease(tmp_path / "t", heartbeat_age_s=1, host="node-a", slurm_task="777_3", slurm_restart=0)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # another process of the same (not requeued) task
    assert not TrialLease(tmp_path / "t").acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the same task after its requeue, on another node
    lease = TrialLease(tmp_path / "t")
    assert lease.acquire()
    lease.release()
    assert "SLURM task 777_3 was requeued" in read_log(tmp_path / "t")[0]["reason"]


def test_a_corrupt_lease_file_reads_as_stale(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / LEASE).write_text('{"owner": {"ho')
    lease = TrialLease(tmp_path / "t")
    assert lease.acquire()
    lease.release()


def test_many_workers_taking_over_one_stale_lease_leave_exactly_one_holder(tmp_path):
    for attempt in range(5):
        trial = tmp_path / f"t{attempt}"
        _foreign_lease(trial, heartbeat_age_s=100)
        leases = [TrialLease(trial, timeout_s=10) for _ in range(8)]
        barrier = threading.Barrier(len(leases))
        won: dict[int, bool] = {}

        def grab(index: int, lease: TrialLease) -> None:
            barrier.wait()
            won[index] = lease.acquire()

        threads = [threading.Thread(target=grab, args=(i, lease)) for i, lease in enumerate(leases)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [leases[i] for i, w in won.items() if w]
        assert len(winners) == 1, won
        winner = winners[0]
        assert read_lease(trial).owner.token == winner.me.token
        assert [e["event"] for e in read_log(trial)] == ["takeover"]
        for lease in leases:
            lease.release()


def test_the_heartbeat_thread_keeps_a_lease_fresh(tmp_path):
    lease = TrialLease(tmp_path / "t", timeout_s=1.0)
    assert heartbeat_interval(1.0) == pytest.approx(0.1)
    assert lease.acquire()
    try:
        first = read_lease(tmp_path / "t").heartbeat_at
        time.sleep(0.5)
        assert read_lease(tmp_path / "t").heartbeat_at > first
        assert read_lease(tmp_path / "t").stale_reason(1.0) is None
    finally:
        lease.release()


def test_a_worker_whose_lease_was_taken_over_writes_nothing(tmp_path):
    folder = TrialFolder(tmp_path / "run" / "trial")
    assert folder.claim(timeout_s=600)
    try:
        folder.save_checkpoint({"trial_id": "trial", "epoch": 0})
        before = folder.file(folder.CHECKPOINT).read_bytes()
        _foreign_lease(folder.path, heartbeat_age_s=0)  # another worker took the trial over
        with pytest.raises(LeaseLost, match="taken over by elsewhere-node pid 4242"):
            folder.save_checkpoint({"trial_id": "trial", "epoch": 1})
        with pytest.raises(LeaseLost):
            folder.write_metrics([{"epoch": 0}])
        with pytest.raises(LeaseLost):
            folder.write_result({"trial_id": "trial"})
        assert folder.file(folder.CHECKPOINT).read_bytes() == before
        assert not folder.file(folder.METRICS).exists() and not folder.file(folder.RESULT).exists()
    finally:
        folder.release()
    assert read_lease(folder.path).owner.token == "foreign"  # the new owner's lease is left alone
