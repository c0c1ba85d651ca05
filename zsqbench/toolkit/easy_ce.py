"""The easy-sample cross-entropy (docs/methods/synq.md#easy-sample-cross-entropy): a label CE on
the samples the teacher finds easy, SynQ's guard against fitting the labels of synthetic images
that even the teacher gets wrong. Any method with hard-labelled synthetic data may use it.

* Difficulty δ_b = 1 − softmax(t_b)_{y_b} from the teacher logits at temperature 1.
* Easy mask m_b = [δ_b < τ] (SynQ's code, strict) or [δ_b ≤ τ] (its paper); they differ only on
  exact ties such as p = 0.5 at τ = 0.5.
* Value (1/B)·Σ_b m_b·CE(s_b, y_b): a sum over the easy samples divided by the *whole* batch. The
  code's value adds the constant (B − Σ m)·log C / B (it swaps hard rows for zero logits and label
  0); the gradient is the same, so that constant is left out unless asked for.

The mask is computed once per iteration from the clean teacher logits and reused by a second pass
on perturbed images (:meth:`EasySampleCE.using_mask`), so a perturbation that moves δ across τ does
not change which samples get the CE. Hard rows never reach the CE's arithmetic (their logits are
replaced by zeros, without gradient), so a batch with no easy sample gives exactly 0 and no
gradient, whatever its logits.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F


def difficulty(teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """δ_b = 1 − p_T(y_b | x_b), shape (B,), without gradient."""
    with torch.no_grad():
        return 1.0 - torch.softmax(teacher_logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)


def easy_mask(teacher_logits: Tensor, labels: Tensor, tau: float, inclusive: bool = False) -> Tensor:
    """Which samples are easy: δ < τ (``inclusive``: δ ≤ τ), bool (B,)."""
    delta = difficulty(teacher_logits, labels)
    return delta <= tau if inclusive else delta < tau


def selective_cross_entropy(student_logits: Tensor, labels: Tensor, mask: Tensor, code_offset: bool = False) -> Tensor:
    """(1/B)·Σ_b m_b·CE(s_b, y_b); with ``code_offset`` the released code's value, which adds
    (#hard)·log C / B (a constant: same gradient)."""
    keep = mask[:, None]
    logits = torch.where(keep, student_logits, torch.zeros_like(student_logits))
    targets = torch.where(mask, labels, torch.zeros_like(labels))
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    value = torch.where(mask, per_sample, torch.zeros_like(per_sample)).sum() / mask.numel()
    if code_offset:
        value = value + (~mask).sum() * math.log(student_logits.shape[1]) / mask.numel()
    return value


class EasySampleCE:
    """A logit loss ``(student_logits, teacher_logits, labels) -> λ·selective CE``: the mask from the
    teacher logits it is given, or the one set by :meth:`using_mask` (the clean pass's, in a second
    pass). ``last_easy_fraction`` is the easy share of the latest call, for the logs."""

    def __init__(self, weight: float, tau: float, inclusive: bool = False) -> None:
        self.weight = weight
        self.tau = tau
        self.inclusive = inclusive
        self._mask: Tensor | None = None
        self.last_value: Tensor | None = None
        self.last_easy_fraction: Tensor | None = None

    def mask(self, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return easy_mask(teacher_logits, labels, self.tau, self.inclusive)

    @contextmanager
    def using_mask(self, mask: Tensor | None) -> Iterator[None]:
        """Calls inside use ``mask`` instead of computing one (None: compute it, as outside)."""
        previous, self._mask = self._mask, mask
        try:
            yield
        finally:
            self._mask = previous

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        mask = self._mask if self._mask is not None else self.mask(teacher_logits, labels)
        value = self.weight * selective_cross_entropy(student_logits, labels, mask)
        self.last_value = value.detach()
        self.last_easy_fraction = mask.float().mean()
        return value


__all__ = ["EasySampleCE", "difficulty", "easy_mask", "selective_cross_entropy"]
