"""A trial's folder on disk, owned by one class: its file names, its state, its atomic writes.

``<results>/<run>/<trial_id>/`` holds ``spec.json`` (what the trial is), ``metrics.jsonl`` (one
line per finished epoch), ``checkpoint.pt`` (every epoch, for resuming), ``snapshots/`` (the
student after some epochs, for analysis), ``analysis/`` (diagnostics computed later) and finally
``result.json`` (the done marker) or ``error.json`` (failed or diverged), and while a worker trains
it, ``lease.json`` (:mod:`zsqbench.runs.lease`). Every file is written atomically, so a reader
never sees half of one and a killed process (or a full disk) leaves the previous version; a folder
claimed through :meth:`TrialFolder.claim` refuses every write once its lease is lost.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zsqbench.api.spec import TrialSpec, spec_trial_id
from zsqbench.errors import UserError, first_validation_error
from zsqbench.files import read_json_object, write_bytes_atomic, write_json_atomic, write_text_atomic
from zsqbench.runs import checkpoint
from zsqbench.runs.lease import LeaseInfo, TrialLease, read_lease
from zsqbench.runs.migrations import SCHEMA_FIELD, SPEC_VERSION, upgrade
from zsqbench.runs.result_file import RESULT_NAME, ResultFile, check_trial_id, validate_result

STATES = ("done", "failed", "incomplete", "pending")
_SNAPSHOT = re.compile(r"epoch_(\d+)\.pt$")


class TrialFolder:
    SPEC = "spec.json"
    RESULT = RESULT_NAME
    ERROR = "error.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    SNAPSHOTS = "snapshots"
    ANALYSIS = "analysis"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lease: TrialLease | None = None
        self.holder: LeaseInfo | None = None  # after a failed claim: the live lease that kept us out

    @classmethod
    def of(cls, out: Path, run: str, trial_id: str) -> "TrialFolder":
        return cls(Path(out) / run / trial_id)

    @classmethod
    def find(cls, results: Path) -> list["TrialFolder"]:
        """Every trial folder (one with a spec.json) under a results folder, sorted."""
        if not Path(results).is_dir():
            raise UserError(f"results folder not found: {results}; pass the --out folder of `zsqbench run`")
        return [cls(p.parent) for p in sorted(Path(results).glob(f"*/*/{cls.SPEC}"))]

    @property
    def trial_id(self) -> str:
        return self.path.name

    @property
    def run(self) -> str:
        return self.path.parent.name

    def file(self, name: str) -> Path:
        return self.path / name

    # -- state
    @property
    def state(self) -> str:
        """done (result.json), failed (error.json), incomplete (started) or pending (no folder)."""
        if self.file(self.RESULT).is_file():
            return "done"
        if self.file(self.ERROR).is_file():
            return "failed"
        if self.path.is_dir():
            return "incomplete"
        return "pending"

    def reset(self) -> None:
        """Forget an earlier attempt (``--force``, ``--retry-failed``); the spec stays."""
        self._check_writer()
        for name in (self.RESULT, self.ERROR, self.METRICS, self.CHECKPOINT):
            self.file(name).unlink(missing_ok=True)

    # -- the lease: one writer at a time
    def claim(self, timeout_s: float) -> bool:
        """Claim the trial for this worker (False: a live lease of another worker holds it). From
        then on every write checks that the lease is still ours; :meth:`release` gives it up."""
        lease = TrialLease(self.path, timeout_s)
        if not lease.acquire():
            self.lease = None
            self.holder = lease.holder
            return False
        self.lease = lease
        return True

    def release(self, outcome: str | None = None) -> None:
        """Give the trial up; ``outcome`` (what this holder did with it) goes into lease.log."""
        if self.lease is not None:
            self.lease.release(outcome)
            self.lease = None

    def read_lease(self) -> LeaseInfo | None:
        return read_lease(self.path)

    def heartbeat(self) -> None:
        """Renew the lease (every epoch, besides the background heartbeat)."""
        if self.lease is not None:
            self.lease.refresh()

    def _check_writer(self) -> None:
        if self.lease is not None:
            self.lease.ensure_held()

    def _fence(self) -> Callable[[], None] | None:
        """The check every write runs again immediately before its rename (:func:`zsqbench.files.write_bytes_atomic`):
        the lease is still this worker's, in the generation it claimed. (Each write also checks before
        it starts, so a lost lease costs no serialization.) None for a folder written without a lease."""
        return self._check_writer if self.lease is not None else None

    # -- spec
    def write_spec(self, spec: TrialSpec) -> None:
        """The spec in the current file format (its ``schema_version`` first; not part of the id)."""
        self._check_writer()
        write_json_atomic(self.file(self.SPEC), {SCHEMA_FIELD: SPEC_VERSION, **spec.model_dump(mode="json")},
                          self._fence())

    def read_spec(self) -> TrialSpec:
        """The spec, its file brought to the current format first (:mod:`zsqbench.runs.migrations`)."""
        data = upgrade("spec", self._read_json(self.SPEC, "spec file", "delete its trial folder"), self.file(self.SPEC))
        del data[SCHEMA_FIELD]
        try:
            spec = TrialSpec.model_validate(data)
        except ValueError as exc:
            raise UserError(f"corrupt spec file {self.file(self.SPEC)} ({first_validation_error(exc)}); "
                            "delete its trial folder") from None
        check_trial_id(self.file(self.SPEC), spec.trial_id, "spec file")  # an edited spec: not the folder's trial
        return spec

    # -- results
    def write_result(self, result: ResultFile) -> None:
        self._check_writer()
        write_json_atomic(self.file(self.RESULT), result.model_dump(mode="python"), self._fence())

    def read_result(self) -> dict[str, Any]:
        """The result as written, brought to the current format and validated by the model it was
        written through (:class:`~zsqbench.runs.result_file.ResultFile`)."""
        data = self._read_json(self.RESULT, "result file", "delete its trial folder and re-run")
        return validate_result(data, self.file(self.RESULT), spec_trial_id)

    def write_error(self, status: str, error: str, traceback: str | None = None, resumable: bool = False) -> None:
        """``resumable``: the failure came from the machine (a full disk, an I/O error), not the trial;
        the next run resumes the trial from its checkpoint instead of leaving it failed."""
        payload: dict[str, Any] = {"status": status, "error": error, "resumable": resumable}
        if traceback is not None:
            payload["traceback"] = traceback
        self._check_writer()
        write_json_atomic(self.file(self.ERROR), payload, self._fence())

    def read_error(self) -> dict[str, Any]:
        return self._read_json(self.ERROR, "error file", "delete it to retry the trial")

    def failed_resumably(self) -> bool:
        """A failed trial whose error was the machine's (see :meth:`write_error`)."""
        return self.state == "failed" and bool(self.read_error().get("resumable"))

    def clear_error(self) -> None:
        self._check_writer()
        self.file(self.ERROR).unlink(missing_ok=True)

    def _read_json(self, name: str, what: str, fix: str) -> dict[str, Any]:
        return read_json_object(self.file(name), what, fix)

    # -- per-epoch records
    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """The log holds exactly these epochs, one line each: rewritten whole (atomically) every epoch
        from the records the checkpoint holds, so it can neither repeat an epoch nor lose one."""
        self._check_writer()
        write_text_atomic(self.file(self.METRICS), "".join(json.dumps(r) + "\n" for r in records), self._fence())

    def metrics_count(self) -> int:
        path = self.file(self.METRICS)
        return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0

    # -- checkpoint
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self._check_writer()
        write_bytes_atomic(self.file(self.CHECKPOINT), checkpoint.encode(state), self._fence())

    def load_checkpoint(self, trial_id: str | None = None) -> dict[str, Any] | None:
        """The last checkpoint, None if there is none; a corrupt one is a user error."""
        path = self.file(self.CHECKPOINT)
        return checkpoint.decode(path, trial_id) if path.is_file() else None

    # -- student snapshots
    def snapshot_path(self, epoch: int) -> Path:
        return self.path / self.SNAPSHOTS / f"epoch_{epoch:04d}.pt"

    def save_snapshot(self, epoch: int, student: nn.Module) -> None:
        """The student (weights and quantizer ranges) after ``epoch``, for later analysis."""
        buf = io.BytesIO()
        torch.save(student.state_dict(), buf)
        self._check_writer()
        write_bytes_atomic(self.snapshot_path(epoch), buf.getvalue(), self._fence())

    def snapshot_epochs(self) -> list[int]:
        found = (self.path / self.SNAPSHOTS).glob("epoch_*.pt")
        return sorted(int(m.group(1)) for p in found if (m := _SNAPSHOT.search(p.name)))

    def load_snapshot(self, epoch: int, device: torch.device) -> dict[str, torch.Tensor]:
        """An epoch's student weights; a snapshot that holds more than tensors is refused (loading it could
        run code), a truncated or foreign one named: one line each, whoever reads it (analysis, export)."""
        path = self.snapshot_path(epoch)
        fix = f"delete it (the other epochs' snapshots stay usable) or re-run trial {self.trial_id}"
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refused a global
            raise UserError(f"snapshot {path} holds more than tensors ({checkpoint.refused_global(exc)}); it is not "
                            f"loaded, since it could run code: {fix}") from None
        except Exception as exc:  # truncated zip, not a torch file, ...
            raise UserError(f"corrupt snapshot {path} ({type(exc).__name__}); {fix}") from None

    # -- analyses
    def analysis_path(self, name: str) -> Path:
        return self.path / self.ANALYSIS / f"{name}.json"

    def read_analysis(self, name: str) -> dict[str, Any] | None:
        """A saved analysis (``analysis/<name>.json``), None if there is none."""
        if not self.analysis_path(name).is_file():
            return None
        return self._read_json(f"{self.ANALYSIS}/{name}.json", "analysis file",
                               f"delete it and run `zsqbench analyze {name}` again")

    def write_analysis(self, name: str, payload: dict[str, Any]) -> None:
        write_json_atomic(self.analysis_path(name), payload)

    def __repr__(self) -> str:
        return f"TrialFolder({str(self.path)!r})"
