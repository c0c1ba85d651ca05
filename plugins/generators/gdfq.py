"""GDFQ (ECCV 2020): a label-conditioned generator trained on CE + BN statistics (METHODS §3–4).

Native student loss: α·T²·KL with PyTorch's element-mean reduction (÷B·C, METHODS §4.2 and
defect G3, reproduced deliberately) plus label CE.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from zsqbench.api.hookspecs import hookimpl
from zsqbench.api.interfaces import Batch, LossInputs, NativeLosses, PluginOptions, StudentObjective
from zsqbench_plugins.generators._common import OnlineGenerator, kd_kl


class GDFQOptions(PluginOptions):
    bns_weight: float = Field(0.1, ge=0, description="weight of the BN-statistics term in the generator loss")
    temperature: float = Field(20.0, gt=0, description="KD temperature of the student loss")
    kd_weight: float = Field(1.0, ge=0, description="α in α·T²·KL")
    kd_reduction: Literal["mean", "batchmean"] = Field(
        "mean", description="'mean' = code (÷B·C), 'batchmean' = textbook KD (÷B)"
    )
    ce_weight: float = Field(1.0, ge=0, description="weight of the label CE in the student loss")


class GDFQLogitLoss:
    def __init__(self, opts: GDFQOptions) -> None:
        self.opts = opts

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        o = self.opts
        kd = kd_kl(student_logits, teacher_logits, o.temperature, o.kd_reduction)
        return o.kd_weight * kd + o.ce_weight * F.cross_entropy(student_logits, labels)


class LogitObjective(StudentObjective):
    """A student objective made of a logit loss alone (no feature taps)."""

    def __init__(self, logit) -> None:
        self.logit = logit

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        value = self.logit(inputs.student_logits, inputs.teacher_logits, inputs.labels)
        return {"total": value, "logit": value}


class GDFQ(OnlineGenerator):
    name = "gdfq"
    description = "GDFQ generator: conditional generator trained on CE + BN statistics; KD-mean·T² + CE student loss"
    Options = GDFQOptions

    def next_batch(self, epoch: int) -> Batch:
        opts: GDFQOptions = self.options  # type: ignore[assignment]
        z, y, x = self.sample()
        with self.bns.recording():
            t, feats = self.ctx.teacher_forward(x)
        loss_g = F.cross_entropy(t, y) + opts.bns_weight * self.bns.loss()
        self.step_generator(loss_g)
        return Batch(x=x.detach(), y=y, teacher_logits=t.detach(), teacher_features=feats)

    def native_losses(self) -> NativeLosses:
        logit = GDFQLogitLoss(self.options)  # type: ignore[arg-type]
        return NativeLosses(logit=logit, objective=LogitObjective(logit))


@hookimpl
def register_generators(register) -> None:
    register(GDFQ)
