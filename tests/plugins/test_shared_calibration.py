"""The budget's shared calibration (docs/budgets.md#shared-calibration): every method of a seed
calibrates its activation ranges on the same batches of one shared source, so the ranges, and so the
PTQ accuracy, are the same whatever the generator; the default leaves every method's own calibration
and every trial id as they were; post-training-only generators refuse it in one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_spec, one_line_error

from zsqbench.api.budgets import SHARED_CALIBRATION_LABEL
from zsqbench.errors import UserError
from zsqbench.toolkit.online import SharedCalibration
from zsqbench.trial.build import check_budget
from zsqbench.trial.step import epoch_context, iterate

pytestmark = pytest.mark.usefixtures("one_thread")

#: Small enough to build fast; the offline methods' synthesis is never run (calibration does not need it).
OPTIONS = {"hast": {"num_images": 4, "synthesis_batch": 4, "synthesis_iters": 1},
           "intraq": {"num_images": 4, "synthesis_batch": 4, "synthesis_iters": 1}}


def _spec(generator: str, shared: int | None = 3, **budget):
    return make_spec(generator, batch_size=4, epochs=3, warmup_epochs=2, iters_per_epoch=2,
                     generator_options=OPTIONS.get(generator), shared_calibration=shared, **budget)


def _calibrate(parts) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Run the calibration epochs; the shared batches the student calibrated on, and its ranges after."""
    source = parts.generator.shared_calibration
    seen: list[torch.Tensor] = []
    if source is not None:
        real = source.next_images
        source.next_images = lambda: seen.append(real()) or seen[-1]  # type: ignore[method-assign]
    budget = parts.ctx.spec.budget
    for epoch in range(budget.calibration_length):
        phase = budget.phase(epoch)
        with epoch_context(parts, phase):
            for _ in range(budget.iters_per_epoch):
                assert iterate(parts, phase) == {}
    ranges = {k: v.clone() for k, v in parts.ctx.student.state_dict().items() if k.endswith(("x_min", "x_max"))}
    return seen, ranges


@pytest.mark.parametrize("other", ["hast", "adadfq", "qimera", "intraq"])
def test_two_generators_calibrate_on_the_same_batches_and_get_the_same_ranges(tiny_parts, other):
    """GDFQ against an offline-set method (its calibration generator replaced) and against online ones
    whose own step runs a student forward while calibrating (AdaDFQ): with the ranges held during the
    generator's own step, the ranges are the shared source's alone."""
    gdfq_seen, gdfq_ranges = _calibrate(tiny_parts(_spec("gdfq")))
    parts = tiny_parts(_spec(other))
    if other in ("hast", "intraq"):
        assert parts.generator.calibration is None  # the method's own calibration generator is not built
    seen, ranges = _calibrate(parts)
    assert len(seen) == len(gdfq_seen) == 4 and all(x.shape == (3, 3, 32, 32) for x in seen)
    assert all(torch.equal(a, b) for a, b in zip(seen, gdfq_seen))
    assert ranges.keys() == gdfq_ranges.keys() and ranges
    assert all(torch.equal(ranges[k], gdfq_ranges[k]) for k in ranges)
    assert any(v.abs().sum() > 0 for v in ranges.values())  # calibrated


def test_without_the_option_each_method_calibrates_on_its_own_and_ids_stay(tiny_parts):
    gdfq, hast = tiny_parts(_spec("gdfq", None)), tiny_parts(_spec("hast", None))
    assert gdfq.generator.shared_calibration is None and hast.generator.shared_calibration is None
    assert hast.generator.calibration is not None  # the scaffold's GDFQ-style generator at batch 16
    _, gdfq_ranges = _calibrate(gdfq)
    _, hast_ranges = _calibrate(hast)
    assert any(not torch.equal(gdfq_ranges[k], hast_ranges[k]) for k in gdfq_ranges)
    default = _spec("gdfq", None)
    assert "shared_calibration" not in default.budget.model_dump()  # out of the id at its default
    assert _spec("gdfq", 3).trial_id != default.trial_id
    assert "shared calibration at batch 3" in _spec("gdfq", 3).budget.describe()


def test_the_shared_source_depends_on_the_seed_and_resumes_exactly(tiny_parts):
    parts = tiny_parts(_spec("gdfq"))
    source = parts.generator.shared_calibration
    assert isinstance(source, SharedCalibration)
    state = copy.deepcopy(parts.generator.state_dict())
    first = source.next_images()
    parts.generator.load_state_dict(copy.deepcopy(state))
    assert torch.equal(source.next_images(), first)  # net, Adam and noise stream restored
    other_seed = tiny_parts(_spec("gdfq").model_copy(update={"seed": 1}))
    assert not torch.equal(other_seed.generator.shared_calibration.next_images(), first)


def test_generators_that_cannot_take_it_refuse_in_one_line(plugins):
    zeroq = plugins.generators.get("zeroq")
    ptq = make_spec("zeroq", batch_size=32, epochs=1, warmup_epochs=1, iters_per_epoch=1,
                    generator_options={"variant": "ptq"}, shared_calibration=16)
    with pytest.raises(UserError, match="post-training only: .* drop --shared-calibration$"):
        check_budget(zeroq, ptq)
    distilled = make_spec("zeroq", generator_options={"calibration": "distilled"}, shared_calibration=16)
    with pytest.raises(UserError, match="both choose the calibration source"):
        check_budget(zeroq, distilled)
    check_budget(zeroq, make_spec("zeroq", shared_calibration=16))  # ZeroQ + FT takes it


def test_the_budget_name_labels_it(capsys, tmp_path, plugins):
    from support.data import write_random_weights

    from zsqbench.cli.main import main

    weights = write_random_weights(tmp_path / "t.pth", plugins.models.get("resnet20_cifar10").build())
    argv = ["run", "--generators", "gdfq,hast", "--loss", "kd", "--bits", "3", "--teacher-weights", str(weights),
            "--dry-run", "--json"]
    assert main([*argv, "--shared-calibration", "64"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["budget"] for r in rows] == [f"cpu{SHARED_CALIBRATION_LABEL}64"] * 2
    assert all(r["shared_calibration"] == 64 for r in rows)
    assert main([*argv, "--shared-calibration", "64", "--epochs", "9"]) == 0
    assert {r["budget"] for r in json.loads(capsys.readouterr().out)} == {"cpu+custom+shared-cal64"}
    ptq = ["run", "--generators", "zeroq", "--budget", "ptq", "--teacher-weights", str(weights), "--dry-run"]
    assert one_line_error(capsys, [*ptq, "--shared-calibration", "32"]).endswith("drop --shared-calibration")


def test_the_leaderboard_shows_the_label_even_where_every_row_has_it():
    import pandas as pd
    from support.leaderboard import trial_row

    from zsqbench.leaderboard.aggregate import aggregate
    from zsqbench.leaderboard.views import display_compact

    shared = [trial_row(g, seed=s, budget="cpu+shared-cal64", trial_id=f"{g}{s}".ljust(16, "0"))
              for g in ("gdfq", "qimera") for s in (0, 1)]
    configurations = display_compact(aggregate(pd.DataFrame(shared)))["configuration"].tolist()
    assert len(configurations) == 2 and all("cpu+shared-cal64" in c for c in configurations)
    plain = [trial_row(g, seed=s, budget="cpu") for g in ("gdfq", "qimera") for s in (0, 1)]
    assert not any("cpu" in c for c in display_compact(aggregate(pd.DataFrame(plain)))["configuration"])


def test_the_compute_estimate_counts_the_shared_source_in_every_calibration_iteration(plugins):
    """The source is GDFQ's generator stepping through the teacher plus the student's calibration forward
    at its own batch, in each of the warm-up iterations: with the source larger than the trial's batch the
    estimate grows by exactly those passes, and a budget without one is estimated as before."""
    from zsqbench.perf.estimate import DEFAULT_GENERATOR_MACS, RESNET20_MACS, trial_compute

    spec = _spec("gdfq", shared=None)
    plain, shared = trial_compute(spec, plugins), trial_compute(_spec("gdfq", shared=64), plugins)
    entry = plugins.models.get(spec.model)
    teacher = entry.macs or RESNET20_MACS
    images = 2 * 2 * 64  # warm-up epochs x iterations x the source's batch
    extra = images * (4 * teacher + 3 * DEFAULT_GENERATOR_MACS)
    assert shared.train_macs == pytest.approx(plain.train_macs + extra)
    assert shared.eval_macs == plain.eval_macs and shared.synthesis_macs == plain.synthesis_macs
