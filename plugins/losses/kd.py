"""Logit distillation: each generator's native student loss by default, plain Hinton KL as option.

``--loss kd`` therefore reproduces every baseline as published (GDFQ: KD-mean·T² + CE,
AdaDFQ: entropy of the logit difference, HAST: KD + feature alignment).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from zsqbench.api import DistillationLoss, LossInputs, PluginOptions, hookimpl
from zsqbench.toolkit.logits import kd_kl
from zsqbench_plugins.losses.cards import KD_CARD


class KDOptions(PluginOptions):
    form: Literal["native", "kl"] = Field(
        "native", description="'native' = the generator's published student loss; 'kl' = T²·KL batchmean"
    )
    temperature: float = Field(20.0, gt=0, description="temperature of the 'kl' form")


class KD(DistillationLoss):
    name = "kd"
    description = "logit KD: the generator's native student loss (form=native) or plain Hinton KL (form=kl)"
    Options = KDOptions
    card = KD_CARD

    def __init__(self, options, native, teacher) -> None:
        super().__init__(options, native, teacher)
        if self.options.form == "native":  # type: ignore[attr-defined]
            self.feature_taps = native.objective.feature_taps

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        opts: KDOptions = self.options  # type: ignore[assignment]
        if opts.form == "native":
            return self.native.objective(inputs)
        value = kd_kl(inputs.student_logits, inputs.teacher_logits, opts.temperature, "batchmean")
        return {"total": value, "logit": value}


@hookimpl
def register_losses(register) -> None:
    register(KD)
