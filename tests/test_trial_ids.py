"""Trial ids stay what they were: a results folder is looked up by them, so a change in how options are
declared or serialized must never move a trial to a new id (it would be trained again, and its old
result orphaned).

The ids below were computed with the code of commit eec2b7c, before options were left out of ids by
declaration (issue 26); each spec is made the way ``zsqbench run`` makes one (options validated and
completed by :func:`~zsqbench.api.options.fill_options`, the chenyaofo teacher in the id)."""

from __future__ import annotations

from typing import Any

import pytest

from zsqbench.api.options import fill_options
from zsqbench.trial.spec import Budget, PluginChoice, TeacherRef, TrialSpec

TEACHER = TeacherRef(tag="chenyaofo",
                     digest="sha256:c1757f29fae64e00b26a75d86dcea0d4b7a9dc824289bda8c152d4330a497cc9")

#: name -> (generator, loss, bits, generator options, quantizer options, budget changes, id at eec2b7c)
PINNED: dict[str, tuple[str, str, int, dict[str, Any], dict[str, Any], dict[str, Any], str]] = {
    "gdfq-kd": ("gdfq", "kd", 4, {}, {}, {}, "9200e3652d7f92f9"),
    "adadfq-kd": ("adadfq", "kd", 4, {}, {}, {}, "00cdb61a54ba7dda"),
    "adadfq-akt-alpha": ("adadfq", "akt", 4, {"alpha_ds": 0.3}, {}, {}, "8021f14bdda8b21f"),
    "hast-kd": ("hast", "kd", 3, {}, {}, {}, "e53093c66d297900"),
    "hast-augment": ("hast", "kd", 4, {"synthesis_augment_p": 0.5, "synthesis_crop_min": 0.4}, {}, {},
                     "72829156edd007b1"),
    "hast-crop-only": ("hast", "kd", 4, {"synthesis_crop_min": 0.5}, {}, {}, "a6fca4a1e74ffe3c"),
    "uniform-ema": ("gdfq", "kd", 4, {}, {"range_tracking": "ema"}, {}, "587438a2ec96c658"),
    "uniform-outputs": ("gdfq", "kd", 4, {}, {"quantize_outputs": ["layer1.*"]}, {}, "d6f3d46a8214d150"),
    "budget-cadence": ("gdfq", "kd", 4, {}, {}, {"eval_every": 2, "eval_images": 100, "epochs": 4,
                                               "warmup_epochs": 2, "calibration_epochs": 1}, "be5e272ac0325714"),
    "intraq-akt": ("intraq", "akt", 3, {}, {}, {}, "6740bb20d2a18c44"),
    "qimera-kd": ("qimera", "kd", 4, {}, {}, {}, "3c37a35ed36585a7"),
    "zeroq-kd": ("zeroq", "kd", 4, {}, {}, {}, "8d01d34df83ccb92"),
}


def _spec(plugins, generator: str, loss: str, bits: int, gen_options: dict[str, Any],
          quant_options: dict[str, Any], budget: dict[str, Any]) -> TrialSpec:
    b = {"epochs": 2, "iters_per_epoch": 2, "batch_size": 16, "warmup_epochs": 1, **budget}
    return TrialSpec(
        model="resnet20_cifar10", dataset="cifar10", w_bits=bits, a_bits=bits, seed=0,
        generator=PluginChoice(name=generator, options=fill_options(
            plugins.generators.get(generator), gen_options, "generator", generator)),
        loss=PluginChoice(name=loss, options=fill_options(plugins.losses.get(loss), {}, "loss", loss)),
        quantizer=PluginChoice(name="uniform", options=fill_options(
            plugins.quantizers.get("uniform"), quant_options, "quantizer", "uniform")),
        budget=Budget(**b), teacher=TEACHER,
    )


@pytest.mark.parametrize("name", list(PINNED))
def test_the_id_of_a_spec_is_the_one_it_had_before(plugins, name):
    generator, loss, bits, gen_options, quant_options, budget, expected = PINNED[name]
    assert _spec(plugins, generator, loss, bits, gen_options, quant_options, budget).trial_id == expected
