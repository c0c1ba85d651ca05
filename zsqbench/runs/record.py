"""What a trial records: one record per epoch, and its result.json with full provenance (built as
the :class:`~zsqbench.runs.result_file.ResultFile` that readers validate it with)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from zsqbench.api.spec import TrialSpec
from zsqbench.assets.teachers import LoadedTeacher
from zsqbench.assets.test_set import TestSet
from zsqbench.runs.environment import Environment
from zsqbench.runs.provenance import device_name, git_hash, versions
from zsqbench.runs.result_file import ResultFile


@dataclass
class EpochRecord:
    epoch: int
    phase: str  # "warmup" or "train" (Phase.name)
    lr: float
    top1: float | None
    losses: dict[str, float]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    # Student gradient diagnostics over the epoch's steps (empty during warm-up).
    grad_norm_mean: float | None = None
    grad_norm_max: float | None = None
    layer_grad_norms: dict[str, float] = field(default_factory=dict)
    nonfinite_steps: int = 0
    # What an epoch-aware student optimizer reports (AIT's gradient inundation: threshold, mean
    # step factor, natural flip fraction); empty for plain SGD.
    optimizer: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialOutcome:
    fp_top1: float
    ptq_top1: float
    epochs: list[EpochRecord]
    teacher: LoadedTeacher
    test_set: TestSet
    wall_s: float
    compute: dict[str, Any]

    @property
    def top1_last(self) -> float:
        return self.epochs[-1].top1  # type: ignore[return-value]

    @property
    def top1_oracle(self) -> float:
        """Best test top-1 over evaluated epochs: test-set selection, reported only as an oracle."""
        return max(e.top1 for e in self.epochs if e.top1 is not None)


#: A training epoch whose largest student gradient norm exceeds the first training epoch's mean
#: by this factor marks the trial as having exploding gradients (a finite run can still explode).
EXPLOSION_FACTOR = 100.0


def training_flags(epochs: list[dict[str, Any]]) -> list[str]:
    """Warnings about how training went, shown in result.json and the leaderboard."""
    flags = []
    trained = [e for e in epochs if e.get("grad_norm_mean") is not None]
    if trained:
        first = trained[0]["grad_norm_mean"]
        worst = max(e["grad_norm_max"] for e in trained)
        if first > 0 and worst > EXPLOSION_FACTOR * first:
            flags.append("exploding_gradients")
    if any(e.get("warnings") for e in epochs):
        flags.append("warnings")
    return flags


def build_result(spec: TrialSpec, outcome: TrialOutcome, env: Environment, run: str) -> ResultFile:
    epochs = [e.to_dict() for e in outcome.epochs]
    teacher = outcome.teacher
    return ResultFile.model_validate({
        "trial_id": spec.trial_id,
        "run": run,
        "status": "done",
        "spec": spec.model_dump(mode="json"),
        "fp_top1": outcome.fp_top1,
        "ptq_top1": outcome.ptq_top1,
        "top1_last": outcome.top1_last,
        "top1_oracle": outcome.top1_oracle,
        "epochs": epochs,
        "flags": training_flags(epochs),
        "wall_s": outcome.wall_s,
        "device": device_name(env.device),
        "teacher": {
            "name": spec.model,
            "weights": teacher.weights_tag,
            "path": str(teacher.weights_path),
            "sha256": teacher.sha256,
            "normalization": {"mean": teacher.normalization.mean, "std": teacher.normalization.std},
            "expected_top1": teacher.expected_top1,
        },
        "data": {"path": str(outcome.test_set.path), "sha256": outcome.test_set.sha256,
                 "num_images": len(outcome.test_set.labels), **outcome.test_set.details},
        "versions": versions(),
        "git_hash": git_hash(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "compute": outcome.compute,
    })
