"""What an epoch learns about its own training: loss sums, gradient norms, divergence."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class TrialDiverged(RuntimeError):
    """The student loss became NaN/Inf, or accuracy collapsed: the trial's numbers are not a result."""


def divergence(epoch: int, losses: dict[str, float], nonfinite_steps: int, iterations: int) -> str | None:
    """What went non-finite in an epoch, in one line; None when nothing did.

    ``losses`` are the epoch's means of the loss terms and ``nonfinite_steps`` the iterations whose
    total loss or student gradient norm was not finite (:class:`GradientMonitor`). A single
    non-finite loss makes its term's mean non-finite, so when every mean is finite the bad
    iterations had a finite loss and a non-finite gradient: the update blew up, not the loss."""
    bad_terms = [k for k, v in losses.items() if not math.isfinite(v)]
    if not bad_terms and not nonfinite_steps:
        return None
    means = ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
    if bad_terms:
        return (f"non-finite student loss in epoch {epoch} ({', '.join(bad_terms)}; epoch means: {means}); "
                f"{nonfinite_steps} of {iterations} iterations had a non-finite loss or gradient")
    return (f"non-finite student gradient in {nonfinite_steps} of {iterations} iterations of epoch {epoch}, "
            f"while every loss term stayed finite (epoch means: {means}): the student's updates blew up, "
            "typically a loss too large for the student's learning rate")


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


class EpochStats:
    """Sums of the student's loss terms over an epoch's iterations, and its gradient monitor.
    Everything stays on the device until the epoch ends."""

    def __init__(self, student: torch.nn.Module) -> None:
        self.monitor = GradientMonitor(student)
        self.sums: dict[str, Tensor] = {}

    def observe(self, terms: dict[str, Tensor]) -> None:
        self.monitor.observe(terms["total"])
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()

    def running_loss(self, iterations: int) -> float | None:
        """The mean total loss so far (reads the device: call it rarely)."""
        return self.sums["total"].item() / iterations if "total" in self.sums else None

    def losses(self, iterations: int) -> dict[str, float]:
        return {k: v.item() / iterations for k, v in self.sums.items()}


#: Below this many test images top-1 is too noisy to call a drop to chance a collapse.
MIN_IMAGES_FOR_COLLAPSE = 1000


def collapsed(acc: float, ptq: float, num_classes: int, num_images: int) -> bool:
    """Accuracy collapsed to chance after a calibrated student was clearly above it."""
    chance = 100.0 / num_classes
    return num_images >= MIN_IMAGES_FOR_COLLAPSE and ptq > 2 * chance and acc <= chance + 1.0
