"""Who holds a trial's lease, and whether that process is still alive: host, pid (with its start
time, which tells a reused pid apart, and its PID namespace, outside which a pid means nothing),
boot id and SLURM task. Its own module so that the lease protocol (:mod:`zsqbench.runs.lease`)
reads as the protocol."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path


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


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[inode]``): pids mean something only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


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
    pid_namespace: str | None = None  # absent from leases written before it was recorded

    @classmethod
    def me(cls) -> "LeaseOwner":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid), _boot_id(), _slurm_task(), _slurm_restart(),
                   uuid.uuid4().hex, _pid_namespace())

    def same_pid_namespace(self, other: "LeaseOwner") -> bool:
        """Whether this owner's pid can be looked up from ``other``'s process (unknown: assumed so,
        as before namespaces were recorded)."""
        return self.pid_namespace is None or other.pid_namespace is None or self.pid_namespace == other.pid_namespace

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}" + (f" (SLURM {self.slurm_task})" if self.slurm_task else "")


def pid_alive(pid: int, process_start: str | None) -> bool:
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
