"""Trial ids stay what they were: a results folder is looked up by them, so a change in how options are
declared or serialized must never move a trial to a new id (it would be trained again, and its old
result orphaned).

The ids below were computed with the code of commit eec2b7c, before options were left out of ids by
declaration (issue 26); each spec is made the way ``zsqbench run`` makes one (options validated and
completed by :func:`~zsqbench.api.options.fill_options`, the chenyaofo teacher in the id)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zsqbench.api.options import fill_options
from zsqbench.api.spec import Budget, PluginChoice, TeacherRef, TrialSpec

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


#: Specs written before options left ids by declaration, with an option that no longer reaches ids
#: at a non-default value: (generator, bits, id options of today, the option as the file holds it, id then).
LEGACY_FILES = {
    "adadfq-share-off": ("adadfq", 4, {}, ("generator", "share_student_forward", False), "09ffc6888b733706"),
    "hast-hocon-groups2": ("hast", 3, {"hparams": "hocon"}, ("generator", "groups", 2), "eff553e1481ac8c7"),
    "uniform-ste-reference": ("gdfq", 4, {}, ("quantizer", "ste", "reference"), "fadcf90fea5c44f7"),
}


@pytest.mark.parametrize("name", list(LEGACY_FILES))
def test_an_old_spec_holding_a_speed_or_retired_option_keeps_its_id_and_still_builds(plugins, name):
    """The spec file is hashed as written (so its folder is found), and the plugin's options are
    built from it: a retired key is dropped, a speed switch still applies."""
    generator, bits, gen_options, (part, key, value), expected = LEGACY_FILES[name]
    data = _spec(plugins, generator, "kd", bits, gen_options, {}, {}).model_dump(mode="json")
    data[part]["options"][key] = value
    spec = TrialSpec.model_validate(data)
    assert spec.trial_id == expected
    choice = getattr(spec, part)
    options = getattr(plugins, f"{part}s").get(choice.name).Options(**choice.options)
    if key in type(options).model_fields:  # a speed switch: it applies
        assert getattr(options, key) == value
    today = _spec(plugins, generator, "kd", bits, gen_options, {}, {})
    assert options.model_dump(mode="json") == getattr(today, part).options  # what a new spec of it holds


def test_speed_switches_stay_out_of_ids_and_reach_the_plugin_through_the_compute_settings(plugins):
    from zsqbench.api.options import speed_switches
    from zsqbench.trial.build import plugin_options

    gen_cls, quant_cls = plugins.generators.get("adadfq"), plugins.quantizers.get("uniform")
    base = _spec(plugins, "adadfq", "kd", 4, {}, {}, {})
    switched = _spec(plugins, "adadfq", "kd", 4, {"share_student_forward": False}, {"ste": "reference"}, {})
    assert switched.trial_id == base.trial_id == PINNED["adadfq-kd"][-1]
    switches = {"adadfq": speed_switches(gen_cls, {"share_student_forward": False, "alpha_ds": 0.3}),
                "uniform": speed_switches(quant_cls, {"ste": "reference", "momentum": 0.5})}
    assert switches == {"adadfq": {"share_student_forward": False}, "uniform": {"ste": "reference"}}
    assert plugin_options(gen_cls, base.generator, switches).share_student_forward is False
    assert plugin_options(quant_cls, base.quantizer, switches).ste == "reference"
    assert plugin_options(gen_cls, base.generator).share_student_forward is True


def test_what_reaches_an_id_is_declared_on_the_fields():
    """The contract a plugin author relies on, on options of their own."""
    from typing import Annotated

    from zsqbench.api import OmitAtDefault, PluginOptions, Retired, SpeedOnly

    class Options(PluginOptions):
        retired = {"old": Retired("it did nothing", id_value=7)}
        plain: int = 1
        added: Annotated[int, OmitAtDefault()] = 0
        size: Annotated[int, OmitAtDefault(together_with=("added",))] = 2
        fast: Annotated[bool, SpeedOnly()] = True

    assert Options().model_dump() == {"plain": 1, "old": 7}
    assert Options(size=3, fast=False).model_dump() == {"plain": 1, "size": 3, "old": 7}
    assert Options(added=1).model_dump() == {"plain": 1, "added": 1, "size": 2, "old": 7}
    assert Options(**{"old": 3, "plain": 2}).plain == 2  # an old file's retired key is dropped


def test_a_retired_option_is_refused_with_its_reason(tiny, tmp_path, capsys):
    from conftest import one_line_error, run_argv

    root, weights = tiny
    err = one_line_error(capsys, run_argv(root, weights, tmp_path / "out", "--generators", "hast", "--loss", "kd",
                                          "--bits", "4", "--budget", "smoke", "-o", "hast.groups=4", "--dry-run"))
    assert "'groups' is no longer an option: it never changed a number" in err


def test_a_speed_switch_given_with_o_keeps_the_trial_id_and_is_recorded_with_the_result(tiny, tmp_path):
    """``-o adadfq.share_student_forward=false`` runs the same trial (same folder) in the reference
    order; result.json records it with the compute settings, and is written with exactly the fields
    of the model readers check it with."""
    from conftest import run_argv

    from zsqbench.cli.main import main
    from zsqbench.runs.migrations import RESULT_VERSION, SPEC_VERSION
    from zsqbench.runs.result_file import ResultFile

    root, weights = tiny
    grid = ("--generators", "adadfq", "--loss", "kd", "--bits", "4", "--budget", "smoke")
    plain, switched = tmp_path / "plain", tmp_path / "switched"
    assert main(run_argv(root, weights, plain, *grid)) == 0
    assert main(run_argv(root, weights, switched, *grid, "-o", "adadfq.share_student_forward=false")) == 0
    (a,), (b,) = (list(out.glob("default/*/result.json")) for out in (plain, switched))
    assert a.parent.name == b.parent.name
    results = [json.loads(path.read_text()) for path in (a, b)]
    assert "switches" not in results[0]["compute"]
    assert results[1]["compute"]["switches"] == {"adadfq": {"share_student_forward": False}}
    for result in results:
        model = ResultFile.model_validate(result)
        assert model.schema_version == RESULT_VERSION and not model.model_extra
        assert not model.teacher.model_extra and not model.data.model_extra
    assert json.loads((b.parent / "spec.json").read_text())["schema_version"] == SPEC_VERSION
