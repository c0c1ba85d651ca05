"""CONTRIBUTING.md's plugin walkthrough: the guide shows the example package verbatim, its commands
use real options, and the helpers it relies on (zsqbench.testing, build_plugins' extra=, the
divergence message) do what it says. CI runs the walkthrough itself on the real teacher
(.ci/contributing_walkthrough.py)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from zsqbench.api import hookimpl
from zsqbench.api.plugins import build_plugins
from zsqbench.errors import UserError
from zsqbench.testing import check_phases, make_spec
from zsqbench.trial.monitor import divergence

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PACKAGE = EXAMPLES / "zsqbench-noise"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WALKTHROUGH = _load(ROOT / ".ci" / "contributing_walkthrough.py", "contributing_walkthrough")
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()


def _package_files() -> dict[str, str]:
    skip = {"build", "__pycache__", ".pytest_cache"}
    return {str(p.relative_to(EXAMPLES)): p.read_text() for p in sorted(PACKAGE.rglob("*"))
            if p.is_file() and not skip & set(p.parts) and not any(x.endswith(".egg-info") for x in p.parts)}


def test_the_guide_shows_every_file_of_the_example_package_verbatim():
    assert WALKTHROUGH.guide_files(GUIDE) == _package_files()


def test_the_guide_installs_runs_and_tests_the_example():
    commands = [c.split("#", 1)[0].strip() for c in WALKTHROUGH.guide_commands(GUIDE)]
    assert commands[0] == "pip install -e ./zsqbench-noise"
    assert "pytest -q zsqbench-noise/tests" in commands
    grid = "zsqbench run --generators noise,gdfq --loss kd,at --bits 4 --budget smoke"
    assert grid in commands and f"{grid} --dry-run" in commands


def test_every_option_in_the_guide_commands_is_a_real_option_of_a_plugin_in_its_grid():
    """`-o at.beta=100` on a grid without `at` would change nothing: each -o names a plugin of
    the same command's grid and a field of that plugin's options."""
    noise_zsq = _load(PACKAGE / "src" / "noise_zsq.py", "noise_zsq_guide_copy")
    options = {"noise": noise_zsq.NoiseOptions, "at": noise_zsq.ATOptions}
    given = 0
    for command in WALKTHROUGH.guide_commands(GUIDE):
        argv = shlex.split(command, comments=True)
        grid = {name for flag in ("--generators", "--loss") if flag in argv
                for name in argv[argv.index(flag) + 1].split(",")}
        for plugin, key in re.findall(r"-o (\w+)\.(\w+)=", command):
            given += 1
            assert plugin in grid, f"{command}: -o {plugin}.{key} but {plugin} is not in the grid"
            assert key in options[plugin].model_fields, f"{command}: {plugin} has no option {key}"
    assert given >= 2


def _generator_plugin(cls: type) -> object:
    class Plugin:
        @hookimpl
        def register_generators(self, register):
            register(cls)

    return Plugin()


def _gdfq(plugins):
    return plugins.generators.get("gdfq")


def test_check_phases_accepts_the_bundled_steps(plugins, tmp_path):
    # the default step (next_batch), a whole step of its own, and a generator that refuses frozen
    # epochs (it calibrates through its whole warm-up), checked on calibrating and training alone
    small_hast = {"num_images": 2, "synthesis_batch": 2, "synthesis_iters": 2, "calibration_batch": 2}
    for generator, options in (("gdfq", {}), ("adadfq", {}), ("hast", small_hast)):
        check_phases(plugins, make_spec(generator, "kd", batch_size=2, generator_options=options), tmp_path / generator)


def test_check_phases_names_a_step_that_never_calibrates(plugins, tmp_path):
    class NoCalibration(_gdfq(plugins)):
        name = "no-calibration"

        def step(self, phase, student):
            batch = self.next_batch(phase)
            return student.step(batch) if phase.training else {}

    custom = build_plugins(extra={"broken": _generator_plugin(NoCalibration)})
    with pytest.raises(AssertionError, match=r"epoch 0 \(calibrating\) never called student.calibrate"):
        check_phases(custom, make_spec("no-calibration", "kd", batch_size=2), tmp_path)


def test_an_extra_plugin_that_is_already_loaded_is_a_one_line_error():
    import zsqbench_plugins.generators.gdfq as gdfq_module

    with pytest.raises(UserError) as same:
        build_plugins(extra={"mine": gdfq_module})  # the module the bundled 'gdfq' plugin loaded
    assert str(same.value) == ("build_plugins(extra=...): 'mine' is already loaded as plugin 'gdfq' (bundled); "
                               "leave it out of extra=, build_plugins() loads it")
    with pytest.raises(UserError) as name:
        build_plugins(extra={"gdfq": _generator_plugin(object)})
    assert str(name.value) == ("build_plugins(extra=...): 'gdfq' is already loaded as plugin 'gdfq' (bundled); "
                               "give the extra plugin another name")


def test_the_divergence_message_says_what_was_not_finite():
    assert divergence(1, {"total": 2.5, "logit": 2.5}, 0, 2) is None
    # finite means with a bad iteration: a finite loss whose gradient was not
    assert divergence(1, {"total": 1841.3, "logit": 211.5, "feature": 1629.8}, 1, 2) == (
        "non-finite student gradient in 1 of 2 iterations of epoch 1, while every loss term stayed finite "
        "(epoch means: total 1841, logit 211.5, feature 1630): the student's updates blew up, typically a loss "
        "too large for the student's learning rate")
    nan = float("nan")
    assert divergence(3, {"total": nan, "logit": 0.25, "feature": nan}, 2, 4) == (
        "non-finite student loss in epoch 3 (total, feature; epoch means: total nan, logit 0.25, feature nan); "
        "2 of 4 iterations had a non-finite loss or gradient")
