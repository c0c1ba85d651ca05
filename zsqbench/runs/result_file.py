"""A trial's result.json: the one model it is written through and read back with (light: pydantic,
no torch).

result.json files are the truth of a results folder: the leaderboard is rebuilt from them, and a
results folder may be shared or downloaded, so every reader brings one to the current format
(:mod:`zsqbench.runs.migrations`) and validates it against :class:`ResultFile` before using it. The
trainer builds the same model (:func:`zsqbench.runs.record.build_result`), so what is written is
what readers check. Readers rely on the required fields; the rest (epoch records, provenance
details) is kept as written, and results of earlier versions validate (fields added since have
defaults).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from zsqbench.api.budgets import BudgetFields
from zsqbench.errors import UserError, first_validation_error
from zsqbench.files import file_digest
from zsqbench.runs.migrations import RESULT_VERSION, upgrade

RESULT_NAME = "result.json"
#: Where result files sit in a results folder: ``<results>/<run>/<trial_id>/result.json``.
RESULT_GLOB = f"*/*/{RESULT_NAME}"
#: The summary a verified ``zsqbench export`` leaves in the trial folder (:mod:`zsqbench.export`).
EXPORT_RECORD = "export/onnx.json"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Named(_Open):
    name: str


class _BudgetFields(BudgetFields):
    """The budget as recorded: the one model of a budget's fields (:class:`~zsqbench.api.budgets.BudgetFields`),
    open to fields a later version adds, as every part of a result file is."""

    model_config = ConfigDict(extra="allow")


class _SpecFields(_Open):
    model: str
    dataset: str
    generator: _Named
    loss: _Named
    quantizer: _Named
    w_bits: int
    a_bits: int
    seed: int
    budget_name: str
    budget: _BudgetFields


class _TeacherFields(_Open):
    name: str | None = None
    weights: str
    path: str | None = None
    sha256: str
    normalization: dict[str, list[float]] | None = None
    expected_top1: float | None = None


class _DataFields(_Open):
    """The test set; the dataset's own details (an ImageNet layout, its cache) are extra fields."""

    path: str | None = None
    sha256: str
    num_images: int | None = None


class _Versions(_Open):
    """zsqbench's and torch's versions; the other packages' are extra fields."""

    zsqbench: str
    torch: str


ORACLE_NOTE = "top1_oracle is the best epoch chosen on the test set; report top1_last"


class ResultFile(_Open):
    """A finished trial. Written by :func:`zsqbench.runs.record.build_result` with every field
    declared here (tests check that none is left undeclared); read back through :func:`validate_result`."""

    schema_version: int = RESULT_VERSION
    trial_id: str
    run: str
    status: Literal["done"]
    spec: _SpecFields
    fp_top1: float
    ptq_top1: float
    top1_last: float
    top1_oracle: float
    oracle_note: str = ORACLE_NOTE
    epochs: list[dict[str, Any]]
    flags: list[str] = []
    wall_s: float
    device: str
    teacher: _TeacherFields
    data: _DataFields
    versions: _Versions
    git_hash: str
    finished_at: str
    compute: dict[str, Any] | None = None


def validate_result(data: Any, path: Path) -> dict[str, Any]:
    """The result as written, in the current format, once :class:`ResultFile` accepts it; otherwise
    a one-line error."""
    if isinstance(data, dict):
        data = upgrade("result", data, path)
    try:
        ResultFile.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"corrupt result file {path} ({first_validation_error(exc)}); delete its trial folder and "
                        "re-run") from None
    return data


def find_result_files(results: Path) -> list[Path]:
    return sorted(Path(results).glob(RESULT_GLOB))


def read_export_record(trial_dir: Path) -> dict[str, Any] | None:
    """The trial's verified ONNX export record, or None: when there is none, when it is unreadable
    (an export is optional; the leaderboard shows an empty cell), or when it was made from an
    earlier result of the trial (re-run since: its ``result_sha256`` no longer matches)."""
    path = Path(trial_dir) / EXPORT_RECORD
    result = Path(trial_dir) / RESULT_NAME
    if not path.is_file() or not result.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("result_sha256") != file_digest(result):
        return None
    return record if isinstance(record.get("onnx_top1"), (int, float)) else None
