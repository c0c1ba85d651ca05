"""A trial's folder on disk, owned by one class: its file names, its state, its atomic writes.

``<results>/<run>/<trial_id>/`` holds ``spec.json`` (what the trial is), ``metrics.jsonl`` (one
line per finished epoch), ``checkpoint.pt`` (every epoch, for resuming), ``snapshots/`` (the
student after some epochs, for analysis), ``analysis/`` (diagnostics computed later) and finally
``result.json`` (the done marker) or ``error.json`` (failed or diverged). Every file is written
atomically, so a reader never sees half of one and a killed process leaves the previous version.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsqbench.errors import UserError
from zsqbench.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from zsqbench.trial import checkpoint
from zsqbench.trial.spec import TrialSpec

STATES = ("done", "failed", "incomplete", "pending")
_SNAPSHOT = re.compile(r"epoch_(\d+)\.pt$")


class TrialFolder:
    SPEC = "spec.json"
    RESULT = "result.json"
    ERROR = "error.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    SNAPSHOTS = "snapshots"
    ANALYSIS = "analysis"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

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
        for name in (self.RESULT, self.ERROR, self.METRICS, self.CHECKPOINT):
            self.file(name).unlink(missing_ok=True)

    # -- spec
    def write_spec(self, spec: TrialSpec) -> None:
        write_json_atomic(self.file(self.SPEC), spec.model_dump(mode="json"))

    def read_spec(self) -> TrialSpec:
        path = self.file(self.SPEC)
        try:
            return TrialSpec.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"corrupt spec file {path} ({str(exc).splitlines()[0]}); delete its trial folder") from None

    # -- results
    def write_result(self, result: dict[str, Any]) -> None:
        write_json_atomic(self.file(self.RESULT), result)

    def read_result(self) -> dict[str, Any]:
        return self._read_json(self.RESULT, "result file", "delete its trial folder and re-run")

    def write_error(self, status: str, error: str, traceback: str | None = None) -> None:
        payload = {"status": status, "error": error}
        if traceback is not None:
            payload["traceback"] = traceback
        write_json_atomic(self.file(self.ERROR), payload)

    def read_error(self) -> dict[str, Any]:
        return self._read_json(self.ERROR, "error file", "delete it to retry the trial")

    def _read_json(self, name: str, what: str, fix: str) -> dict[str, Any]:
        path = self.file(name)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"corrupt {what} {path} ({msg}); {fix}") from None
        if not isinstance(data, dict):
            raise UserError(f"corrupt {what} {path} (not a JSON object); {fix}")
        return data

    # -- per-epoch records
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.file(self.METRICS), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """The log holds exactly these epochs (after a resume, a kill may have left more)."""
        write_text_atomic(self.file(self.METRICS), "".join(json.dumps(r) + "\n" for r in records))

    def metrics_count(self) -> int:
        path = self.file(self.METRICS)
        return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0

    # -- checkpoint
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        write_bytes_atomic(self.file(self.CHECKPOINT), checkpoint.encode(state))

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
        write_bytes_atomic(self.snapshot_path(epoch), buf.getvalue())

    def snapshot_epochs(self) -> list[int]:
        found = (self.path / self.SNAPSHOTS).glob("epoch_*.pt")
        return sorted(int(m.group(1)) for p in found if (m := _SNAPSHOT.search(p.name)))

    def load_snapshot(self, epoch: int, device: torch.device) -> dict[str, torch.Tensor]:
        return torch.load(self.snapshot_path(epoch), map_location=device, weights_only=True)

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
