"""Logit distillation as the ZSQ codes compute it, and a student objective made of a logit loss."""

from __future__ import annotations

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


class LogitObjective(StudentObjective):
    """A student objective made of a logit loss alone (no feature taps): terms ``total`` and ``logit``."""

    def __init__(self, logit: LogitLoss) -> None:
        self.logit = logit

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        value = self.logit(inputs.student_logits, inputs.teacher_logits, inputs.labels)
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
