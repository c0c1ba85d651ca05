"""A trial's result.json: the one model it is written through and read back with (light: pydantic,
no torch).

result.json files are the truth of a results folder: the leaderboard is rebuilt from them, and a
results folder may be shared or downloaded, so every reader brings one to the current format
(:mod:`zsqbench.runs.migrations`) and validates it against :class:`ResultFile` before using it. The
trainer builds the same model (:func:`zsqbench.runs.record.build_result`), so what is written is
what readers check. Results of earlier versions validate (fields added since have defaults), and
fields a later version adds are kept as written.

The model is strict where readers compute with a value: a number is a JSON number (never a string
or a boolean; an integer stands for a float, as ``85`` for 85 %), accuracies are finite and within
0-100, times finite and not negative. Loss terms and gradient norms must be numbers but may be
non-finite: they are diagnostics, only plotted (the plots skip non-finite points), and a done trial
never holds one anyway (the trainer stops a trial whose losses or gradients go non-finite,
:func:`zsqbench.trial.monitor.divergence`). A file that breaks the model is refused in one line
naming the field and left as it is. A trial folder is named by its trial's id, so a result whose
``trial_id`` is not its folder's name (moved or edited by hand) is refused too
(:func:`check_trial_id`; readers that can hash a spec check the spec's id with it as well). A
folder copied under another name (one trial exported on its own) cannot be checked by its name
and reads as it is.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from zsqbench.api.budgets import BudgetFields
from zsqbench.errors import UserError
from zsqbench.files import file_digest
from zsqbench.runs.migrations import RESULT_VERSION, upgrade

RESULT_NAME = "result.json"
#: Where result files sit in a results folder: ``<results>/<run>/<trial_id>/result.json``.
RESULT_GLOB = f"*/*/{RESULT_NAME}"
#: The summary a verified ``zsqbench export`` leaves in the trial folder (:mod:`zsqbench.export`).
EXPORT_RECORD = "export/onnx.json"
#: The setting an export record's headline latency (``latency_ratio``) was timed at for the leaderboard's
#: ``onnx_latency_ratio`` column to show it: batch 100, 2 ONNX Runtime threads (docs/deployment.md).
LATENCY_HEADLINE = {"batch": 100, "threads": 2}
#: A trial folder's name: its trial id, 16 hex digits of a sha256 (:attr:`zsqbench.api.spec.TrialSpec.trial_id`).
TRIAL_ID = re.compile(r"[0-9a-f]{16}")
#: What a one-line error quotes of a bad value at most (a tampered file may hold megabytes).
QUOTE_CHARS = 60

#: The quantizer profile (docs/methods/uniform.md#profiles) of every trial run before profiles existed,
#: and of the ``uniform`` quantizer at its default, which its spec leaves out (so the trial ids stay).
DEFAULT_PROFILE = "zsq-asym-pc"

#: A top-1 accuracy in percent: a finite number within 0-100.
Percent = Annotated[StrictFloat, Field(ge=0, le=100, allow_inf_nan=False)]
#: A finite number (a learning rate).
Finite = Annotated[StrictFloat, Field(allow_inf_nan=False)]
#: Seconds: finite, not negative.
Seconds = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
#: A diagnostic number (loss term, gradient norm): any JSON number, NaN and infinities included.
Diagnostic = StrictFloat
Count = Annotated[StrictInt, Field(ge=0)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Named(_Open):
    name: StrictStr


class _BudgetFields(BudgetFields):
    """The budget as recorded: the one model of a budget's fields (:class:`~zsqbench.api.budgets.BudgetFields`),
    open to fields a later version adds, as every part of a result file is, and strict (whole
    numbers as JSON integers)."""

    model_config = ConfigDict(extra="allow", strict=True)


class _SpecFields(_Open):
    model: StrictStr
    dataset: StrictStr
    generator: _Named
    loss: _Named
    quantizer: _Named
    w_bits: StrictInt
    a_bits: StrictInt
    seed: Count
    budget_name: StrictStr
    budget: _BudgetFields


class _EpochFields(_Open):
    """One epoch's record (:class:`zsqbench.runs.record.EpochRecord`). The trainer writes every
    field; each is optional here because readers use those present (hand-made results of tests
    and tools hold a few)."""

    epoch: Count | None = None
    phase: StrictStr | None = None
    lr: Finite | None = None
    top1: Percent | None = None
    losses: dict[str, Diagnostic] | None = None
    seconds: Seconds | None = None
    warnings: list[StrictStr] | None = None
    grad_norm_mean: Diagnostic | None = None
    grad_norm_max: Diagnostic | None = None
    layer_grad_norms: dict[str, Diagnostic] | None = None
    nonfinite_steps: Count | None = None
    optimizer: dict[str, Any] | None = None


class _TeacherFields(_Open):
    name: StrictStr | None = None
    weights: StrictStr
    path: StrictStr | None = None
    sha256: StrictStr
    normalization: dict[str, list[Finite]] | None = None
    expected_top1: Percent | None = None


class _DataFields(_Open):
    """The test set; the dataset's own details (an ImageNet layout, its cache) are extra fields."""

    path: StrictStr | None = None
    sha256: StrictStr
    num_images: Count | None = None


class _Versions(_Open):
    """zsqbench's and torch's versions; the other packages' are extra fields."""

    zsqbench: StrictStr
    torch: StrictStr


class _ComputeFields(_Open):
    """The compute settings (:meth:`zsqbench.perf.compute.ComputeSettings.describe`); results
    recorded before them have none (fp32, NCHW: :func:`zsqbench.leaderboard.rows.compute_fields`)."""

    precision: StrictStr | None = None
    channels_last: StrictBool | None = None
    compile: StrictBool | None = None
    tf32: StrictBool | None = None


class _Certification(_Open):
    """What the trainer certifies about a trial (:func:`zsqbench.runs.record.certification`), MLPerf-style:
    no real training data, the headline not selected on the test set, which layers are quantized and
    how (the quantizer's profile, where the quantizer describes it), static or dynamic activation
    ranges, and whether the budget is the paper's schedule. Results written before it have none."""

    real_training_data: StrictBool
    headline: StrictStr
    headline_test_selected: StrictBool
    quantized_layers: StrictStr | None = None
    activations: Literal["static", "dynamic"] | None = None
    quantizer: dict[str, Any] | None = None
    budget: StrictStr | None = None
    paper_schedule: StrictBool | None = None


class _Machine(_Open):
    """The machine kind a trial ran on (:func:`zsqbench.runs.record.machine`): ``kind`` names it (a
    GPU's name, or a CPU's model and vector capability), the rest is what changes floating-point
    summation order (oneDNN, cuDNN). Results written before it have none (their ``device`` says less)."""

    kind: StrictStr
    device: StrictStr | None = None
    cpu: StrictStr | None = None
    cpu_capability: StrictStr | None = None
    torch: StrictStr | None = None
    onednn: StrictStr | None = None
    cudnn: StrictStr | None = None


ORACLE_NOTE = "top1_oracle is the best epoch chosen on the test set; report top1_last"


class ResultFile(_Open):
    """A finished trial. Written by :func:`zsqbench.runs.record.build_result` with every field
    declared here (tests check that none is left undeclared); read back through :func:`validate_result`."""

    schema_version: StrictInt = RESULT_VERSION
    trial_id: StrictStr
    run: StrictStr
    status: Literal["done"]
    spec: _SpecFields
    fp_top1: Percent
    ptq_top1: Percent
    top1_last: Percent
    top1_oracle: Percent
    oracle_note: StrictStr = ORACLE_NOTE
    epochs: list[_EpochFields]
    flags: list[StrictStr] = []
    wall_s: Seconds
    device: StrictStr
    teacher: _TeacherFields
    data: _DataFields
    versions: _Versions
    git_hash: StrictStr
    finished_at: StrictStr
    compute: _ComputeFields | None = None
    certification: _Certification | None = None
    machine: _Machine | None = None


def trial_profile(quantizer: Any, options: Any = None) -> str:
    """A trial's quantizer profile from its spec's quantizer name and options: the ``profile``
    option where the spec holds one; else the default for ``uniform`` (its default profile is left
    out of specs, and results from before profiles have none); a quantizer without profiles is its
    own profile (its name)."""
    value = options.get("profile") if isinstance(options, dict) else None
    if isinstance(value, str) and value:
        return value
    return DEFAULT_PROFILE if str(quantizer) == "uniform" else str(quantizer)


def quote(value: Any) -> str:
    """``value`` as a short repr for a one-line error."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS - 3] + "..."


def _problem(exc: ValidationError) -> str:
    """The first problem as "field: what is wrong, got <value>"."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    got = "" if err["type"] == "missing" else f", got {quote(err.get('input'))}"
    return f"{where}: {err['msg']}{got}"


def _corrupt(path: Path, problem: str) -> UserError:
    return UserError(f"corrupt result file {path} ({problem}); delete its trial folder and re-run")


def check_trial_id(path: Path, trial_id: str, what: str) -> None:
    """A one-line error unless ``trial_id`` (what the file at ``path`` says, or its spec hashes to)
    is the name of the folder the file sits in: a trial folder is named by its id, so a mismatch
    is a file edited or moved by hand, and trusting either the name or the file would mislabel the
    trial. A folder not named like a trial id (:data:`TRIAL_ID`: a copy under another name) is not
    checked. ``what`` names the file in the message ("spec file", "result file")."""
    folder = Path(path).parent.name
    if TRIAL_ID.fullmatch(folder) and trial_id != folder:
        raise UserError(f"{what} {path} belongs to trial {quote(trial_id)}, not to its folder {folder} (edited or "
                        "moved by hand?); restore it, or delete the trial folder and re-run the grid")


def _check_run(path: Path, run: str) -> None:
    """A run is one folder of the results folder: a name, never a path (readers may build paths from it)."""
    if not run or run in (".", "..") or any(c in run for c in "/\\\0"):
        raise _corrupt(path, f"run: not a run folder name, got {quote(run)}")


def validate_result(data: Any, path: Path,
                    spec_trial_id: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
    """The result as :class:`ResultFile` reads it, in the current format (the fields it was written
    with, numbers as floats where the model says so), once the model accepts it and its
    ``trial_id`` is its folder's name (:func:`check_trial_id`); otherwise a one-line error. ``path`` is the file in its
    trial folder. ``spec_trial_id``, when given, hashes the recorded spec (a torch-free
    ``TrialSpec.model_validate(spec).trial_id``): the spec must be the folder's trial too."""
    path = Path(path)
    if isinstance(data, dict):
        data = upgrade("result", data, path)
    try:
        result = ResultFile.model_validate(data)
    except ValidationError as exc:
        raise _corrupt(path, _problem(exc)) from None
    _check_run(path, result.run)
    check_trial_id(path, result.trial_id, "result file")
    if spec_trial_id is not None:
        try:
            hashed = spec_trial_id(result.spec.model_dump(exclude_unset=True))
        except ValidationError as exc:
            raise _corrupt(path, "spec." + _problem(exc)) from None
        check_trial_id(path, hashed, "the spec recorded in result file")
    return result.model_dump(exclude_unset=True)


def find_result_files(results: Path) -> list[Path]:
    return sorted(Path(results).glob(RESULT_GLOB))


def read_export_record(trial_dir: Path) -> dict[str, Any] | None:
    """The trial's verified ONNX export record, or None: when there is none, when it is unreadable
    (an export is optional; the leaderboard shows an empty cell), when its accuracy is not a
    percentage, or when it was made from an earlier result of the trial (re-run since: its
    ``result_sha256`` no longer matches)."""
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
    top1 = record.get("onnx_top1")
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not (math.isfinite(top1) and 0 <= top1 <= 100):
        return None
    return record
