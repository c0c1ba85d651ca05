"""Building one trial's parts: student, generator, objective, optimizer, and how they meet.

Used by the trainer, ``zsqbench bench``, the analyses and the tests alike, so all of them run
exactly the objects a trial runs. The order of construction is part of a trial's numbers (module
initializations draw from the seeded RNG), so it is fixed here, once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from zsqbench.api.features import FeatureTaps
from zsqbench.api.generator import Generator, StudentUpdate, TrainContext
from zsqbench.api.losses import DistillationLoss
from zsqbench.api.models import TeacherModel
from zsqbench.api.options import PluginOptions
from zsqbench.api.plugins import Plugins
from zsqbench.api.quantizer import Quantizer
from zsqbench.api.spec import OptimSettings, Phase, PluginChoice, TrialSpec
from zsqbench.errors import UserError
from zsqbench.progress import NullProgress, ProgressSink

#: The plugins' speed-only options by plugin name (``ComputeSettings.switches``): not in the spec.
Switches = Mapping[str, Mapping[str, Any]]


@dataclass
class TrialParts:
    """The objects of one trial, wired together."""

    ctx: TrainContext
    quantizer: Quantizer
    generator: Generator
    objective: DistillationLoss
    optimizer: torch.optim.Optimizer
    student_update: StudentUpdate
    #: the whole iteration compiled (``--compile``; trial/step.py compile_iteration), else None: eager
    compiled_step: Callable[[Phase], dict[str, Tensor]] | None = None
    #: student optimizer steps in the current iteration (counted by the optimizer's post-step hook,
    #: reset by trial/step.py iterate, which refuses any outside a training phase)
    student_steps: int = 0

    def networks(self) -> list[nn.Module]:
        """Every network of the trial (teacher, student, the generator's declared ones): what
        compute settings apply to."""
        return [self.ctx.teacher, self.ctx.student, *self.generator.networks().values()]


def check_budget(gen_cls: type[Generator], spec: TrialSpec) -> None:
    """Refuse a budget the generator cannot run (a PTQ-only generator with training epochs, a
    training one without): a one-line user error naming the fix. Checked when a grid is
    expanded and again here, for specs made any other way."""
    problem = gen_cls.budget_problem(gen_cls.Options(**spec.generator.options), spec)
    if problem:
        raise UserError(problem)


def plugin_options(plugin: type, choice: PluginChoice, switches: Switches | None = None) -> PluginOptions:
    """A plugin's options as a trial uses them: the spec's (what the id hashes) and the speed-only
    ones the compute settings give it."""
    return plugin.Options(**{**choice.options, **(switches or {}).get(choice.name, {})})


def build_student(spec: TrialSpec, plugins: Plugins, teacher: nn.Module, device: torch.device,
                  switches: Switches | None = None) -> tuple[Quantizer, nn.Module]:
    """The trial's quantizer and its student: a quantized copy of the (eval-mode) teacher, in eval mode.

    What every user of a trial's student builds it with (training, analyses, ``zsqbench export``);
    it draws nothing from the RNG, so building it first keeps the trial's numbers."""
    quant_cls = plugins.quantizers.get(spec.quantizer.name)
    quantizer = quant_cls(plugin_options(quant_cls, spec.quantizer, switches))
    student_fp = copy.deepcopy(teacher)
    for p in student_fp.parameters():
        p.requires_grad_(True)
    return quantizer, quantizer.quantize(student_fp, spec.w_bits, spec.a_bits).to(device).eval()


def student_sgd(params: Iterable[nn.Parameter], o: OptimSettings, foreach: bool = True) -> torch.optim.SGD:
    """The core's student optimizer (SGD, Nesterov momentum, weight decay;
    docs/methods/common.md#optimizers-and-learning-rate-schedule).

    ``foreach=True``: one multi-tensor update per step instead of a Python loop over the
    parameters; bit-identical to the loop (tests/trial/test_fused_ops.py) and half its CPU time for
    ResNet-20's 65 tensors. (``fused=True`` is not used: it differs in the last bit.)
    """
    return torch.optim.SGD(params, lr=o.student_lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay, foreach=foreach)


def build_trial_parts(
    spec: TrialSpec,
    plugins: Plugins,
    entry: TeacherModel,
    teacher: nn.Module,
    device: torch.device,
    cache_dir: Path,
    progress: ProgressSink | None = None,
    switches: Switches | None = None,
) -> TrialParts:
    """Quantize a copy of the (eval-mode, frozen) teacher, build generator, objective and optimizer
    (the loss plugin's own, :meth:`~zsqbench.api.losses.DistillationLoss.build_optimizer`, else SGD).
    ``switches``: the compute settings' speed-only plugin options."""
    progress = progress or NullProgress()
    gen_cls = plugins.generators.get(spec.generator.name)
    check_budget(gen_cls, spec)
    quantizer, student = build_student(spec, plugins, teacher, device, switches)

    loss_cls = plugins.losses.get(spec.loss.name)
    ctx = TrainContext(
        spec=spec, teacher_entry=entry, teacher=teacher, student=student, device=device, cache_dir=Path(cache_dir),
        teacher_taps=FeatureTaps(teacher, ()), student_taps=FeatureTaps(student, ()),
        report=lambda desc, done, total: progress.advance(done, desc),
    )
    generator = gen_cls(plugin_options(gen_cls, spec.generator, switches), ctx)
    objective = loss_cls(plugin_options(loss_cls, spec.loss, switches), generator.native_losses(), entry)
    ctx.teacher_taps = FeatureTaps(teacher, objective.feature_taps)
    ctx.student_taps = FeatureTaps(student, objective.feature_taps)
    optimizer = objective.build_optimizer(spec, student, quantizer)
    if optimizer is None:
        o = spec.optim
        optimizer = student_sgd(student.parameters(), o)
    parts = TrialParts(ctx, quantizer, generator, objective, optimizer, StudentUpdate(ctx, objective, optimizer, quantizer))

    def after_student_step(*_: object) -> None:
        """Whatever the optimizer (the core's SGD or a loss's own), the quantizer hears of every
        update, and the core counts it (the phase contract)."""
        quantizer.weights_updated(student)
        parts.student_steps += 1

    optimizer.register_step_post_hook(after_student_step)
    return parts
