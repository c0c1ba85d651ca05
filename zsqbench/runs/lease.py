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

Each claim or takeover starts a new *generation* of the trial's lease, one more than any the folder
has seen (its ``lease.log`` and the lease it replaces). Every write into the trial folder is fenced:
immediately before the rename that publishes a file, the holder checks that the lease on disk is
still its own, in its own generation (:func:`zsqbench.files.write_bytes_atomic`'s ``fence``); a
worker whose lease was taken over (it was suspended longer than the timeout) stops with
:class:`LeaseLost` and replaces nothing, however long it was suspended in the middle of a write.
What remains is the instant between that check and the rename itself (a system call): no lock
a plain file system offers closes it, so two writers need a suspension of exactly that instant
*and* a takeover within it to collide. Every claim, takeover and release is appended to
``lease.log``, one JSON line each, by the holder only (opened without following a symbolic link).

A holder on the same host is judged by its pid only when it runs in the same PID namespace (the
lease records it): containers that share a host name (``--net=host``) see each other's processes as
absent, so a holder in another namespace is judged by its heartbeat alone.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from zsqbench.runs.lease_owner import LeaseOwner, pid_alive

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


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as read from disk."""

    owner: LeaseOwner
    claimed_at: float
    heartbeat_at: float
    generation: int = 0  # 0: a lease written before generations were recorded

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.heartbeat_at)

    def stale_reason(self, timeout_s: float, me: LeaseOwner | None = None, now: float | None = None) -> str | None:
        """Why this lease no longer protects a live worker, or None while it does."""
        me = me or LeaseOwner.me()
        if self.age(now) > timeout_s:
            return f"no heartbeat for {self.age(now):.0f} s (timeout {timeout_s:.0f} s)"
        if self.owner.host == me.host and self.owner.same_pid_namespace(me):
            if self.owner.boot_id and me.boot_id and self.owner.boot_id != me.boot_id:
                return "its host rebooted since"
            if not pid_alive(self.owner.pid, self.owner.process_start):
                return f"process {self.owner.pid} is gone"
        if self.owner.slurm_task and self.owner.slurm_task == me.slurm_task \
                and me.slurm_restart > self.owner.slurm_restart:
            return f"SLURM task {me.slurm_task} was requeued (restart {me.slurm_restart})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"owner": asdict(self.owner), "claimed_at": self.claimed_at, "heartbeat_at": self.heartbeat_at,
                "generation": self.generation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LeaseInfo":
        generation = data.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise ValueError("the lease generation is not a non-negative integer")
        return cls(LeaseOwner(**data["owner"]), float(data["claimed_at"]), float(data["heartbeat_at"]), generation)


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


@contextmanager
def _takeover_lock(directory: Path, token: str) -> Iterator[bool]:
    """The folder's takeover lock, for replacing or removing a stale lease: yields whether this
    worker holds it (False: another worker is taking the trial over right now). A lock older than
    :data:`TAKEOVER_STALE_S` was left by a worker that died mid-takeover and is broken."""
    takeover = directory / TAKEOVER
    held = _link_exclusive(directory, TAKEOVER, token)
    if not held:
        try:
            if time.time() - takeover.stat().st_mtime > TAKEOVER_STALE_S:
                takeover.unlink(missing_ok=True)
                held = _link_exclusive(directory, TAKEOVER, token)
        except FileNotFoundError:  # released meanwhile
            held = _link_exclusive(directory, TAKEOVER, token)
    try:
        yield held
    finally:
        if held:
            takeover.unlink(missing_ok=True)


class TrialLease:
    """This worker's claim on one trial folder."""

    def __init__(self, trial_dir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.dir = Path(trial_dir)
        self.timeout_s = timeout_s
        self.me = LeaseOwner.me()
        self.held = False
        self.lost: str | None = None
        self.holder: LeaseInfo | None = None  # the live lease that kept us out, after a failed acquire
        self.generation = 0  # this claim's generation, once held
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
            self.generation = last_generation(self.dir) + 1
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
        with _takeover_lock(self.dir, self.me.token) as held:
            if not held:
                return False  # another worker is taking it over right now
            current = read_lease(self.dir)
            if current is not None and current.owner.token != stale.owner.token:
                return False  # someone took it over (or it was released and re-claimed) meanwhile
            self.generation = max(last_generation(self.dir), stale.generation) + 1
            if current is None:  # released meanwhile: an ordinary claim
                if not _link_exclusive(self.dir, LEASE, self._text()):
                    return False
            else:  # replaced in one step, so no other worker can claim it in between
                os.replace(_write_temp(self.dir, self._text()), self.dir / LEASE)
        self._start("takeover", previous=stale.owner.describe(), reason=reason)
        return True

    def _text(self) -> str:
        now = time.time()
        return json.dumps(LeaseInfo(self.me, self._claimed_at, now, self.generation).to_dict())

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
                self._check(read_lease(self.dir))  # compare, then swap at once
                os.replace(tmp, self.dir / LEASE)
            finally:
                tmp.unlink(missing_ok=True)

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLost` unless this worker still holds the trial (checked on disk)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if not self.held:
            raise LeaseLost(f"trial {self.dir.name} is not claimed by this worker")
        self._check(read_lease(self.dir))

    def _check(self, current: LeaseInfo | None) -> None:
        """Raise :class:`LeaseLost` unless ``current`` (the lease on disk) is this claim, generation included."""
        if current is None or current.owner.token != self.me.token or current.generation != self.generation:
            self._mark_lost(current)

    def _mark_lost(self, current: LeaseInfo | None) -> None:
        who = current.owner.describe() if current else "nobody (the lease file was removed)"
        self.lost = (f"lost the lease of trial {self.dir.name}: it was taken over by {who}; this worker "
                     "stopped writing and changed nothing further")
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
                  "token": self.me.token, "generation": self.generation, **details}
        try:
            fd = os.open(self.dir / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError:
            pass  # the log is for people; a full disk must not fail the trial here

    def __enter__(self) -> "TrialLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def clear_stale_lease(trial_dir: Path, timeout_s: float) -> str | None:
    """Remove a finished trial's stale lease (its worker was killed between writing the result and
    releasing), under the takeover lock so no worker claiming the trial at the same moment loses
    its own; returns why it was stale, or None when there was nothing to remove."""
    trial_dir = Path(trial_dir)
    stale = read_lease(trial_dir)
    me = LeaseOwner.me()
    reason = stale.stale_reason(timeout_s, me) if stale is not None else None
    if reason is None:
        return None
    with _takeover_lock(trial_dir, me.token) as held:
        current = read_lease(trial_dir) if held else None
        if current is None or current.owner.token != stale.owner.token:
            return None  # another worker's takeover, or taken over (or released) meanwhile: not ours to remove
        (trial_dir / LEASE).unlink(missing_ok=True)
    return reason


def last_generation(trial_dir: Path) -> int:
    """The highest lease generation this folder has seen: in its log and its current lease (0: none)."""
    seen = [e["generation"] for e in read_log(trial_dir)
            if isinstance(e.get("generation"), int) and not isinstance(e.get("generation"), bool)]
    current = read_lease(trial_dir)
    return max([0, *seen, current.generation if current else 0])


def read_log(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's lease events (claim, takeover, release), oldest first. A log that is a symbolic
    link is not followed (nothing outside the folder is read as its log)."""
    try:
        fd = os.open(Path(trial_dir) / LOG, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return []
    with os.fdopen(fd) as fh:
        lines = fh.read().splitlines()
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return events
