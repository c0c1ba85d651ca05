"""Running one trial (docs/methods/common.md#one-trial-epoch-by-epoch): set up, resume, epochs, checkpoints,
outcome.

Per epoch: the epoch setting (LRs, activation ranges tracked in calibration epochs and frozen
otherwise, the generator's schedule; :func:`zsqbench.trial.step.epoch_context`), then
``iters_per_epoch`` iterations of the generator's step (:func:`zsqbench.trial.step.iterate`),
then the epoch's checks, the evaluation (from the last calibration epoch on, which gives the PTQ
accuracy, at the budget's cadence) and, in a trial folder, the checkpoint. The student stays in eval
mode (docs/methods/common.md#student-in-eval-mode).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from zsqbench.api.models import TeacherModel
from zsqbench.api.plugins import Plugins
from zsqbench.api.spec import Phase, TrialSpec
from zsqbench.assets.teachers import FP_TOLERANCE, LoadedTeacher, fp_verdict, load_teacher, select_checkpoint
from zsqbench.assets.test_set import NormalizedImages, TestSet
from zsqbench.perf.compute import ComputeSettings, apply_compute_settings, tune_cpu_allocator
from zsqbench.progress import NullProgress, ProgressSink
from zsqbench.runs.checkpoint import rng_state, set_rng_state
from zsqbench.runs.environment import Environment
from zsqbench.runs.folder import TrialFolder
from zsqbench.runs.record import EpochRecord, TrialOutcome
from zsqbench.trial.build import TrialParts, build_trial_parts
from zsqbench.trial.evaluate import top1
from zsqbench.trial.monitor import EpochStats, TrialDiverged, collapsed, divergence
from zsqbench.trial.resources import TrialResources
from zsqbench.trial.step import compile_iteration, epoch_context, iterate, optimizer_summary

#: The running loss shown in the progress display is refreshed this often (iterations).
LOSS_DISPLAY_EVERY = 50


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keeps_snapshot(epoch: int, epochs: int) -> bool:
    """About ten student snapshots per trial (every epoch for short budgets, and the last)."""
    return epoch == epochs - 1 or epoch % max(1, epochs // 10) == 0


@dataclass
class TrialSetup:
    """A trial ready to train: its parts, its teacher and test set, the FP accuracy."""

    spec: TrialSpec
    env: Environment
    entry: TeacherModel
    teacher: LoadedTeacher
    test: TestSet
    inputs: NormalizedImages  # normalized per evaluation batch
    fp_top1: float
    parts: TrialParts
    compute: ComputeSettings


@dataclass
class TrainingState:
    """What the epochs so far produced (restored from a checkpoint on resume)."""

    records: list[EpochRecord] = field(default_factory=list)
    ptq: float = float("nan")
    previous_wall: float = 0.0

    @property
    def next_epoch(self) -> int:
        return len(self.records)


def set_up(spec: TrialSpec, plugins: Plugins, env: Environment, progress: ProgressSink,
           resources: TrialResources) -> TrialSetup:
    """Teacher and test set (the FP accuracy measured, never assumed), then the seeded parts with
    the compute settings applied and the generator prepared (e.g. HAST's synthesis)."""
    device = env.device
    entry = plugins.models.get(spec.model)
    test = resources.test_set(spec.dataset, env, progress)
    ref = spec.teacher or select_checkpoint(entry, env.data_root, env.teacher_weights, env.offline)
    loaded = load_teacher(entry, ref, env.data_root, env.teacher_weights, env.offline, progress)
    teacher = loaded.module.to(device).eval()
    for p in teacher.parameters():
        # S2 of docs/methods/common.md#defects-shared-by-the-official-codes: identical results,
        # no wasted weight gradients
        p.requires_grad_(False)
    inputs = resources.inputs(test, loaded)
    fp = resources.fp_top1(test, loaded, teacher, env)
    if loaded.expected_top1 is not None and fp_verdict(fp, loaded.expected_top1, test.complete)[0] == "outside":
        progress.message(
            f"warning: FP teacher measured {fp:.2f}% but the '{loaded.weights_tag}' checkpoint is "
            f"expected to give {loaded.expected_top1:.2f}% (±{FP_TOLERANCE}); check the data and weights with "
            "`zsqbench teacher-eval`"
        )
    seed_everything(spec.seed)
    parts = build_trial_parts(spec, plugins, entry, teacher, device, env.cache_dir, progress, env.compute.switches)
    tune_cpu_allocator()
    compute = env.compute.resolved(device)
    apply_compute_settings(parts.networks(), compute)
    parts.generator.prepare()
    if compute.compile:
        compile_iteration(parts, device)
    return TrialSetup(spec, env, entry, loaded, test, inputs, fp, parts, compute)


def resume(setup: TrialSetup, folder: TrialFolder, progress: ProgressSink) -> TrainingState:
    """The state of the folder's last checkpoint loaded into the parts (RNG streams included);
    a fresh state when there is none."""
    spec, parts = setup.spec, setup.parts
    saved = folder.load_checkpoint(spec.trial_id)
    if saved is None:
        folder.write_metrics([])  # epochs logged by an attempt whose checkpoint is gone are not this run's
        return TrainingState()
    if saved.get("precision", "fp32") != setup.compute.precision:  # grid.runner refuses this earlier
        raise ValueError(f"trial {spec.trial_id} was started at precision {saved.get('precision', 'fp32')}; "
                         f"it cannot be resumed at {setup.compute.precision}")
    parts.ctx.student.load_state_dict(saved["student"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.generator.load_state_dict(saved["generator"])
    set_rng_state(saved["rng"])
    state = TrainingState([EpochRecord(**r) for r in saved["records"]], saved["ptq"], saved["wall_s"])
    progress.message(f"resuming trial {spec.trial_id} after epoch {state.next_epoch}/{spec.budget.epochs}")
    folder.write_metrics([r.to_dict() for r in state.records])
    return state


def train_epoch(setup: TrialSetup, phase: Phase, progress: ProgressSink) -> tuple[float, EpochStats]:
    """The epoch's iterations; its LR and statistics. The running loss is read (a host-device
    synchronization) only for a display that shows it, every LOSS_DISPLAY_EVERY iterations."""
    spec, parts = setup.spec, setup.parts
    iters = spec.budget.iters_per_epoch
    stats = EpochStats(parts.ctx.student)
    show_loss = getattr(progress, "shows_info", True)
    info = ""
    with epoch_context(parts, phase) as lr:
        progress.start(f"{spec.generator.name}+{spec.loss.name} {spec.bits_label} epoch {phase.epoch + 1}/"
                       f"{spec.budget.epochs}" + ("" if phase.training else " (warm-up)"), iters)
        for it in range(iters):
            iterate(parts, phase, stats)
            last = it + 1 == iters
            if (it + 1) % 10 == 0 or last:
                if show_loss and ((it + 1) % LOSS_DISPLAY_EVERY == 0 or last):
                    running = stats.running_loss(it + 1)
                    info = "" if running is None else f"loss {running:.4f}"
                progress.advance(it + 1, info)
    return lr, stats


def epoch_warnings(setup: TrialSetup, phase: Phase, losses: dict[str, float], grads: dict,
                   progress: ProgressSink) -> list[str]:
    """Raise on a diverged epoch; warn when a weighted feature term is exactly 0 for the whole epoch,
    the signature of broken taps or teacher/student pairing
    (docs/methods/akt.md#sanity-checks, defect D3 of akt.md#defects-of-the-official-code)."""
    spec = setup.spec
    problem = divergence(phase.epoch, losses, grads.get("nonfinite_steps", 0), spec.budget.iters_per_epoch)
    if problem is not None:
        raise TrialDiverged(problem)
    warnings: list[str] = []
    if phase.training and setup.parts.objective.feature_weight > 0 and losses.get("feature") == 0.0:
        warnings.append(f"feature term of loss '{spec.loss.name}' is exactly 0 in epoch {phase.epoch}: "
                        "feature taps or teacher/student pairing are broken")
        progress.message(f"warning: {warnings[-1]}")
    return warnings


def evaluated_images(setup: TrialSetup) -> int:
    """How many test images an evaluation uses: all, or the budget's ``eval_images`` first ones."""
    n = len(setup.test.labels)
    return n if setup.spec.budget.eval_images is None else min(n, setup.spec.budget.eval_images)


def evaluate(setup: TrialSetup, phase: Phase) -> float | None:
    """Student top-1 on the test set (or its first ``eval_images``) in the epochs the budget
    evaluates (:meth:`~zsqbench.api.spec.Budget.evaluates`: from the last calibration epoch on,
    at the budget's cadence); None in the others."""
    budget = setup.spec.budget
    if not budget.evaluates(phase.epoch):
        return None
    return top1(setup.parts.ctx.student, setup.inputs, setup.test.labels, setup.env.device,
                setup.env.eval_batch_size, images=budget.eval_images)


def save_epoch(folder: TrialFolder, setup: TrialSetup, state: TrainingState, wall_s: float) -> None:
    """The lease renewed (and checked: a worker that lost it stops here), then the checkpoint, the
    records so far as metrics.jsonl, and a snapshot when due; each written atomically."""
    spec, parts = setup.spec, setup.parts
    record = state.records[-1]
    folder.heartbeat()
    folder.save_checkpoint({
        "trial_id": spec.trial_id, "epoch": record.epoch, "records": [r.to_dict() for r in state.records],
        "ptq": state.ptq, "wall_s": wall_s, "student": parts.ctx.student.state_dict(),
        "optimizer": parts.optimizer.state_dict(), "generator": parts.generator.state_dict(), "rng": rng_state(),
        "precision": setup.compute.precision,
    })
    folder.write_metrics([r.to_dict() for r in state.records])
    if keeps_snapshot(record.epoch, spec.budget.epochs):
        folder.save_snapshot(record.epoch, parts.ctx.student)


def run_trial(spec: TrialSpec, plugins: Plugins, env: Environment, progress: ProgressSink | None = None,
              resources: TrialResources | None = None, folder: TrialFolder | None = None) -> TrialOutcome:
    """Run one trial. With ``folder`` it checkpoints every epoch there, appends ``metrics.jsonl``,
    and resumes from an existing checkpoint."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    setup = set_up(spec, plugins, env, progress, resources or TrialResources())
    state = resume(setup, folder, progress) if folder is not None else TrainingState()
    budget = spec.budget
    for epoch in range(state.next_epoch, budget.epochs):
        t0 = time.perf_counter()
        phase = budget.phase(epoch)
        lr, stats = train_epoch(setup, phase, progress)
        losses, grads = stats.losses(budget.iters_per_epoch), stats.monitor.summary()
        warnings = epoch_warnings(setup, phase, losses, grads, progress)
        acc = evaluate(setup, phase)
        if epoch == budget.ptq_epoch:
            state.ptq = acc  # type: ignore[assignment]
        state.records.append(EpochRecord(epoch, phase.name, lr, acc, losses, time.perf_counter() - t0, warnings,
                                         **grads, optimizer=optimizer_summary(setup.parts)))
        if acc is not None and phase.training and collapsed(acc, state.ptq, setup.entry.num_classes,
                                                           evaluated_images(setup)):
            raise TrialDiverged(f"top-1 collapsed to {acc:.2f}% in epoch {epoch} (PTQ was {state.ptq:.2f}%)")
        if folder is not None:
            save_epoch(folder, setup, state, state.previous_wall + time.perf_counter() - started)
        progress.message(f"epoch {epoch + 1}/{budget.epochs}: top-1 {acc:.2f}%" if acc is not None
                         else f"epoch {epoch + 1}/{budget.epochs}: " + ("not evaluated" if phase.training else "warm-up"))
    return TrialOutcome(fp_top1=setup.fp_top1, ptq_top1=state.ptq, epochs=state.records, teacher=setup.teacher,
                        test_set=setup.test, wall_s=state.previous_wall + time.perf_counter() - started,
                        compute=setup.compute.describe())
