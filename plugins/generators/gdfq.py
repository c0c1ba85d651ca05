"""GDFQ (ECCV 2020): a label-conditioned generator trained on CE + BN statistics (docs/methods/gdfq.md).

Native student loss: α·T²·KL with PyTorch's element-mean reduction (÷B·C, docs/methods/gdfq.md#losses and
defect G3, reproduced deliberately) plus label CE, declared as family ``KD_CE`` (a loss such as
AIT may re-weight its two terms). The step is the default one: a generator
update (:meth:`~zsqbench.toolkit.online.TrainedGenerator.gdfq_step`), then the student update
on the same images with the teacher outputs reused. The logit loss itself lives in the toolkit
(:class:`~zsqbench.toolkit.logits.GDFQLogitLoss`), shared with Qimera's soft-label variant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from zsqbench.api import KD_CE, Batch, NativeLosses, Phase, PluginOptions, hookimpl
from zsqbench.toolkit.logits import GDFQLogitLoss, LogitObjective
from zsqbench.toolkit.online import OnlineGenerator
from zsqbench_plugins.generators.cards import GDFQ_CARD


class GDFQOptions(PluginOptions):
    bns_weight: float = Field(0.1, ge=0, description="weight of the BN-statistics term in the generator loss")
    temperature: float = Field(20.0, gt=0, description="KD temperature of the student loss")
    kd_weight: float = Field(1.0, ge=0, description="α in α·T²·KL")
    kd_reduction: Literal["mean", "batchmean"] = Field(
        "mean", description="'mean' = code (÷B·C), 'batchmean' = textbook KD (÷B)"
    )
    ce_weight: float = Field(1.0, ge=0, description="weight of the label CE in the student loss")


class GDFQ(OnlineGenerator):
    name = "gdfq"
    description = "GDFQ generator: conditional generator trained on CE + BN statistics; KD-mean·T² + CE student loss"
    Options = GDFQOptions
    card = GDFQ_CARD

    def next_batch(self, phase: Phase) -> Batch:
        return self.online.gdfq_step(self.options.bns_weight)  # type: ignore[attr-defined]

    def native_losses(self) -> NativeLosses:
        logit = GDFQLogitLoss(self.options)  # type: ignore[arg-type]
        return NativeLosses(logit=logit, objective=LogitObjective(logit), family=KD_CE)


__all__ = ["GDFQ", "GDFQLogitLoss", "GDFQOptions"]


@hookimpl
def register_generators(register) -> None:
    register(GDFQ)
