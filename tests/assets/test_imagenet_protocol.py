"""The ImageNet protocol's budgets (calibration vs warm-up, evaluation cadence, the in1k presets
and the methods' ImageNet overrides), the compute estimate, and the published ImageNet numbers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import make_spec, one_line_error
from support.toy224 import TOY224, parts224, plugins224, spec224  # noqa: F401 (fixture)
from torch import nn

from zsqbench.api.spec import Budget, Phase, PluginChoice, TrialSpec
from zsqbench.cli.main import main
from zsqbench.errors import UserError
from zsqbench.grid.budgets import resolve_budget
from zsqbench.grid.request import check_preset_fits
from zsqbench.leaderboard.references import reference_path
from zsqbench.leaderboard.table import read_table
from zsqbench.perf.estimate import estimate_compute
from zsqbench.trial.step import epoch_context
from zsqbench.trial.trainer import evaluate

GDFQ_IMAGENET = dict(epochs=400, iters_per_epoch=200, batch_size=16, warmup_epochs=50, calibration_epochs=4)


# ------------------------------------------------------------------ calibration, warm-up, cadence


def test_phase_calibrates_then_freezes_then_trains():
    b = Budget(**GDFQ_IMAGENET)
    assert b.phase(3) == Phase(3, calibrating=True) and b.phase(3).name == "warmup"
    assert b.phase(4) == Phase(4, calibrating=False, frozen=True) and not b.phase(4).training
    assert b.phase(49).frozen and b.phase(49).name == "warmup"
    assert b.phase(50).training and b.phase(50).name == "train" and b.first_training_phase == b.phase(50)
    assert b.ptq_epoch == 3 and b.frozen_epochs == 46 and b.trains
    # without calibration_epochs the whole warm-up calibrates, as before
    old = Budget(epochs=8, iters_per_epoch=2, batch_size=4, warmup_epochs=2)
    assert [old.phase(e) for e in range(3)] == [Phase(0, True), Phase(1, True), Phase(2, False)]
    assert old.ptq_epoch == 1 and old.frozen_epochs == 0
    with pytest.raises(ValueError, match="calibration_epochs"):
        Budget(epochs=8, iters_per_epoch=2, batch_size=4, warmup_epochs=2, calibration_epochs=3)
    with pytest.raises(ValueError):
        Phase(0, calibrating=True, frozen=True)


def test_new_budget_fields_leave_existing_ids_alone():
    spec = make_spec()
    assert "calibration_epochs" not in spec.canonical_json() and "eval_every" not in spec.canonical_json()
    assert spec.trial_id == TrialSpec.model_validate_json(spec.model_dump_json()).trial_id
    assert make_spec(calibration_epochs=1).trial_id != spec.trial_id  # set, it is part of the id


def test_evaluation_cadence():
    paper = Budget(**GDFQ_IMAGENET)  # every training epoch: 1 PTQ + 350 (GDFQ's "epochs >= 49")
    assert paper.evaluated_epochs == 351 and paper.evaluates(3) and not paper.evaluates(4) and paper.evaluates(50)
    short = Budget(epochs=40, iters_per_epoch=200, batch_size=16, warmup_epochs=5, calibration_epochs=4, eval_every=5)
    assert [e for e in range(40) if short.evaluates(e)] == [3, 9, 14, 19, 24, 29, 34, 39]
    odd = Budget(epochs=7, iters_per_epoch=1, batch_size=2, warmup_epochs=1, eval_every=4)
    assert [e for e in range(7) if odd.evaluates(e)] == [0, 3, 6]  # the PTQ epoch, every 4th, the last
    old = Budget(epochs=8, iters_per_epoch=2, batch_size=4, warmup_epochs=2)
    assert [e for e in range(8) if old.evaluates(e)] == list(range(1, 8))  # unchanged


def test_the_trainer_skips_unscheduled_epochs_and_evaluates_the_first_images():
    student = nn.Linear(1, 2)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        student.bias.zero_()
    inputs = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])  # predicted 0, 0, 1, 1
    labels = torch.tensor([0, 0, 0, 0])
    budget = Budget(epochs=4, iters_per_epoch=1, batch_size=2, warmup_epochs=1, eval_every=2, eval_images=2)
    setup = SimpleNamespace(spec=SimpleNamespace(budget=budget), inputs=inputs, test=SimpleNamespace(labels=labels),
                            parts=SimpleNamespace(ctx=SimpleNamespace(student=student)),
                            env=SimpleNamespace(device=torch.device("cpu"), eval_batch_size=2))
    assert evaluate(setup, budget.phase(2)) is None
    assert evaluate(setup, budget.phase(1)) == pytest.approx(100.0)  # only the first two images
    assert evaluate(setup, budget.phase(3)) == pytest.approx(100.0)


def test_frozen_epochs_train_the_generator_and_leave_the_student_and_ranges_alone(plugins224, tmp_path):
    for generator in ("gdfq", "adadfq"):
        spec = spec224(generator, epochs=3, warmup_epochs=2, calibration_epochs=1)
        parts = parts224(plugins224, spec, tmp_path)
        phase = spec.budget.phase(1)
        assert phase.frozen
        student = {k: v.clone() for k, v in parts.ctx.student.state_dict().items()}
        gen = {k: v.clone() for k, v in parts.generator.networks()["generator"].state_dict().items()}
        with epoch_context(parts, phase):
            assert parts.generator.step(phase, parts.student_update) == {}
        after = parts.ctx.student.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in student.items())  # weights and ranges
        moved = parts.generator.networks()["generator"].state_dict()
        assert any(not torch.equal(v, moved[k]) for k, v in gen.items())


def test_offline_methods_refuse_a_frozen_warm_up(plugins224):
    spec = spec224("hast", epochs=3, warmup_epochs=2, calibration_epochs=1)
    problem = plugins224.generators.get("hast").budget_problem(spec.generator, spec)
    assert "keeps the student frozen 1 epoch(s)" in problem and "--warmup-epochs 1" in problem


# ------------------------------------------------------------------ presets and method overrides


def test_in1k_presets_with_the_methods_imagenet_settings(plugins):
    gdfq = resolve_budget(plugins, "in1k-paper", "gdfq", "kd")
    assert gdfq.budget == Budget(**GDFQ_IMAGENET, lr_milestones=[100, 200, 300])
    assert gdfq.optim.student_lr == 1e-6 and gdfq.generator_options == {}
    ada = resolve_budget(plugins, "in1k-paper", "adadfq", "kd")
    assert ada.generator_options == {"temperature": 5.0} and ada.optim.student_lr == 1e-5
    assert ada.budget.lr_milestones == [350] and ada.budget.warmup_epochs == 50
    hast = resolve_budget(plugins, "in1k-paper", "hast", "kd")
    assert (hast.budget.epochs, hast.budget.warmup_epochs, hast.budget.calibration_length) == (151, 4, 4)
    assert hast.budget.batch_size == 16 and hast.generator_options["hardness_beta"] == 0.1
    assert hast.generator_options["synthesis_augment_p"] == 0.5
    intraq_short = resolve_budget(plugins, "in1k-short", "intraq", "kd")
    assert (intraq_short.budget.epochs, intraq_short.budget.warmup_epochs) == (30, 4)
    assert intraq_short.generator_options == {"num_images": 1280, "synthesis_iters": 500}
    smoke = resolve_budget(plugins, "in1k-smoke", "gdfq", "kd").budget
    assert (smoke.batch_size, smoke.eval_images, smoke.calibration_length) == (2, 8, 1)


def test_in1k_presets_refuse_32_px_teachers_and_paper_refuses_224(plugins, capsys):
    check_preset_fits(plugins.config.budget("in1k-paper"), "in1k-paper", TOY224)
    with pytest.raises(UserError, match="budget 'paper' is for 32-px teachers.*in1k-smoke, in1k-short, in1k-paper"):
        check_preset_fits(plugins.config.budget("paper"), "paper", TOY224)
    err = one_line_error(capsys, ["run", "--budget", "in1k-smoke", "--dry-run"])
    assert "budget 'in1k-smoke' is for 224-px teachers, but model 'resnet20_cifar10' takes 32-px inputs" in err


# ------------------------------------------------------------------ compute estimate


def _specs(plugins, preset: str, generators: tuple[str, ...], model: str, dataset: str) -> list[TrialSpec]:
    specs = []
    for g in generators:
        r = resolve_budget(plugins, preset, g, "kd")
        cls = plugins.generators.get(g)
        from zsqbench.api.options import fill_options
        specs.append(TrialSpec(model=model, dataset=dataset, loss=PluginChoice(name="kd"), w_bits=4, a_bits=4, seed=0,
                               generator=PluginChoice(name=g, options=fill_options(cls, r.generator_options, "g", g)),
                               budget=r.budget, optim=r.optim))
    return specs


def test_the_imagenet_estimate_is_of_the_specs_order(plugins224):
    specs = _specs(plugins224, "in1k-paper", ("gdfq", "adadfq", "hast"), "toy224", "imagenet")
    per = estimate_compute(specs, plugins224).gpu_hours_per_trial
    # IMAGENET.md §7.2 for ResNet-18: GDFQ ≈ 1.4 h, AdaDFQ ≈ 1.6 h, HAST ≈ 0.9 h (at batch 4; 16 here)
    assert per["gdfq"] == pytest.approx(1.4, rel=0.15)
    assert per["adadfq"] == pytest.approx(1.6, rel=0.15)
    assert 0.6 < per["hast"] < 1.4


def test_the_cifar_estimate_stays_in_its_order(plugins):
    est = estimate_compute(_specs(plugins, "paper", ("gdfq", "adadfq", "hast"), "resnet20_cifar10", "cifar10"),
                           plugins)
    assert 0.2 < est.gpu_hours_per_trial["gdfq"] < 0.4  # was 0.30 (75 µs per sample) before MACs
    assert 10 < est.cpu_hours < 60


# ------------------------------------------------------------------ published numbers


def test_published_imagenet_numbers_with_baselines_and_sources():
    frame, kind = read_table(reference_path("imagenet"))
    assert kind == "aggregated" and (frame["dataset"] == "imagenet").all()
    assert not frame.duplicated(["model", "generator", "loss", "w_bits"]).any()
    assert frame["fp_top1"].notna().all() and frame["note"].str.len().gt(30).all()
    row = frame[(frame.model == "resnet18") & (frame.generator == "adadfq") & (frame.w_bits == 4)]
    assert row["top1_last_mean"].item() == 66.53 and row["fp_top1"].item() == 71.47
    mv2 = frame[(frame.model == "mobilenetv2_w1") & (frame.generator == "dsg")]
    assert mv2["fp_top1"].item() == 71.88  # DSG's torchvision baseline, kept as published


def test_compare_and_pivot_work_for_imagenet_rows(capsys, tmp_path):
    from support.leaderboard import trial_row, write_trials
    rows = [trial_row(generator=g, bits=4, seed=s, top1_last=v + s, dataset="imagenet", model="resnet18",
                      budget="in1k-paper", fp_top1=71.47)
            for g, v in (("gdfq", 60.0), ("adadfq", 66.0)) for s in (0, 1)]
    mine = write_trials(tmp_path / "mine.csv", rows)
    assert main(["compare", "paper:imagenet", str(mine), "--json"]) == 0
    joined = {(r["generator"], r["w_bits"]): r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert joined[("gdfq", 4)]["a_mean"] == 60.60 and joined[("gdfq", 4)]["b_mean"] == pytest.approx(60.5)
    assert joined[("adadfq", 4)]["a_mean"] == 66.53
    assert main(["leaderboard", "paper:imagenet", "--pivot", "methods", "--json"]) == 0
    table = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert table["adadfq+kd"]["imagenet resnet18 paper W4A4"] == "66.53 (pub.)"  # budget in the column, published values say so
    assert table["gdfq+kd"]["imagenet resnet50 paper W3A3"] == "0.31 (pub.)"
