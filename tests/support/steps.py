"""Running one iteration of a trial's parts the way the trainer does, and watching the student."""

from __future__ import annotations

from zsqbench.trial.step import epoch_context, iterate


def calibration_input_shapes(parts) -> list[tuple[int, ...]]:
    """The shapes of the batches the student sees in one iteration of the first (calibrating)
    epoch, which must return no loss terms: what an offline method calibrates its ranges on."""
    phase = parts.ctx.spec.budget.phase(0)
    seen: list[tuple[int, ...]] = []
    handle = parts.ctx.student.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        with epoch_context(parts, phase):
            assert iterate(parts, phase) == {}
    finally:
        handle.remove()
    return seen
