"""Test helpers for plugin authors: trial parts around a random teacher, and the phase contract.

They ship with zsqbench (tests/conftest.py is not installed), so a third-party plugin's own tests
build the same parts a trial builds and run its step through the same
:func:`~zsqbench.trial.step.iterate` the trainer calls, without data or weights::

    from zsqbench.testing import check_phases, make_parts, make_spec

A randomly initialized teacher is enough to check shapes, registration and the contracts; whether
a method trains well is a question for a real run (``zsqbench run --budget smoke`` on real data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsqbench.api.plugins import Plugins
from zsqbench.api.spec import Budget, Phase, PluginChoice, TrialSpec
from zsqbench.trial.build import TrialParts, build_trial_parts
from zsqbench.trial.step import epoch_context, iterate
from zsqbench.trial.trainer import seed_everything

__all__ = ["check_phases", "make_parts", "make_spec"]


def make_spec(
    generator: str = "gdfq",
    loss: str = "kd",
    bits: int = 4,
    batch_size: int = 4,
    dataset: str = "cifar10",
    generator_options: dict[str, Any] | None = None,
    loss_options: dict[str, Any] | None = None,
    **budget: Any,
) -> TrialSpec:
    """A ResNet-20 trial spec with a tiny budget (2 epochs of 2 iterations, the first calibrating);
    ``budget`` keywords (``epochs=``, ``warmup_epochs=``, ``calibration_epochs=``, ...) change it."""
    b: dict[str, Any] = {"epochs": 2, "iters_per_epoch": 2, "batch_size": batch_size, "warmup_epochs": 1}
    b.update(budget)
    return TrialSpec(
        model=f"resnet20_{dataset}",
        dataset=dataset,
        generator=PluginChoice(name=generator, options=generator_options or {}),
        loss=PluginChoice(name=loss, options=loss_options or {}),
        w_bits=bits,
        a_bits=bits,
        seed=0,
        budget=Budget(**b),
    )


def make_parts(plugins: Plugins, spec: TrialSpec, cache_dir: Path, seed: int = 0) -> TrialParts:
    """Trial parts around a randomly initialized, frozen teacher on CPU (no data or weights needed),
    built exactly as a trial builds them."""
    seed_everything(seed)
    entry = plugins.models.get(spec.model)
    teacher = entry.build().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return build_trial_parts(spec, plugins, entry, teacher, torch.device("cpu"), Path(cache_dir))


def _parameters(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in student.named_parameters()}


def _changed(before: dict[str, torch.Tensor], student: torch.nn.Module) -> list[str]:
    return [n for n, p in student.named_parameters() if not torch.equal(before[n], p.detach())]


#: The budgets check_phases tries, in order, as (epochs, warm-up epochs, calibration epochs): one
#: epoch of each phase; without the frozen one for a generator that calibrates through its whole
#: warm-up (HAST, IntraQ, ZeroQ refuse frozen epochs); a calibration epoch alone for one that is
#: post-training only.
PHASE_BUDGETS = ((3, 2, 1), (2, 1, None), (1, 1, None))


def _phase_spec(plugins: Plugins, spec: TrialSpec) -> TrialSpec:
    """``spec`` on the first of :data:`PHASE_BUDGETS` its generator accepts (one iteration per epoch)."""
    gen_cls = plugins.generators.get(spec.generator.name)
    options = gen_cls.Options(**spec.generator.options)
    candidate = spec
    for epochs, warmup, calibration in PHASE_BUDGETS:
        budget = Budget(**{**spec.budget.model_dump(), "epochs": epochs, "iters_per_epoch": 1, "warmup_epochs": warmup,
                           "calibration_epochs": calibration, "lr_milestones": []})
        candidate = spec.model_copy(update={"budget": budget})
        if not gen_cls.budget_problem(options, candidate):
            return candidate
    return candidate  # refused by every one: building the parts raises the generator's own message


def check_phases(plugins: Plugins, spec: TrialSpec, cache_dir: Path, seed: int = 0) -> None:
    """Run one iteration of each kind of epoch, in the trainer's order, and check what the trainer
    relies on (:class:`~zsqbench.api.generator.Phase`): while ``calibrating`` the step calls
    ``student.calibrate`` and leaves the student's parameters alone; while ``frozen`` (ImageNet's
    warm-up after calibration, e.g. ``in1k-short``) it leaves them alone too; in a training epoch it
    updates them and returns the loss terms. Only the two non-training phases return no terms.

    A student *optimizer* step outside training already fails first, in :func:`iterate`, with
    :class:`~zsqbench.api.generator.PhaseViolation`; this check still catches what that count
    cannot see: weights changed outside the optimizer, loss terms returned outside training and a
    calibrating epoch that never calls ``student.calibrate``. No CIFAR budget has a frozen epoch,
    so only this check (or an ImageNet run) exercises one. ``spec``'s budget is
    replaced by one iteration of each phase the generator accepts (:data:`PHASE_BUDGETS`); the
    parts are built and prepared as a trial's. Raises AssertionError naming the phase and the
    broken rule."""
    spec = _phase_spec(plugins, spec)
    budget = spec.budget
    parts = make_parts(plugins, spec, cache_dir, seed)
    parts.generator.prepare()
    name, student = spec.generator.name, parts.ctx.student
    calibrations = 0
    real_calibrate = parts.student_update.calibrate

    def counting_calibrate(x: torch.Tensor) -> None:
        nonlocal calibrations
        calibrations += 1
        real_calibrate(x)

    parts.student_update.calibrate = counting_calibrate  # type: ignore[method-assign]
    for epoch in range(budget.epochs):
        phase: Phase = budget.phase(epoch)
        before, calibrations = _parameters(student), 0
        with epoch_context(parts, phase):
            terms = iterate(parts, phase)
        changed = _changed(before, student)
        where = f"generator '{name}' in epoch {epoch} ({_phase_name(phase)})"
        if phase.training:
            assert changed, f"{where} did not update the student; a training step must (e.g. student.step(batch))"
            assert "total" in terms, f"{where} returned {sorted(terms)}, not the student's loss terms with 'total'"
            continue
        assert not changed, (f"{where} updated the student ({changed[0]}, ...); the student is updated only "
                             "when phase.training")
        assert not terms, f"{where} returned loss terms {sorted(terms)}; return {{}} unless phase.training"
        if phase.calibrating:
            assert calibrations, f"{where} never called student.calibrate(x); calibration epochs track the ranges"


def _phase_name(phase: Phase) -> str:
    return "calibrating" if phase.calibrating else "frozen" if phase.frozen else "training"
