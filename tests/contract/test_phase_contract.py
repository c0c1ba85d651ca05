"""The core owns the phases: a student optimizer step in a calibrating or frozen epoch fails the
trial with one line naming the generator and the phase, whatever the plugin's step does.

The broken plugins here make the mistake the old plugin guide's example made: a step of their own
that tests ``phase.calibrating`` alone, which trains the student in the frozen epochs of the
ImageNet budgets (``in1k-short``) while the trainer logs them as warm-up and skips evaluating them.
"""

from __future__ import annotations

import json

import pytest
from conftest import make_parts, make_spec, run_argv

from zsqbench.api import Phase, PhaseViolation, hookimpl
from zsqbench.api.plugins import build_plugins
from zsqbench.cli.main import main
from zsqbench.testing import check_phases
from zsqbench.trial.step import epoch_context, iterate

pytestmark = pytest.mark.usefixtures("one_thread")

FROZEN_MESSAGE = ("generator 'calibrating-only' stepped the student's optimizer in epoch 2/3, a frozen epoch (the "
                  "warm-up after calibration); the student may change only in training epochs: update it in "
                  "student_step(), which the core calls only then")


def _broken_plugins(plugins):
    gdfq = plugins.generators.get("gdfq")

    class CalibratingOnly(gdfq):
        name = "calibrating-only"
        description = "GDFQ with a step that knows only the calibrating phase (for tests)"

        def step(self, phase, student):
            batch = self.next_batch(phase)
            if phase.calibrating:
                student.calibrate(batch.x)
                return {}
            return student.step(batch)

    class AlwaysTrains(gdfq):
        name = "always-trains"
        description = "GDFQ with a step that updates the student in every phase (for tests)"

        def step(self, phase, student):
            return student.step(self.next_batch(phase))

    class Broken:
        @hookimpl
        def register_generators(self, register):
            register(CalibratingOnly)
            register(AlwaysTrains)

    return build_plugins(extra={"broken": Broken()})


@pytest.fixture(scope="module")
def broken(plugins):
    return _broken_plugins(plugins)


def _run(parts, phase):
    with epoch_context(parts, phase):
        return iterate(parts, phase)


def test_a_student_step_in_a_frozen_epoch_is_a_one_line_error(broken, tmp_path):
    spec = make_spec("calibrating-only", batch_size=2, epochs=3, warmup_epochs=2, calibration_epochs=1)
    parts = make_parts(broken, spec, tmp_path)
    budget = spec.budget
    assert budget.phase(1).frozen and _run(parts, budget.phase(0)) == {}  # this step gets calibration right
    with pytest.raises(PhaseViolation) as caught:
        _run(parts, budget.phase(1))
    assert str(caught.value) == FROZEN_MESSAGE
    assert parts.student_steps == 1  # counted by the optimizer's post-step hook
    with pytest.raises(PhaseViolation) as checked:  # what a plugin author's check_phases meets too
        check_phases(broken, make_spec("calibrating-only", batch_size=2), tmp_path / "check")
    assert str(checked.value) == FROZEN_MESSAGE


def test_a_student_step_in_a_calibrating_epoch_is_a_one_line_error(broken, tmp_path):
    parts = make_parts(broken, make_spec("always-trains", batch_size=2), tmp_path)
    with pytest.raises(PhaseViolation, match=r"^generator 'always-trains' stepped the student's optimizer in epoch "
                       r"1/2, a calibrating epoch \(activation ranges only\); "):
        _run(parts, parts.ctx.spec.budget.phase(0))


def test_the_count_starts_afresh_each_iteration_and_training_steps_are_allowed(broken, tmp_path):
    parts = make_parts(broken, make_spec("always-trains", batch_size=2), tmp_path)
    training = parts.ctx.spec.budget.first_training_phase
    with epoch_context(parts, training):
        for _ in range(2):
            assert "total" in iterate(parts, training)
            assert parts.student_steps == 1
    own_optimizer = make_parts(broken, make_spec("always-trains", "ait", batch_size=2), tmp_path)
    with pytest.raises(PhaseViolation):  # a loss's own optimizer is counted too (AIT's gradient inundation)
        _run(own_optimizer, Phase(0, calibrating=True))


def test_the_trial_fails_in_one_line_through_the_cli(broken, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("zsqbench.cli.run_cmd.get_plugins", lambda: broken)
    monkeypatch.setattr("zsqbench.grid.worker.get_plugins", lambda: broken)
    root, weights = tiny
    out = tmp_path / "out"
    code = main(run_argv(root, weights, out, "--generators", "calibrating-only", "--loss", "kd", "--bits", "4",
                         "--budget", "smoke", "--epochs", "3", "--warmup-epochs", "2", "--calibration-epochs", "1",
                         "--iters-per-epoch", "1", "--batch-size", "2"))
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.out + captured.err
    (error_file,) = out.glob("*/*/error.json")
    error = json.loads(error_file.read_text())
    assert error["status"] == "failed" and error["error"] == f"PhaseViolation: {FROZEN_MESSAGE}"
    assert not (error_file.parent / "result.json").exists()
    shown = " ".join(captured.out.split())  # the console wraps long lines at its width
    assert shown == f"failed {error_file.parent.name}: failed: PhaseViolation: {FROZEN_MESSAGE}"
