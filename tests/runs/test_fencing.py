"""Fencing: a worker suspended in the middle of a write, whose trial another worker finished
meanwhile, changes nothing when it resumes; lease generations; liveness across PID namespaces;
no write follows a symbolic link out of the folder; a spec edited after planning is refused."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from zsqbench import files
from zsqbench.errors import UserError
from zsqbench.runs.folder import TrialFolder
from zsqbench.runs.lease import LEASE, LOG, LeaseInfo, LeaseLost, LeaseOwner, TrialLease, read_lease, read_log
from zsqbench.testing import make_spec

TIMEOUT_S = 0.3


def _trial_files(folder: TrialFolder) -> dict[str, bytes]:
    """Every file of the trial but the lease bookkeeping and writes in progress, by relative path."""
    return {str(p.relative_to(folder.path)): p.read_bytes() for p in sorted(folder.path.rglob("*"))
            if p.is_file() and p.name not in (LEASE, LOG) and not p.name.endswith(".tmp")}


def _suspend(folder: TrialFolder) -> None:
    """What a VM pause or SIGSTOP does to a worker: its heartbeat stops too, until the lease times out."""
    folder.lease._stop.set()
    folder.lease._thread.join()
    time.sleep(TIMEOUT_S * 2)


def _finish(path: Path) -> None:
    """Another worker takes the stale trial over and finishes it."""
    other = TrialFolder(path)
    assert other.claim(timeout_s=TIMEOUT_S)
    try:
        other.save_checkpoint({"trial_id": path.name, "epoch": 4})
        other.write_metrics([{"epoch": e, "by": "finisher"} for e in range(5)])
        files.write_json_atomic(other.file(other.RESULT), {"trial_id": path.name, "epochs": 5}, other._fence())
    finally:
        other.release("done")


@pytest.mark.parametrize("write", ["metrics", "checkpoint", "error"])
def test_a_worker_suspended_mid_write_changes_nothing_of_the_trial_finished_meanwhile(tmp_path, monkeypatch, write):
    stale = TrialFolder(tmp_path / "run" / "trial")
    assert stale.claim(timeout_s=TIMEOUT_S)
    stale.save_checkpoint({"trial_id": "trial", "epoch": 0})
    stale.write_metrics([{"epoch": 0, "by": "stale"}])
    finished: dict[str, bytes] = {}

    def pause_then_let_another_finish(path: Path) -> None:
        monkeypatch.setattr(files, "before_fence", None)  # once: the finisher's writes go through
        _suspend(stale)
        _finish(stale.path)
        finished.update(_trial_files(stale))

    monkeypatch.setattr(files, "before_fence", pause_then_let_another_finish)
    with pytest.raises(LeaseLost, match="taken over by") as lost:
        if write == "metrics":
            stale.write_metrics([{"epoch": 0, "by": "stale"}, {"epoch": 1, "by": "stale"}])
        elif write == "checkpoint":
            stale.save_checkpoint({"trial_id": "trial", "epoch": 1})
        else:
            stale.write_error("failed", "the stale worker's error")
    assert "\n" not in str(lost.value)
    # resumed, it goes on trying to write what a trainer writes: every write is refused
    for attempt in (lambda: stale.save_checkpoint({"trial_id": "trial", "epoch": 2}),
                    lambda: stale.write_metrics([{"epoch": 2}]), stale.heartbeat):
        with pytest.raises(LeaseLost):
            attempt()
    stale.release("interrupted")
    assert finished and _trial_files(stale) == finished  # byte for byte, nothing added or replaced
    assert not list(stale.path.glob(".*.tmp")), "the stale worker's temporary files are removed"
    assert read_lease(stale.path) is None  # the finisher released; the stale worker's release did nothing


def test_each_claim_and_takeover_is_a_new_generation_recorded_in_the_lease_and_the_log(tmp_path):
    first = TrialLease(tmp_path / "t", timeout_s=TIMEOUT_S)
    assert first.acquire() and first.generation == 1
    first.release()
    second = TrialLease(tmp_path / "t", timeout_s=TIMEOUT_S)
    assert second.acquire() and second.generation == 2
    second._stop.set()
    second._thread.join()
    time.sleep(TIMEOUT_S * 2)
    third = TrialLease(tmp_path / "t", timeout_s=TIMEOUT_S)
    assert third.acquire() and third.generation == 3  # took the stale second claim over
    assert read_lease(tmp_path / "t").generation == 3
    with pytest.raises(LeaseLost):
        second.ensure_held()
    third.release()
    events = [(e["event"], e["generation"]) for e in read_log(tmp_path / "t")]
    assert events == [("claim", 1), ("release", 1), ("claim", 2), ("takeover", 3), ("release", 3)]


def test_a_lease_of_the_same_generation_but_another_token_or_vice_versa_is_not_ours(tmp_path):
    lease = TrialLease(tmp_path / "t", timeout_s=600)
    assert lease.acquire()
    try:
        info = read_lease(tmp_path / "t")
        bumped = LeaseInfo(info.owner, info.claimed_at, time.time(), info.generation + 1)
        (tmp_path / "t" / LEASE).write_text(json.dumps(bumped.to_dict()))  # our token, a later generation
        with pytest.raises(LeaseLost):
            lease.ensure_held()
    finally:
        lease.release()


def _lease_of(pid: int, namespace: str | None, heartbeat_age_s: float = 0.0) -> LeaseInfo:
    me = LeaseOwner.me()
    owner = LeaseOwner(me.host, pid, None, me.boot_id, None, 0, "other", namespace)
    now = time.time()
    return LeaseInfo(owner, now - heartbeat_age_s, now - heartbeat_age_s, 1)


def _gone_pid() -> int:
    pid = 4_000_000  # above any pid_max: no such process
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def test_a_holder_in_another_pid_namespace_on_the_same_host_is_judged_by_its_heartbeat_alone():
    me = LeaseOwner.me()
    if me.pid_namespace is None:
        pytest.skip("no /proc/self/ns/pid here")
    pid = _gone_pid()
    other_namespace = "pid:[1]" if me.pid_namespace != "pid:[1]" else "pid:[2]"
    # a container sharing this host's name: its pid means nothing here, so a fresh heartbeat keeps it
    assert _lease_of(pid, other_namespace).stale_reason(600, me) is None
    assert "no heartbeat" in _lease_of(pid, other_namespace, heartbeat_age_s=700).stale_reason(600, me)
    # in this namespace the same pid is known to be gone
    assert "is gone" in _lease_of(pid, me.pid_namespace).stale_reason(600, me)
    # a lease written before namespaces were recorded is judged as before
    assert "is gone" in _lease_of(pid, None).stale_reason(600, me)


def test_the_lease_log_is_not_followed_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the trial's\n")
    trial = tmp_path / "run" / "trial"
    trial.mkdir(parents=True)
    (trial / LOG).symlink_to(outside)
    lease = TrialLease(trial, timeout_s=600)
    assert lease.acquire()
    lease.release()
    assert outside.read_text() == "not the trial's\n"
    assert read_log(trial) == []  # nor read through the link


def test_a_spec_edited_after_planning_is_named_in_one_line(tmp_path):
    spec = make_spec("gdfq", "kd", bits=4)
    folder = TrialFolder.of(tmp_path, "run", spec.trial_id)
    folder.write_spec(spec)
    assert folder.read_spec().trial_id == spec.trial_id
    data = json.loads(folder.file(folder.SPEC).read_text())
    data["w_bits"] = data["a_bits"] = 3
    folder.file(folder.SPEC).write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"belongs to trial .*, not to its folder {spec.trial_id}") as err:
        folder.read_spec()
    assert "\n" not in str(err.value)
