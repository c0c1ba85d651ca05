"""The method-agnostic training loop of one trial (METHODS §4.3).

Per epoch: set LRs, unfreeze activation ranges during the warm-up epochs, run
``iters_per_epoch`` iterations (generator step, then a student step once warm-up is
over; during warm-up a student forward only calibrates the ranges), freeze the ranges,
evaluate. The student stays in eval mode throughout (METHODS §1.6).
"""

from __future__ import annotations

import copy
import io
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from zsqbench.trial.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from zsqbench.trial.data import TestSet, load_test_set
from zsqbench.files import write_bytes_atomic, write_text_atomic
from zsqbench.trial.evaluate import top1
from zsqbench.api.features import FeatureTaps
from zsqbench.api.interfaces import Batch, Generator, LossInputs, StudentObjective, TeacherModel, TrainContext
from zsqbench.api.plugins import Plugins
from zsqbench.trial.spec import TrialSpec
from zsqbench.trial.speed import ComputeSettings, apply_compute_settings, networks_of, tune_cpu_allocator
from zsqbench.trial.teachers import LoadedTeacher, load_teacher


#: The running loss shown in the progress display is refreshed this often (iterations).
LOSS_DISPLAY_EVERY = 50


class TrialDiverged(RuntimeError):
    """The student loss became NaN/Inf: the trial's numbers are not a result."""


class ProgressSink(Protocol):
    def start(self, description: str, total: int) -> None: ...
    def advance(self, completed: int, info: str = "") -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    #: Progress sinks may set this False when they display nothing: the trainer then never
    #: reads the running loss (a host-device synchronization) for them.
    shows_info = False

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, completed: int, info: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class Environment:
    """Where and how a trial runs; at the defaults nothing here changes its numbers."""

    data_root: Path
    device: torch.device
    cache_dir: Path
    teacher_weights: Path | None = None
    download: bool = False
    eval_batch_size: int = 500
    # Compute settings (zsqbench.trial.speed): they change results at the rounding level
    # (channels_last, compile) or more (tf32, bf16). Only the memory format has a measured
    # default (None: channels-last on CPU, NCHW on CUDA); every trial records the settings
    # it ran with in its result ("compute").
    precision: str = "fp32"  # "bf16": convolutions in bfloat16, everything else float32
    channels_last: bool | None = None
    compile: bool = False
    tf32: bool | None = None  # None: PyTorch's defaults

    @property
    def compute(self) -> ComputeSettings:
        return ComputeSettings(self.precision, self.channels_last, self.compile, self.tf32)


@dataclass
class EpochRecord:
    epoch: int
    phase: str  # "warmup" or "train"
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


@dataclass
class TrialOutcome:
    fp_top1: float
    ptq_top1: float
    epochs: list[EpochRecord]
    teacher: LoadedTeacher
    test_set: TestSet
    wall_s: float
    extra: dict = field(default_factory=dict)

    @property
    def top1_last(self) -> float:
        return self.epochs[-1].top1  # type: ignore[return-value]

    @property
    def top1_oracle(self) -> float:
        """Best test top-1 over evaluated epochs: test-set selection, reported only as an oracle."""
        return max(e.top1 for e in self.epochs if e.top1 is not None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def standard_student_step(
    ctx: TrainContext, batch: Batch, objective: StudentObjective, optimizer: torch.optim.Optimizer
) -> dict[str, Tensor]:
    """Student forward on the batch, the objective, one SGD step. Teacher outputs are reused
    when the generator already computed them on the same images, and so is the student's
    forward when the generator passes it (``batch.student_logits``, METHODS §7.6).

    A shared student forward still carries the graph through the images into the
    generator, so its backward is restricted to the student's parameters: the generator
    gets no gradient and its part of the graph is not traversed.
    """
    if batch.teacher_logits is None:
        with torch.no_grad():
            t, t_feats = ctx.teacher_forward(batch.x)
    else:
        t, t_feats = batch.teacher_logits, batch.teacher_features or {}
    shared = batch.student_logits is not None
    if shared:
        s, s_feats = batch.student_logits, batch.student_features or {}
    else:
        s, s_feats = ctx.student_forward(batch.x)
    terms = objective(LossInputs(s, t, batch.y, s_feats, t_feats))
    optimizer.zero_grad(set_to_none=True)
    if shared:
        terms["total"].backward(inputs=[p for p in ctx.student.parameters() if p.requires_grad])
        # The retained graph (with the generator's saved activations) is spent: let it go
        # now rather than when the caller drops the batch, after the next generator step.
        batch.student_logits = batch.student_features = None
    else:
        terms["total"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


class TrialResources:
    """Test sets and FP accuracies shared by the trials of one process (loaded once each)."""

    def __init__(self) -> None:
        self._test_sets: dict[tuple[str, Path], TestSet] = {}
        self._inputs: dict[tuple, Tensor] = {}
        self._fp_top1: dict[tuple, float] = {}

    def test_set(self, name: str, env: Environment) -> TestSet:
        key = (name, env.data_root)
        if key not in self._test_sets:
            self._test_sets[key] = load_test_set(name, env.data_root, download=env.download)
        return self._test_sets[key]

    def inputs(self, test: TestSet, teacher: LoadedTeacher) -> Tensor:
        key = (test.sha256, teacher.normalization)
        if key not in self._inputs:
            self._inputs[key] = test.normalized(teacher.normalization)
        return self._inputs[key]

    def fp_top1(self, test: TestSet, teacher: LoadedTeacher, model, env: Environment) -> float:
        key = (test.sha256, teacher.sha256, str(env.device))
        if key not in self._fp_top1:
            self._fp_top1[key] = top1(model, self.inputs(test, teacher), test.labels, env.device, env.eval_batch_size)
        return self._fp_top1[key]


@dataclass
class TrialParts:
    """The objects of one trial, wired together (used by the trainer, benchmarks and tests)."""

    ctx: TrainContext
    generator: Generator
    objective: StudentObjective
    optimizer: torch.optim.Optimizer


def build_trial_parts(
    spec: TrialSpec,
    plugins: Plugins,
    entry: TeacherModel,
    teacher: torch.nn.Module,
    device: torch.device,
    cache_dir: Path,
    progress: ProgressSink | None = None,
) -> TrialParts:
    """Quantize a copy of the (eval-mode, frozen) teacher, build generator, objective and optimizer."""
    progress = progress or NullProgress()
    quant_cls = plugins.quantizers.get(spec.quantizer.name)
    quantizer = quant_cls(quant_cls.Options(**spec.quantizer.options))
    student_fp = copy.deepcopy(teacher)
    for p in student_fp.parameters():
        p.requires_grad_(True)
    student = quantizer.quantize(student_fp, spec.w_bits, spec.a_bits).to(device).eval()

    gen_cls = plugins.generators.get(spec.generator.name)
    loss_cls = plugins.losses.get(spec.loss.name)
    ctx = TrainContext(
        spec=spec, teacher_entry=entry, teacher=teacher, student=student, quantizer=quantizer,
        device=device, cache_dir=cache_dir,
        teacher_taps=FeatureTaps(teacher, (), detach=True), student_taps=FeatureTaps(student, (), detach=False),
        report=lambda desc, done, total: progress.advance(done, desc),
    )
    generator = gen_cls(gen_cls.Options(**spec.generator.options), ctx)
    objective = loss_cls(loss_cls.Options(**spec.loss.options), generator.native_losses(), entry)
    ctx.teacher_taps = FeatureTaps(teacher, objective.feature_taps, detach=True)
    ctx.student_taps = FeatureTaps(student, objective.feature_taps, detach=False)
    o = spec.optim
    optimizer = torch.optim.SGD(
        student.parameters(), lr=o.student_lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )
    return TrialParts(ctx, generator, objective, optimizer)


class GradientMonitor:
    """Per-epoch student gradient norms (global and per parameter) and non-finite step counts.

    Accumulates on the device and synchronizes once per epoch, so it can stay on.
    """

    def __init__(self, student: torch.nn.Module) -> None:
        self.named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._sum: Tensor | None = None
        self._global_sum: Tensor | None = None
        self._global_max: Tensor | None = None
        self._nonfinite: Tensor | None = None

    def observe(self, total_loss: Tensor) -> None:
        grads = [p.grad for _, p in self.named]
        if any(g is None for g in grads):
            grads = [g if g is not None else torch.zeros_like(p) for g, (_, p) in zip(grads, self.named)]
        norms = torch.stack(torch._foreach_norm(grads))
        total = norms.square().sum().sqrt()
        bad = (~torch.isfinite(total_loss)).to(torch.long) + (~torch.isfinite(total)).to(torch.long)
        if self._sum is None:
            self._sum, self._global_sum, self._global_max, self._nonfinite = norms, total, total, bad.clamp(max=1)
        else:
            self._sum = self._sum + norms
            self._global_sum = self._global_sum + total
            self._global_max = torch.maximum(self._global_max, total)
            self._nonfinite = self._nonfinite + bad.clamp(max=1)
        self.steps += 1

    def summary(self) -> dict:
        if not self.steps:
            return {}
        per_param = (self._sum / self.steps).tolist()
        return {
            "grad_norm_mean": self._global_sum.item() / self.steps,
            "grad_norm_max": self._global_max.item(),
            "layer_grad_norms": {n: v for (n, _), v in zip(self.named, per_param)},
            "nonfinite_steps": int(self._nonfinite.item()),
        }


#: Below this many test images top-1 is too noisy to call a drop to chance a collapse.
MIN_IMAGES_FOR_COLLAPSE = 1000


def _collapsed(acc: float, ptq: float, num_classes: int, num_images: int) -> bool:
    """Accuracy collapsed to chance after a calibrated student was clearly above it."""
    chance = 100.0 / num_classes
    return num_images >= MIN_IMAGES_FOR_COLLAPSE and ptq > 2 * chance and acc <= chance + 1.0


def run_trial(
    spec: TrialSpec,
    plugins: Plugins,
    env: Environment,
    progress: ProgressSink | None = None,
    resources: TrialResources | None = None,
    trial_dir: Path | None = None,
) -> TrialOutcome:
    """Run one trial. With ``trial_dir`` it checkpoints every epoch there, appends
    ``metrics.jsonl``, and resumes from an existing checkpoint."""
    progress = progress or NullProgress()
    resources = resources or TrialResources()
    started = time.perf_counter()
    device = env.device

    entry = plugins.models.get(spec.model)
    test = resources.test_set(spec.dataset, env)
    loaded = load_teacher(entry, env.data_root, env.teacher_weights, env.download)
    teacher = loaded.module.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)  # METHODS §4.3 [REC]: identical results, no wasted weight gradients
    inputs = resources.inputs(test, loaded)
    fp = resources.fp_top1(test, loaded, teacher, env)
    if loaded.expected_top1 is not None and abs(fp - loaded.expected_top1) > 0.5:
        progress.message(
            f"warning: FP teacher measured {fp:.2f}% but the '{loaded.weights_tag}' checkpoint is "
            f"expected to give {loaded.expected_top1:.2f}%"
        )

    seed_everything(spec.seed)
    parts = build_trial_parts(spec, plugins, entry, teacher, device, env.cache_dir, progress)
    ctx, generator, objective, optimizer = parts.ctx, parts.generator, parts.objective, parts.optimizer
    student, quantizer, o = ctx.student, ctx.quantizer, spec.optim
    tune_cpu_allocator()
    compute = env.compute.resolved(device)
    apply_compute_settings(networks_of(teacher, student, generator), compute)
    generator.prepare()

    budget = spec.budget
    records: list[EpochRecord] = []
    ptq = float("nan")
    first_epoch, previous_wall = 0, 0.0
    saved = load_checkpoint(trial_dir, spec.trial_id) if trial_dir is not None else None
    if saved is not None:
        if saved.get("precision", "fp32") != compute.precision:  # runner.run_grid refuses this earlier
            raise ValueError(f"trial {spec.trial_id} was started at precision {saved.get('precision', 'fp32')}; "
                             f"it cannot be resumed at {compute.precision}")
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.load_state_dict(saved["generator"])
        set_rng_state(saved["rng"])
        records = [EpochRecord(**r) for r in saved["records"]]
        ptq, previous_wall = saved["ptq"], saved["wall_s"]
        first_epoch = saved["epoch"] + 1
        progress.message(f"resuming trial {spec.trial_id} after epoch {first_epoch}/{budget.epochs}")
        if trial_dir is not None:
            _rewrite_metrics(trial_dir, records)
    monitor = GradientMonitor(student)
    show_loss = getattr(progress, "shows_info", True)
    for epoch in range(first_epoch, budget.epochs):
        t0 = time.perf_counter()
        monitor.reset()
        lr = o.student_lr * budget.lr_factor(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        warmup = epoch < budget.warmup_epochs
        quantizer.set_calibrating(student, warmup)
        generator.start_epoch(epoch)
        student.eval()
        sums: dict[str, Tensor] = {}
        info = ""
        progress.start(f"{spec.generator.name}+{spec.loss.name} {spec.bits_label} epoch {epoch + 1}/{budget.epochs}"
                       + (" (warm-up)" if warmup else ""), budget.iters_per_epoch)
        with ctx.teacher_taps.active(), ctx.student_taps.active():
            for it in range(budget.iters_per_epoch):
                batch = generator.next_batch(epoch)
                if warmup:
                    with torch.no_grad():
                        student(batch.x)  # calibrates activation ranges
                    ctx.student_taps.take()
                else:
                    terms = generator.student_step(batch, objective, optimizer)
                    monitor.observe(terms["total"])
                    for k, v in terms.items():
                        sums[k] = sums[k] + v if k in sums else v.clone()
                last = it + 1 == budget.iters_per_epoch
                if (it + 1) % 10 == 0 or last:
                    # Reading the running loss synchronizes with the GPU: only for a display
                    # that shows it, and only every LOSS_DISPLAY_EVERY iterations.
                    if show_loss and "total" in sums and ((it + 1) % LOSS_DISPLAY_EVERY == 0 or last):
                        info = f"loss {sums['total'].item() / (it + 1):.4f}"
                    progress.advance(it + 1, info)
        quantizer.set_calibrating(student, False)
        losses = {k: v.item() / budget.iters_per_epoch for k, v in sums.items()}
        grads = monitor.summary()
        if any(not math.isfinite(v) for v in losses.values()) or grads.get("nonfinite_steps"):
            raise TrialDiverged(
                f"non-finite student loss or gradient in epoch {epoch} "
                f"({grads.get('nonfinite_steps', 0)} of {budget.iters_per_epoch} steps): {losses}"
            )
        warnings: list[str] = []
        # A weighted feature term that is exactly 0 means broken taps or pairing (METHODS §7.8, D3).
        if not warmup and getattr(objective, "feature_weight", 0.0) > 0 and losses.get("feature") == 0.0:
            warnings.append(f"feature term of loss '{spec.loss.name}' is exactly 0 in epoch {epoch}: "
                            "feature taps or teacher/student pairing are broken")
            progress.message(f"warning: {warnings[-1]}")
        acc = None
        if epoch >= budget.warmup_epochs - 1:
            acc = top1(student, inputs, test.labels, device, env.eval_batch_size)
            if epoch == budget.warmup_epochs - 1:
                ptq = acc
        record = EpochRecord(epoch, "warmup" if warmup else "train", lr, acc, losses, time.perf_counter() - t0,
                             warnings, **grads)
        records.append(record)
        if acc is not None and not warmup and _collapsed(acc, ptq, entry.num_classes, len(test.labels)):
            raise TrialDiverged(f"top-1 collapsed to {acc:.2f}% in epoch {epoch} (PTQ was {ptq:.2f}%)")
        if trial_dir is not None:
            save_checkpoint(trial_dir, {
                "trial_id": spec.trial_id, "epoch": epoch, "records": [asdict(r) for r in records], "ptq": ptq,
                "wall_s": previous_wall + time.perf_counter() - started,
                "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.state_dict(), "rng": rng_state(), "precision": compute.precision,
            })
            _append_metrics(trial_dir, record)
            if keeps_snapshot(epoch, budget.epochs):
                save_student_snapshot(trial_dir, epoch, student)
        progress.message(
            f"epoch {epoch + 1}/{budget.epochs}: top-1 {acc:.2f}%" if acc is not None
            else f"epoch {epoch + 1}/{budget.epochs}: warm-up"
        )
    return TrialOutcome(
        fp_top1=fp, ptq_top1=ptq, epochs=records, teacher=loaded, test_set=test,
        wall_s=previous_wall + time.perf_counter() - started,
        extra={"compute": compute.describe()},
    )


METRICS_NAME = "metrics.jsonl"
SNAPSHOT_DIR = "snapshots"


def keeps_snapshot(epoch: int, epochs: int) -> bool:
    """About ten student snapshots per trial (every epoch for short budgets, and the last)."""
    return epoch == epochs - 1 or epoch % max(1, epochs // 10) == 0


def snapshot_path(trial_dir: Path, epoch: int) -> Path:
    return trial_dir / SNAPSHOT_DIR / f"epoch_{epoch:04d}.pt"


def save_student_snapshot(trial_dir: Path, epoch: int, student: torch.nn.Module) -> None:
    """The student (weights and quantizer ranges) after ``epoch``, for later analysis."""
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    write_bytes_atomic(snapshot_path(trial_dir, epoch), buf.getvalue())


def _append_metrics(trial_dir: Path, record: EpochRecord) -> None:
    with open(trial_dir / METRICS_NAME, "a") as fh:
        fh.write(json.dumps(asdict(record)) + "\n")


def _rewrite_metrics(trial_dir: Path, records: list[EpochRecord]) -> None:
    """After a resume, the log holds exactly the checkpointed epochs (a kill may have left more)."""
    write_text_atomic(trial_dir / METRICS_NAME, "".join(json.dumps(asdict(r)) + "\n" for r in records))
