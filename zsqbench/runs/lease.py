"""Trial leases: at most one worker trains a trial at a time, on one machine or many.

A worker claims a trial by creating ``lease.json`` in its folder: the file is written whole to a
temporary name and hard-linked into place, which fails if a lease exists (``link`` is atomic on
local file systems and on NFS, where ``O_EXCL`` and ``flock`` have been unreliable). The lease names
its owner (host, pid, process start, SLURM task) and a heartbeat that the owner refreshes every
``heartbeat_s`` seconds from a background thread and at every epoch. A lease is *stale* when its
heartbeat is older than ``timeout_s`` (clocks of the machines sharing a folder are assumed to agree
far better than that), when its owner process is gone from this same host (or the host rebooted),
or when it belongs to this same SLURM task (a requeued task re-claims its own trial at once). A
stale lease is taken over under a short-lived takeover lock, so two workers never both take it.

Before every write into the trial folder the holder checks that the lease is still its own; a
worker whose lease was taken over (it was suspended longer than the timeout) stops with
:class:`LeaseLost` instead of writing beside the new owner. Every claim, takeover and release is
appended to ``lease.log``, one JSON line each, by the holder only.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LEASE = "lease.json"
LOG = "lease.log"
TAKEOVER = "lease.takeover"
TIMEOUT_ENV = "ZSQBENCH_LEASE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
#: A takeover lock older than this was left by a worker that died in the middle of a takeover.
TAKEOVER_STALE_S = 60.0


class LeaseLost(RuntimeError):
    """This worker's lease was taken over by another; it must not write to the trial any more."""


def lease_timeout_from_env() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        from zsqbench.errors import UserError

        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; unset it or pass e.g. 600")
    return value


def heartbeat_interval(timeout_s: float) -> float:
    """Often enough that a few missed beats (a slow file system) never make a live lease look stale."""
    return max(0.05, min(30.0, timeout_s / 10))


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _slurm_task() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if task else job


def _slurm_restart() -> int:
    """How often SLURM requeued this task (preemption, timeout): 0 on the first start."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class LeaseOwner:
    host: str
    pid: int
    process_start: str | None
    boot_id: str | None
    slurm_task: str | None
    slurm_restart: int
    token: str

    @classmethod
    def me(cls) -> "LeaseOwner":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid), _boot_id(), _slurm_task(), _slurm_restart(),
                   uuid.uuid4().hex)

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}" + (f" (SLURM {self.slurm_task})" if self.slurm_task else "")


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as read from disk."""

    owner: LeaseOwner
    claimed_at: float
    heartbeat_at: float

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.heartbeat_at)

    def stale_reason(self, timeout_s: float, me: LeaseOwner | None = None, now: float | None = None) -> str | None:
        """Why this lease no longer protects a live worker, or None while it does."""
        me = me or LeaseOwner.me()
        if self.age(now) > timeout_s:
            return f"no heartbeat for {self.age(now):.0f} s (timeout {timeout_s:.0f} s)"
        if self.owner.host == me.host:
            if self.owner.boot_id and me.boot_id and self.owner.boot_id != me.boot_id:
                return "its host rebooted since"
            if not _pid_alive(self.owner.pid, self.owner.process_start):
                return f"process {self.owner.pid} is gone"
        if self.owner.slurm_task and self.owner.slurm_task == me.slurm_task \
                and me.slurm_restart > self.owner.slurm_restart:
            return f"SLURM task {me.slurm_task} was requeued (restart {me.slurm_restart})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"owner": asdict(self.owner), "claimed_at": self.claimed_at, "heartbeat_at": self.heartbeat_at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LeaseInfo":
        return cls(LeaseOwner(**data["owner"]), float(data["claimed_at"]), float(data["heartbeat_at"]))


def _pid_alive(pid: int, process_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    if process_start is not None:
        now = _process_start(pid)
        return now is None or now == process_start
    return True


def read_lease(trial_dir: Path) -> LeaseInfo | None:
    """The trial's lease, None if it has none. A lease that cannot be parsed (written by hand or
    cut by a full disk) is reported with a zero heartbeat, so it reads as stale."""
    path = Path(trial_dir) / LEASE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return LeaseInfo.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError):
        return LeaseInfo(LeaseOwner("?", -1, None, None, None, 0, "corrupt"), 0.0, 0.0)


def _write_temp(directory: Path, text: str) -> Path:
    tmp = directory / f".{LEASE}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def _link_exclusive(directory: Path, name: str, text: str) -> bool:
    """Create ``name`` with this content, or return False if it exists (atomically, NFS included)."""
    tmp = _write_temp(directory, text)
    try:
        os.link(tmp, directory / name)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class TrialLease:
    """This worker's claim on one trial folder."""

    def __init__(self, trial_dir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.dir = Path(trial_dir)
        self.timeout_s = timeout_s
        self.me = LeaseOwner.me()
        self.held = False
        self.lost: str | None = None
        self.holder: LeaseInfo | None = None  # the live lease that kept us out, after a failed acquire
        self._claimed_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- claiming
    def acquire(self) -> bool:
        """Claim the trial: True if this worker now holds it, False if a live lease of another worker
        does (then :attr:`holder` names it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._claimed_at = time.time()
        for _ in range(3):  # a lease released between our attempt and our read: try again
            if _link_exclusive(self.dir, LEASE, self._text()):
                self._start("claim")
                return True
            current = read_lease(self.dir)
            if current is None:
                continue
            reason = current.stale_reason(self.timeout_s, self.me)
            if reason is None:
                self.holder = current
                return False
            if self._take_over(current, reason):
                return True
            self.holder = read_lease(self.dir) or current
            return False
        return False

    def _take_over(self, stale: LeaseInfo, reason: str) -> bool:
        takeover = self.dir / TAKEOVER
        if not _link_exclusive(self.dir, TAKEOVER, self.me.token):
            try:
                if time.time() - takeover.stat().st_mtime <= TAKEOVER_STALE_S:
                    return False  # another worker is taking it over right now
                takeover.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            if not _link_exclusive(self.dir, TAKEOVER, self.me.token):
                return False
        try:
            current = read_lease(self.dir)
            if current is not None and current.owner.token != stale.owner.token:
                return False  # someone took it over (or it was released and re-claimed) meanwhile
            if current is None:  # released meanwhile: an ordinary claim
                if not _link_exclusive(self.dir, LEASE, self._text()):
                    return False
            else:  # replaced in one step, so no other worker can claim it in between
                os.replace(_write_temp(self.dir, self._text()), self.dir / LEASE)
        finally:
            takeover.unlink(missing_ok=True)
        self._start("takeover", previous=stale.owner.describe(), reason=reason)
        return True

    def _text(self) -> str:
        now = time.time()
        return json.dumps(LeaseInfo(self.me, self._claimed_at, now).to_dict())

    def _start(self, event: str, **details: Any) -> None:
        self.held = True
        self._log(event, **details)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat-{self.dir.name}", daemon=True)
        self._thread.start()

    # -- holding
    def _beat(self) -> None:
        interval = heartbeat_interval(self.timeout_s)
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except LeaseLost:
                return
            except OSError:
                continue  # a full disk or a hiccup of a network file system: try again next beat

    def refresh(self) -> None:
        """Renew the heartbeat; raise :class:`LeaseLost` if another worker holds the trial now."""
        with self._lock:
            if self.lost or not self.held:
                self.ensure_held()
            tmp = _write_temp(self.dir, self._text())
            try:
                current = read_lease(self.dir)
                if current is None or current.owner.token != self.me.token:
                    self._mark_lost(current)
                os.replace(tmp, self.dir / LEASE)
            finally:
                tmp.unlink(missing_ok=True)

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLost` unless this worker still holds the trial (checked on disk)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if not self.held:
            raise LeaseLost(f"trial {self.dir.name} is not claimed by this worker")
        current = read_lease(self.dir)
        if current is None or current.owner.token != self.me.token:
            self._mark_lost(current)

    def _mark_lost(self, current: LeaseInfo | None) -> None:
        who = current.owner.describe() if current else "nobody (the lease file was removed)"
        self.lost = f"the lease on trial {self.dir.name} was taken over by {who}; this worker stopped writing"
        self.held = False
        raise LeaseLost(self.lost)

    def release(self, outcome: str | None = None) -> None:
        """Give the trial up (done, failed or interrupted); only removes a lease that is still ours.
        ``outcome`` is logged with the release: it tells a claim that trained from one that found the
        trial finished meanwhile and only looked."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            if not self.held:
                return
            self.held = False
            current = read_lease(self.dir)
            if current is not None and current.owner.token == self.me.token:
                self._log("release", **({"outcome": outcome} if outcome else {}))
                (self.dir / LEASE).unlink(missing_ok=True)

    def _log(self, event: str, **details: Any) -> None:
        record = {"event": event, "time": time.time(), "host": self.me.host, "pid": self.me.pid,
                  "token": self.me.token, **details}
        try:
            with open(self.dir / LOG, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError:
            pass  # the log is for people; a full disk must not fail the trial here

    def __enter__(self) -> "TrialLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_log(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's lease events (claim, takeover, release), oldest first."""
    path = Path(trial_dir) / LOG
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return events
