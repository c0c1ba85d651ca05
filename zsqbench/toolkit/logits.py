"""Logit distillation as the ZSQ codes compute it, and a student objective made of a logit loss."""

from __future__ import annotations

from typing import Literal, Protocol

from torch import Tensor
from torch.nn import functional as F

from zsqbench.api.losses import LogitLoss, LossInputs, StudentObjective


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, reduction: str) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)).

    ``reduction="mean"`` divides the summed KL by B·C (PyTorch's legacy element mean, which
    GDFQ's code uses); ``"batchmean"`` divides by B (textbook KD).
    """
    t = temperature
    total = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                     reduction="sum", log_target=True)
    denom = student_logits.numel() if reduction == "mean" else student_logits.shape[0]
    return total / denom * (t * t)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """(1/B)·Σ_b H(ℓ_b, softmax(logits_b)) = mean_b −Σ_c ℓ_bc·log_softmax(logits_b)_c, for a
    (B, C) label distribution ℓ (Qimera's superposed labels, docs/methods/qimera.md#losses). Its minimum
    over the logits is the mean entropy of ℓ, not 0 (a mixed label cannot be fit exactly)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy against class indices (B,) or a label distribution (B, C).

    Class indices go through ``F.cross_entropy`` exactly as before soft labels existed, so a
    hard-label method's numbers stay bit for bit; a distribution takes
    :func:`soft_cross_entropy`, which equals it for one-hot rows up to float rounding.
    """
    if targets.dim() == logits.dim() and targets.is_floating_point():
        return soft_cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets)


class KDCESettings(Protocol):
    """The four numbers of GDFQ's student loss; GDFQ's and Qimera's options both have them."""

    temperature: float
    kd_weight: float
    kd_reduction: Literal["mean", "batchmean"]
    ce_weight: float


class GDFQLogitLoss:
    """GDFQ's student logit loss α·T²·KL (``kd_reduction``: 'mean' ÷B·C as coded, or 'batchmean')
    + κ_ce·CE (docs/methods/gdfq.md#losses), shared by the GDFQ family: with soft labels (Qimera) the CE
    is the soft CE against them (docs/methods/qimera.md#losses), the same value for one-hot labels."""

    def __init__(self, opts: KDCESettings) -> None:
        self.opts = opts

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        o = self.opts
        kd = kd_kl(student_logits, teacher_logits, o.temperature, o.kd_reduction)
        return o.kd_weight * kd + o.ce_weight * cross_entropy(student_logits, labels)


class LogitObjective(StudentObjective):
    """A student objective made of a logit loss alone (no feature taps): terms ``total`` and ``logit``.
    The logit loss gets the batch's targets (soft labels where the generator made them)."""

    def __init__(self, logit: LogitLoss) -> None:
        self.logit = logit

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        value = self.logit(inputs.student_logits, inputs.teacher_logits, inputs.targets)
        return {"total": value, "logit": value}


class ScaledKD:
    """α·T²·KL_batchmean(softmax(t/T) ‖ softmax(s/T)) + w·CE(s, y): the student loss of the offline
    pipelines that share IntraQ's fine-tuning (IntraQ: α = T = 20, w = 1; ZeroQ + FT: w = 0, KD
    only; ZeroQ + IL + FT: w = 1). With w = 0 the CE is not computed at all."""

    def __init__(self, alpha: float, temperature: float, ce_weight: float = 0.0) -> None:
        self.alpha = alpha
        self.temperature = temperature
        self.ce_weight = ce_weight

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        kd = self.alpha * kd_kl(student_logits, teacher_logits, self.temperature, "batchmean")
        if self.ce_weight == 0:
            return kd
        return kd + self.ce_weight * F.cross_entropy(student_logits, labels)
