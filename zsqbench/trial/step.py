"""One training iteration and the epoch setting it runs in, for every caller alike.

The trainer, ``zsqbench bench``, the analyses and the tests all train through
:func:`epoch_context` and :func:`iterate`, so a benchmark times what a trial runs and a test
checks what a trial computes. The phase comes from the budget
(:meth:`zsqbench.api.spec.Budget.phase`) and is handed to the plugins.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from zsqbench.api.generator import PhaseViolation
from zsqbench.api.optimizers import EpochAwareOptimizer
from zsqbench.api.spec import Phase
from zsqbench.perf.compute import allow_compiled_backward_twice, quiet_compile_logs, separate_inductor_cache
from zsqbench.trial.build import TrialParts
from zsqbench.trial.monitor import EpochStats


@contextmanager
def epoch_context(parts: TrialParts, phase: Phase) -> Iterator[float]:
    """An epoch's setting: the student LR of the schedule (yielded; then an epoch-aware optimizer
    hears the phase), activation ranges tracked in calibration epochs and frozen otherwise, the
    generator's own schedule, the student in eval mode (docs/methods/common.md#student-in-eval-mode), the
    feature taps installed.
    Ranges are frozen again on exit."""
    spec, student = parts.ctx.spec, parts.ctx.student
    lr = spec.optim.student_lr * spec.budget.lr_factor(phase.epoch)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    if isinstance(parts.optimizer, EpochAwareOptimizer):
        parts.optimizer.start_epoch(phase)
    parts.quantizer.set_calibrating(student, phase.calibrating)
    try:
        parts.generator.start_epoch(phase)
        student.eval()
        with parts.ctx.teacher_taps.active(), parts.ctx.student_taps.active():
            yield lr
    finally:
        parts.quantizer.set_calibrating(student, False)


def iterate(parts: TrialParts, phase: Phase, stats: EpochStats | None = None) -> dict[str, Tensor]:
    """One iteration: the generator's step (its batch, then calibration or a student update);
    the student's detached loss terms, observed by ``stats`` (empty while calibrating).

    The phase contract is checked here, for every caller: a student optimizer step in a
    calibrating or frozen iteration raises :class:`~zsqbench.api.generator.PhaseViolation`
    (counted by the optimizer's post-step hook, trial/build.py), so a plugin whose step trains
    the student in the wrong epoch fails at its first such iteration, in one line."""
    parts.student_steps = 0  # reset out here: a compiled step then always starts from the same count
    if parts.compiled_step is not None:
        terms = parts.compiled_step(phase)
    else:
        terms = parts.generator.step(phase, parts.student_update)
    if parts.student_steps and not phase.training:
        raise PhaseViolation(_phase_violation(parts, phase))
    if terms and stats is not None:
        stats.observe(terms)
    return terms


def _phase_violation(parts: TrialParts, phase: Phase) -> str:
    """The one-line message of a student update outside training: the plugin, the epoch, its phase, the fix."""
    spec = parts.ctx.spec
    why = "activation ranges only" if phase.calibrating else "the warm-up after calibration"
    return (f"generator '{spec.generator.name}' stepped the student's optimizer in epoch {phase.epoch + 1}/"
            f"{spec.budget.epochs}, a {phase.kind} epoch ({why}); the student may change only in training epochs: "
            "update it in student_step(), which the core calls only then")


def _whole_step(parts: TrialParts) -> Callable[[Phase], dict[str, Tensor]]:
    def step(phase: Phase) -> dict[str, Tensor]:
        return parts.generator.step(phase, parts.student_update)

    return step


def compile_iteration(parts: TrialParts, device: torch.device, cuda_graphs: bool = True) -> None:
    """``--compile``: the whole iteration — generator step, teacher and student passes, losses, both
    optimizer steps — through ``torch.compile``, so that at small batches the per-operation costs
    (fake quantization, BN statistics, attention losses, optimizer updates) fuse into few kernels.
    Backward calls and a few Python-side decisions split it into several graphs
    (``zsqbench bench --explain`` lists them); on CUDA the graphs are captured as CUDA graphs
    (``mode="reduce-overhead"``), which removes the launch cost of a static-shape step. Results
    match eager to float rounding, not bit for bit (fused multiply-adds; tests/trial/test_compile.py).
    ``cuda_graphs=False`` compiles on CUDA without capturing graphs (the device check times both)."""
    allow_compiled_backward_twice()
    separate_inductor_cache()
    quiet_compile_logs()
    import torch._inductor.config as inductor_config

    # Random draws inside the graph (noise, labels, crops) from the eager generator's stream, so a
    # compiled trial sees the same batches as the eager one with the same seed.
    inductor_config.fallback_random = True
    mode = "reduce-overhead" if device.type == "cuda" and cuda_graphs else None
    parts.compiled_step = torch.compile(_whole_step(parts), mode=mode)


def explain_iteration(parts: TrialParts, phase: Phase) -> dict[str, Any]:
    """How ``torch.compile`` splits one iteration: its graphs and each graph break's reason and
    place (runs one iteration, traced, without compiling kernels)."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    counters.clear()
    report = dynamo.explain(_whole_step(parts))(phase)
    found: dict[str, dict[str, Any]] = {}
    for reason in report.break_reasons:  # with the place, where dynamo reports one
        frame = reason.user_stack[-1] if reason.user_stack else None
        text = reason.reason.strip().splitlines()[0]
        found.setdefault(text, {"reason": text, "count": 0,
                                "where": f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""})
        found[text]["count"] += 1
    for text, count in counters["graph_break"].items():  # the rest (backward calls, skipped functions)
        first = text.strip().splitlines()[0]
        entry = found.setdefault(first, {"reason": first, "count": 0, "where": ""})
        entry["count"] = max(entry["count"], count)
    breaks = sorted(found.values(), key=lambda b: -b["count"])
    return {"graphs": report.graph_count, "graph_breaks": report.graph_break_count, "ops": report.op_count,
            "breaks": breaks}


def optimizer_summary(parts: TrialParts) -> dict[str, Any]:
    """What an epoch-aware student optimizer reports about the epoch just trained (``{}`` for
    the core's SGD); call it once per epoch, after the iterations."""
    if isinstance(parts.optimizer, EpochAwareOptimizer):
        return parts.optimizer.epoch_summary()
    return {}
