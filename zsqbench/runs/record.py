"""What a trial records: one record per epoch, and its result.json with full provenance (built as
the :class:`~zsqbench.runs.result_file.ResultFile` that readers validate it with), what the trial
certifies about itself (:func:`certification`) and the machine kind it ran on (:func:`machine`)."""

from __future__ import annotations

import datetime as dt
import platform
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import torch

from zsqbench.api.plugins import get_plugins
from zsqbench.api.spec import TrialSpec
from zsqbench.assets.teachers import LoadedTeacher
from zsqbench.assets.test_set import TestSet
from zsqbench.errors import UserError
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


#: The budgets that are a paper's schedule: each method's official CIFAR and ImageNet schedules, and
#: post-training quantization (calibration only, the PTQ methods' protocol). A name with "+custom"
#: (a field changed by a grid file or a flag) is not.
PAPER_BUDGETS = ("paper", "in1k-paper", "ptq")


def quantizer_protocol(spec: TrialSpec) -> dict[str, Any] | None:
    """The trial's quantization convention as its quantizer describes it: a quantizer class may
    define ``describe_protocol(options) -> dict`` (the bundled ``uniform`` does, from its profile:
    docs/methods/uniform.md#profiles); None for one that does not, or that is not registered here."""
    try:
        quantizer = get_plugins().quantizers.get(spec.quantizer.name)
    except UserError:
        return None
    describe = getattr(quantizer, "describe_protocol", None)
    return describe(dict(spec.quantizer.options)) if callable(describe) else None


def certification(spec: TrialSpec) -> dict[str, Any]:
    """What the trial certifies about itself, MLPerf-style, for readers that set it against published
    numbers (``zsqbench ledger``). The core loads no training set and hands plugins none (they see
    the teacher and what it declares; the test set is read only to evaluate); the headline is the
    last epoch, never selected on the test set (``top1_oracle`` is recorded as an oracle only); which
    layers are quantized and whether activation ranges are static come from the quantizer's
    description (None where it gives none); the budget is a paper's schedule or not."""
    protocol = quantizer_protocol(spec)
    static = None if protocol is None or "activations_static" not in protocol else bool(protocol["activations_static"])
    return {
        "real_training_data": False,
        "headline": "top1_last",
        "headline_test_selected": False,
        "quantized_layers": None if protocol is None else protocol.get("quantized_layers"),
        "activations": None if static is None else ("static" if static else "dynamic"),
        "quantizer": protocol,
        "budget": spec.budget_name,
        "paper_schedule": spec.budget_name in PAPER_BUDGETS,
    }


@lru_cache(maxsize=1)
def _host() -> dict[str, str | None]:
    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    onednn = re.search(r"(?:MKL-DNN|oneDNN)\s+v([\d.]+)", torch.__config__.show())
    return {"cpu": cpu or platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "onednn": onednn.group(1) if onednn else None,
            "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None}


def machine(device: torch.device) -> dict[str, Any]:
    """The machine kind: the same code and seed give different numbers on different kinds (vendor
    kernels sum in different orders, and a short training trajectory amplifies it), so a spread
    over seeds says nothing about machines unless each result names its own. ``kind``: a GPU's name,
    or the CPU's model with its vector capability (oneDNN picks its kernels by it)."""
    host = _host()
    name = device_name(device)
    kind = name if device.type == "cuda" else f"{host['cpu']} ({host['cpu_capability']})"
    return {"kind": kind, "device": name, **host}


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
        "certification": certification(spec),
        "machine": machine(env.device),
    })
