"""zsqbench-noise's tests, on a randomly initialized ResNet-20 teacher: no data or weights needed.

They test the installed package (`pip install -e ./zsqbench-noise`): its entry point loads it.
"""

import torch

from zsqbench.api import LossInputs
from zsqbench.api.plugins import build_plugins
from zsqbench.testing import check_phases, make_parts, make_spec
from zsqbench.trial.step import epoch_context, iterate


def test_a_training_iteration_returns_the_loss_terms(tmp_path):
    parts = make_parts(build_plugins(), make_spec("noise", "at", batch_size=2), tmp_path)
    phase = parts.ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):
        terms = iterate(parts, phase)  # exactly what a trial runs
    assert set(terms) == {"total", "logit", "feature"}
    assert terms["feature"] > 0 and torch.isfinite(terms["total"])


def test_the_student_is_updated_in_training_epochs_only(tmp_path):
    # one iteration each of a calibrating, a frozen (ImageNet's warm-up) and a training epoch
    check_phases(build_plugins(), make_spec("noise", "at", batch_size=2), tmp_path)


def test_attention_transfer_is_averaged_over_positions_and_maps(tmp_path):
    at = make_parts(build_plugins(), make_spec("noise", "at"), tmp_path).objective
    teacher_map, student_map = torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)
    teacher_map[..., 0, 0] = 1.0  # all energy at the first of 16 positions
    student_map[..., 0, 1] = 1.0  # all at the second: unit attention vectors, squared distance 2
    logits = torch.zeros(1, 10)
    terms = at(LossInputs(logits, logits, torch.zeros(1, dtype=torch.long),
                          {p: student_map for p in at.feature_taps}, {p: teacher_map for p in at.feature_taps}))
    assert terms["logit"] == 0.0
    assert terms["feature"] == 1000 / 2 * (2 / 16)  # beta/2 x the mean over 16 positions, the same in every map
