"""The shape of a trial's result.json, checked whenever one is read (light: pydantic, no torch).

result.json files are the truth of a results folder: the leaderboard is rebuilt from them, and a
results folder may be shared or downloaded, so every reader validates one against this model
before using it. Only what readers rely on is required; the rest (epochs, provenance details) is
kept as written. Results of earlier versions validate (fields added since have defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from zsqbench.errors import UserError, first_validation_error

RESULT_NAME = "result.json"
#: Where result files sit in a results folder: ``<results>/<run>/<trial_id>/result.json``.
RESULT_GLOB = f"*/*/{RESULT_NAME}"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Named(_Open):
    name: str


class _BudgetFields(_Open):
    epochs: int
    iters_per_epoch: int
    batch_size: int
    warmup_epochs: int


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
    weights: str
    sha256: str


class _DataFields(_Open):
    sha256: str


class _Versions(_Open):
    zsqbench: str
    torch: str


class ResultFile(_Open):
    trial_id: str
    run: str
    status: Literal["done"]
    spec: _SpecFields
    fp_top1: float
    ptq_top1: float
    top1_last: float
    top1_oracle: float
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
    """The result as written, once it has the fields readers need; otherwise a one-line error."""
    try:
        ResultFile.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"corrupt result file {path} ({first_validation_error(exc)}); delete its trial folder and "
                        "re-run") from None
    return data


def find_result_files(results: Path) -> list[Path]:
    return sorted(Path(results).glob(RESULT_GLOB))
