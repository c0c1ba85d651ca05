"""Trial specs: validation, bit parsing and the stability of trial ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_spec
from pydantic import ValidationError

from zsqbench.api import Phase
from zsqbench.api.spec import Budget, TeacherRef, TrialSpec
from zsqbench.bits import bits_label, parse_bits
from zsqbench.errors import UserError


def test_trial_id_ignores_key_order_and_label():
    spec = make_spec()
    data = spec.model_dump(mode="json")
    shuffled = json.loads(json.dumps(dict(reversed(list(data.items())))))
    shuffled["budget_name"] = "another label"
    assert TrialSpec.model_validate(shuffled).trial_id == spec.trial_id


def test_trial_id_changes_with_any_setting():
    base = make_spec()
    assert make_spec(bits=3).trial_id != base.trial_id
    assert make_spec(batch_size=8).trial_id != base.trial_id
    assert make_spec(loss_options={"form": "kl"}).trial_id != base.trial_id
    assert base.model_copy(update={"seed": 1}).trial_id != base.trial_id


def test_trial_id_is_stable_across_processes():
    spec = make_spec()
    code = (
        "import json,sys; from zsqbench.api.spec import TrialSpec; "
        "print(TrialSpec.model_validate(json.loads(sys.argv[1])).trial_id)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec.model_dump(mode="json"))],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == spec.trial_id
    assert len(spec.trial_id) == 16


def test_spec_rejects_unknown_fields_and_bad_bits():
    data = make_spec().model_dump(mode="json")
    with pytest.raises(ValidationError):
        TrialSpec.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        TrialSpec.model_validate({**data, "w_bits": 9})
    with pytest.raises(ValidationError):
        TrialSpec.model_validate({**data, "a_bits": 1})


def test_budget_warmup_within_epochs_and_equality_means_post_training_only():
    with pytest.raises(ValidationError, match="must not exceed epochs"):
        Budget(epochs=4, iters_per_epoch=1, batch_size=1, warmup_epochs=5)
    ptq = Budget(epochs=4, iters_per_epoch=1, batch_size=1, warmup_epochs=4)  # only PTQ-only generators accept it
    assert not ptq.trains and ptq.ptq_epoch == 3 and all(ptq.phase(e).calibrating for e in range(4))
    assert Budget(epochs=5, iters_per_epoch=1, batch_size=1, warmup_epochs=4).trains
    b = Budget(epochs=400, iters_per_epoch=200, batch_size=200, warmup_epochs=4, lr_milestones=[100, 200, 300])
    assert b.lr_factor(99) == 1.0
    assert b.lr_factor(100) == pytest.approx(0.1)
    assert b.lr_factor(399) == pytest.approx(0.001)


def test_trial_id_includes_the_teacher_checkpoint():
    base = make_spec()
    chenyaofo = base.model_copy(update={"teacher": TeacherRef(tag="chenyaofo", digest="sha256:" + "a" * 64)})
    pytorchcv = base.model_copy(update={"teacher": TeacherRef(tag="pytorchcv", digest="sha1:" + "b" * 40)})
    unpinned = base.model_copy(update={"teacher": TeacherRef(tag="unpinned", digest="sha256:" + "c" * 64)})
    other_file = base.model_copy(update={"teacher": TeacherRef(tag="unpinned", digest="sha256:" + "d" * 64)})
    ids = {s.trial_id for s in (base, chenyaofo, pytorchcv, unpinned, other_file)}
    assert len(ids) == 5
    assert chenyaofo.teacher.short == "chenyaofo (sha256 aaaaaaaa)"


def test_specs_from_before_teacher_ids_keep_their_ids():
    """A spec.json written by the code before the teacher was in the id (commit d18d179) still
    validates and hashes to the id of its folder, so old results folders stay readable."""
    path = Path(__file__).parents[1] / "support" / "regression" / "legacy_spec_094de2fc31ecc466.json"
    legacy = TrialSpec.model_validate_json(path.read_text())
    assert legacy.teacher is None and legacy.trial_id == "094de2fc31ecc466"


def test_phases_come_from_the_budget():
    b = Budget(epochs=5, iters_per_epoch=1, batch_size=1, warmup_epochs=2)
    assert [b.phase(e) for e in range(3)] == [Phase(0, True), Phase(1, True), Phase(2, False)]
    assert [b.phase(e).name for e in range(5)] == ["warmup", "warmup", "train", "train", "train"]
    assert b.first_training_phase == Phase(2, False) and b.first_training_phase.training
    assert b.ptq_epoch == 1


def test_bits_have_one_label():
    assert bits_label(4, 8) == "W4A8"
    assert make_spec(bits=3).bits_label == "W3A3"


def test_parse_bits():
    assert parse_bits("3,4,5") == [(3, 3), (4, 4), (5, 5)]
    assert parse_bits("4/8, 2") == [(4, 8), (2, 2)]
    for bad in ("9", "1", "3,x", "4/8/2", ""):
        with pytest.raises(UserError):
            parse_bits(bad)
