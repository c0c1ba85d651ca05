"""SynQ (docs/methods/synq.md): the easy-sample CE on the specification's logit table, the focal
clamp, the zero-image calibration, the step (HAST's when SynQ's additions are off, the mask reused,
the CAM term's locality), the composition with feature losses, numerical robustness, options and
budgets. Golden values are the specification's (§8), computed there from the formulas."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from conftest import make_parts, make_spec, one_line_error

from zsqbench.api import Batch, StudentUpdate
from zsqbench.api.options import fill_options
from zsqbench.errors import UserError
from zsqbench.toolkit import easy_ce
from zsqbench.toolkit.easy_ce import difficulty, easy_mask, selective_cross_entropy
from zsqbench.toolkit.lowpass import gaussian_lowpass
from zsqbench.trial.monitor import divergence
from zsqbench.trial.step import epoch_context, iterate
from zsqbench_plugins.generators.hast_synthesis import hardness_loss
from zsqbench_plugins.quantizers._modules import QuantAct

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_images": 6, "synthesis_batch": 4, "synthesis_iters": 2, "calibration_batch": 4}


def synq_spec(loss: str = "kd", **options):
    return make_spec("synq", loss, batch_size=4, generator_options={**SMALL, **options})


# ------------------------------------------------------------------- easy-sample CE (§8.3)

TEACHER = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, -30.0], [0.0, 3.0, 0.0]])
LABELS = torch.tensor([0, 1, 0, 0])
STUDENT = torch.tensor([[1.0, 0.5, -0.5], [0.2, 0.1, 0.0], [0.0, 2.0, 0.0], [0.3, 0.3, 0.3]])


def test_difficulty_and_masks_on_the_logit_table():
    assert torch.allclose(difficulty(TEACHER, LABELS), torch.tensor([0.2130140, 0.6666666, 0.5, 0.9547215]), atol=1e-7)
    assert easy_mask(TEACHER, LABELS, 0.5).tolist() == [True, False, False, False]  # code: δ < τ
    assert easy_mask(TEACHER, LABELS, 0.5, inclusive=True).tolist() == [True, False, True, False]  # paper: δ ≤ τ
    for inclusive in (False, True):
        assert easy_mask(TEACHER, LABELS, 0.7, inclusive).tolist() == [True, True, True, False]
    tie = torch.zeros(1, 2)  # δ = 0.5 exactly: hard in the code, easy in the paper
    assert not easy_mask(tie, torch.tensor([0]), 0.5) and easy_mask(tie, torch.tensor([0]), 0.5, inclusive=True)


def test_selective_ce_value_offset_and_gradient():
    per_sample = torch.nn.functional.cross_entropy(STUDENT, LABELS, reduction="none")
    assert torch.allclose(per_sample, torch.tensor([0.6041306, 1.1019429, 2.2395449, 1.0986123]), atol=1e-6)
    mask = torch.tensor([True, False, False, False])
    s = STUDENT.clone().requires_grad_(True)
    value = selective_cross_entropy(s, LABELS, mask)
    code = selective_cross_entropy(s, LABELS, mask, code_offset=True)
    assert value.item() == pytest.approx(0.1510327, abs=1e-6)  # (1/B)·Σ m·CE
    assert code.item() == pytest.approx((0.6041306 + 3 * math.log(3)) / 4, abs=1e-6)  # 0.9749919
    (g_value,) = torch.autograd.grad(value, s)
    (g_code,) = torch.autograd.grad(code, s)
    assert torch.equal(g_value, g_code) and g_value[1:].abs().max() == 0


def test_a_batch_without_easy_samples_gives_zero_and_no_gradient_even_for_infinite_logits():
    s = torch.full((4, 3), float("inf"), requires_grad=True)
    value = selective_cross_entropy(s, LABELS, torch.zeros(4, dtype=torch.bool))
    (g,) = torch.autograd.grad(value, s)
    assert value.item() == 0.0 and torch.equal(g, torch.zeros_like(g))


# ---------------------------------------------------------------- focal clamp (§8.4)


def _focal_grad(logits: list[float], gamma: float, clamp: float = 0.0) -> torch.Tensor:
    z = torch.tensor([logits], requires_grad=True)
    (g,) = torch.autograd.grad(hardness_loss(z, torch.tensor([0]), 1.0, gamma, clamp), z)
    return g


def test_the_focal_factor_of_gamma_one_half_is_nan_at_a_saturated_teacher_and_the_clamp_fixes_it():
    assert torch.isnan(_focal_grad([17.0, 0.0], 0.5)).any()
    assert torch.isfinite(_focal_grad([16.0, 0.0], 0.5)).all()
    wide = lambda margin: [margin] + [0.0] * 999  # noqa: E731
    assert torch.isnan(_focal_grad(wide(25.0), 0.5)).any() and torch.isfinite(_focal_grad(wide(20.0), 0.5)).all()
    assert torch.isfinite(_focal_grad([40.0, 0.0], 2.0)).all()  # γ = 2 never gives NaN
    clamped = _focal_grad([20.0, 0.0], 0.5, clamp=1e-12)
    assert clamped[0, 0].item() == 0.0 and clamped[0, 1].item() == pytest.approx(2.06e-15, rel=1e-2)
    # where the unclamped form is finite the clamp changes nothing, bit for bit
    assert torch.equal(_focal_grad([3.0, 0.0], 0.5), _focal_grad([3.0, 0.0], 0.5, clamp=1e-12))


def test_the_clamp_keys_the_cache_only_where_it_acts(tiny_parts):
    cifar = tiny_parts(synq_spec()).generator.synthetic_set.settings()
    hast = tiny_parts(make_spec("hast", batch_size=4, generator_options=SMALL)).generator.synthetic_set.settings()
    assert cifar == hast  # γ = 2: HAST's set, HAST's cache entry
    script = tiny_parts(synq_spec(synthesis_preset="synq_script")).generator.synthetic_set.settings()
    assert script["hardness"] == [0.1, 0.5] and script["focal_clamp"] == 1e-12
    plain = tiny_parts(synq_spec(synthesis_preset="synq_script", focal_clamp=0.0)).generator.synthetic_set.settings()
    assert "focal_clamp" not in plain


@pytest.mark.parametrize("clamp", [1e-12, 0.0])
def test_a_saturated_teacher_still_gives_a_finite_set(tiny_parts, clamp):
    """γ = 0.5 against a teacher whose logits saturate the softmax: unclamped, the first step's
    gradient is NaN for every image of the batch (through the BN term) and the set is refused;
    clamped (the default), the set is finite."""
    parts = tiny_parts(synq_spec(synthesis_preset="synq_script", focal_clamp=clamp))
    head = parts.ctx.teacher.output
    with torch.no_grad():
        head.weight.mul_(1e4)
        head.bias.zero_()
        head.bias[0] = 1e4  # class 0 wins everywhere with p = 1 in float32
    if clamp:
        x, _ = parts.generator.load_set()
        assert torch.isfinite(x).all()
    else:
        with pytest.raises(RuntimeError, match="NaN"):
            parts.generator.load_set()


# ------------------------------------------------------ zero-image calibration (§8.5)


def test_alternating_zero_image_and_generator_updates_settle_at_the_weighted_mixture():
    quant = QuantAct(bits=4)
    for _ in range(800):
        quant.update_range(torch.tensor([0.0, 1.0]))  # the zero image's maximum z = 1
        quant.update_range(torch.tensor([0.0, 3.0]))  # the generator batch's g = 3
    assert quant.x_max.item() == pytest.approx(2.0526316, abs=1e-5)  # (0.09·z + 0.1·g) / 0.19


@pytest.mark.parametrize("on", [True, False])
def test_calibration_runs_the_student_on_one_zero_image_first(tiny_parts, on):
    parts = tiny_parts(synq_spec(zero_image_calibration=on))
    ctx, gen = parts.ctx, parts.generator
    gen.prepare()
    seen = []
    handle = ctx.student.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        phase = ctx.spec.budget.phase(0)
        with epoch_context(parts, phase):
            assert iterate(parts, phase) == {}
    finally:
        handle.remove()
    shapes = [tuple(x.shape) for x in seen]
    if on:
        assert shapes == [(1, 3, 32, 32), (4, 3, 32, 32)] and torch.equal(seen[0], torch.zeros(1, 3, 32, 32))
    else:
        assert shapes == [(4, 3, 32, 32)]


# -------------------------------------------------------------------------- the step


def _calibrated(parts):
    """Ranges from one calibration forward, then frozen (as after the calibration epochs)."""
    student = parts.ctx.student
    with parts.quantizer.calibrating(student, True), torch.no_grad():
        student(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    parts.quantizer.set_calibrating(student, False)
    return parts


def _step(parts, batch, optimizer=None):
    ctx = parts.ctx
    update = StudentUpdate(ctx, parts.objective, optimizer or parts.optimizer)
    with ctx.teacher_taps.active(), ctx.student_taps.active():
        return parts.generator.student_step(batch, ctx.spec.budget.first_training_phase, update)


def _batch(seed: int = 1) -> Batch:
    rng = torch.Generator().manual_seed(seed)
    return Batch(x=torch.randn(4, 3, 32, 32, generator=rng), y=torch.randint(0, 10, (4,), generator=rng))


OFF = {"lambda_cam": 0.0, "lambda_ce": 0.0, "lowpass": "off", "zero_image_calibration": False, "fa_perturbed": "always"}


def test_with_its_additions_off_the_step_is_hasts_bit_for_bit(plugins, tmp_path):
    hast = _calibrated(make_parts(plugins, make_spec("hast", batch_size=4, generator_options=SMALL), tmp_path / "h"))
    synq = _calibrated(make_parts(plugins, synq_spec(**OFF), tmp_path / "s"))
    synq.ctx.student.load_state_dict(hast.ctx.student.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(hast.ctx.teacher.parameters(), synq.ctx.teacher.parameters()))
    batch = _batch()
    torch.manual_seed(0)
    hast_terms = _step(hast, batch)
    torch.manual_seed(0)
    synq_terms = _step(synq, batch)
    for (name, a), b in zip(hast.ctx.student.named_parameters(), synq.ctx.student.parameters()):
        assert torch.equal(a, b), name
    assert all(torch.equal(hast_terms[k], synq_terms[k]) for k in hast_terms)


def test_the_cam_term_moves_only_the_parameters_up_to_the_cam_layer(plugins, tmp_path):
    """λ_CAM on or off: the same FGSM input (its gradient is L_clean's) and the same step for every
    parameter after the CAM layer (its BN, the classifier), a different one before it."""
    runs = []
    for lam in (0.0, 50.0):
        parts = _calibrated(make_parts(plugins, synq_spec(lambda_cam=lam), tmp_path / str(lam)))
        if runs:
            parts.ctx.student.load_state_dict(runs[0][0].ctx.student.state_dict())
            parts.ctx.student.load_state_dict(runs[0][1])
        before = copy.deepcopy(parts.ctx.student.state_dict())
        terms = _step(parts, _batch())
        runs.append((parts, before, terms))
    (off, _, t_off), (on, _, t_on) = runs
    assert "cam" not in t_off and t_on["cam"] > 0 and 0 <= t_on["cam_distance"] <= 1
    assert t_on["total"].item() == pytest.approx((t_off["total"] + t_on["cam"]).item(), rel=1e-6)
    target = on.generator.cam_target
    params_on = dict(on.ctx.student.named_parameters())
    for name, p in off.ctx.student.named_parameters():
        after_target = name.startswith(("features.stage3.unit3.body.conv2.bn", "output"))
        if after_target:
            assert torch.equal(p, params_on[name]), name
    assert not torch.equal(dict(off.ctx.student.named_parameters())[f"{target}.weight"], params_on[f"{target}.weight"])


def _recording_masks(monkeypatch):
    masks = []
    real = easy_ce.selective_cross_entropy

    def recording(student_logits, labels, mask, code_offset=False):
        masks.append(mask.clone())
        return real(student_logits, labels, mask, code_offset)

    monkeypatch.setattr(easy_ce, "selective_cross_entropy", recording)
    return masks


def test_the_perturbed_pass_reuses_the_clean_mask(plugins, tmp_path, monkeypatch):
    masks = _recording_masks(monkeypatch)
    parts = _calibrated(make_parts(plugins, synq_spec(mask_source="each_pass", eps=2.0), tmp_path))
    state = copy.deepcopy(parts.ctx.student.state_dict())
    seen = []
    hook = parts.ctx.teacher.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    _step(parts, _batch())
    hook.remove()
    labels = _batch().y
    clean, adv = difficulty(seen[0], labels), difficulty(seen[1], labels)
    b = int((clean - adv).abs().argmax())  # τ between the two difficulties of the sample that moved most
    tau = float((clean[b] + adv[b]) / 2)
    results = {}
    for source in ("clean", "each_pass"):
        parts = _calibrated(make_parts(plugins, synq_spec(mask_source=source, eps=2.0, tau=tau), tmp_path / source))
        parts.ctx.student.load_state_dict(state)
        masks.clear()
        _step(parts, _batch())
        results[source] = [m.clone() for m in masks]
    assert torch.equal(results["clean"][0], results["clean"][1])
    assert not torch.equal(results["each_pass"][0], results["each_pass"][1])
    assert torch.equal(results["each_pass"][1], easy_mask(seen[1], labels, tau))


def test_no_easy_sample_flat_cam_and_nan_inputs(plugins, tmp_path):
    """No easy sample: the CE is exactly 0. A 1 x 1 CAM layer: a warning, and under the guard a CAM term of
    exactly 0 with no gradient. A NaN image: the terms say so and the trainer's check names it (never a
    silent result)."""
    parts = _calibrated(make_parts(plugins, synq_spec(tau=1e-6, cam_target="features.final_pool"), tmp_path))
    before = {n: p.detach().clone() for n, p in parts.ctx.student.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        terms = _step(parts, _batch())
    assert any("1x1" in str(w.message) for w in caught)
    assert terms["easy_frac"] == 0 and terms["selce"] == 0 and terms["cam"] == 0 and terms["cam_flat"] == 1
    assert all(torch.isfinite(v) for v in terms.values())
    assert any(not torch.equal(before[n], p) for n, p in parts.ctx.student.named_parameters())

    broken = _batch()
    broken.x[0, 0, 0, 0] = float("nan")
    terms = _step(parts, broken)
    problem = divergence(2, {k: float(v) for k, v in terms.items()}, 0, 1)
    assert not torch.isfinite(terms["total"]) and problem and "non-finite student loss" in problem


def test_without_the_teacher_path_the_cam_still_gets_the_teacher_map(plugins, tmp_path):
    """perturb_through_teacher = false: the teacher's clean pass builds a graph only after its CAM layer
    (whose output becomes a leaf), so the objective sees detached teacher outputs and the CAM term is
    the same as with the teacher path."""
    seen = []
    terms = {}
    for through in (True, False):
        parts = _calibrated(make_parts(plugins, synq_spec(perturb_through_teacher=through), tmp_path / str(through)))
        objective = parts.objective

        def recording(inputs, objective=objective):
            seen.append(inputs.teacher_logits.requires_grad)
            return objective(inputs)

        recording.feature_taps = objective.feature_taps
        ctx = parts.ctx
        with ctx.teacher_taps.active(), ctx.student_taps.active():
            terms[through] = parts.generator.student_step(_batch(), ctx.spec.budget.first_training_phase,
                                                          StudentUpdate(ctx, recording, parts.optimizer))
    assert seen == [True, False, False, False]  # clean pass: with the teacher path only when asked
    assert terms[False]["cam"].item() == pytest.approx(terms[True]["cam"].item(), rel=1e-6)


def test_training_batches_are_filtered_and_dataset_mode_filters_the_set_once(tiny_parts):
    parts = tiny_parts(synq_spec(d0=4.0))
    gen = parts.generator
    gen.prepare()
    phase = parts.ctx.spec.budget.first_training_phase
    torch.manual_seed(3)
    filtered = gen.next_batch(phase)
    gen._perm, gen._pos = None, 0
    torch.manual_seed(3)
    plain = super(type(gen), gen).next_batch(phase)
    assert torch.allclose(filtered.x, gaussian_lowpass(plain.x, 4.0), atol=1e-6)

    stored = tiny_parts(synq_spec(lowpass="dataset", d0=4.0)).generator
    stored.prepare()
    assert torch.allclose(stored.images, gaussian_lowpass(gen.images, 4.0), atol=1e-6)


def test_loader_order_epoch_repeats_the_permutation_within_an_epoch(tiny_parts):
    gen = tiny_parts(synq_spec(loader_order="epoch")).generator
    gen.labels = torch.arange(6)
    phase = gen.ctx.spec.budget.first_training_phase
    torch.manual_seed(0)
    gen.start_epoch(phase)
    drawn = torch.cat([gen._next_indices(4) for _ in range(3)])  # 12 draws = two passes of 6
    assert sorted(drawn[:6].tolist()) == list(range(6)) and torch.equal(drawn[:6], drawn[6:])
    gen.start_epoch(phase)
    again = torch.cat([gen._next_indices(4) for _ in range(3)])
    assert torch.equal(again[:6], again[6:]) and not torch.equal(again, drawn)


@pytest.mark.parametrize("loss", ["kd", "akt", "spatial", "ait"])
def test_losses_compose_and_the_feature_term_is_clean_only_on_cifar(tiny_parts, loss):
    parts = tiny_parts(synq_spec(loss))
    gen = parts.generator
    gen.prepare()
    phase = parts.ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):
        terms = iterate(parts, phase)
    feature = "fa" if loss in ("kd", "ait") else "feature"
    assert {"total", "logit", feature, "adv_total", "cam", "selce", "easy_frac"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    # the perturbed pass adds its logit term only (fa_perturbed = auto: ImageNet only)
    assert terms["total"].item() == pytest.approx(
        (terms["logit"] + terms[feature] + terms["cam"]).item(), rel=1e-5)


def test_kd_form_kl_keeps_the_cam_term_without_selective_ce(tiny_parts):
    parts = tiny_parts(make_spec("synq", "kd", batch_size=4, generator_options=SMALL, loss_options={"form": "kl"}))
    parts.generator.prepare()
    phase = parts.ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):
        terms = iterate(parts, phase)
    assert "cam" in terms and "selce" not in terms and "fa" not in terms


# ------------------------------------------------------------------ options and budgets


def test_tau_follows_the_dataset_and_modes_fill_their_values(plugins, tmp_path):
    assert make_parts(plugins, synq_spec(), tmp_path / "a").generator.tau == 0.7
    spec100 = make_spec("synq", batch_size=4, dataset="cifar100", generator_options=SMALL)
    assert make_parts(plugins, spec100, tmp_path / "b").generator.tau == 0.5
    cls = plugins.generators.get("synq")
    paper = fill_options(cls, {"mode": "paper", "lambda_fa": 5.0}, "generator", "synq")
    assert (paper["lowpass"], paper["cam_form"], paper["mask_compare"], paper["lambda_fa"],
            paper["zero_image_calibration"], paper["cam_flat_guard"]) == ("dataset", "paper", "inclusive", 5.0, False, True)
    script = fill_options(cls, {"synthesis_preset": "synq_script"}, "generator", "synq")
    assert (script["hardness_beta"], script["hardness_gamma"]) == (0.1, 0.5)
    assert cls.Options(**paper).model_dump(mode="json") == paper  # idempotent, as a stored spec is re-read


@pytest.mark.parametrize("option", [{"tau": 1.5}, {"d0": 0}, {"lambda_cam": -1}, {"lowpass": "twice"},
                                    {"focal_clamp": 0.5}, {"hparams": "hocon"}, {"groups": 4}])
def test_bad_options_are_one_line_errors(plugins, option):
    with pytest.raises(UserError) as err:
        fill_options(plugins.generators.get("synq"), option, "generator", "synq")
    assert "\n" not in str(err.value)


def test_an_out_of_range_option_is_exit_2_from_the_command_line(capsys):
    err = one_line_error(capsys, ["run", "--generators", "synq", "--loss", "kd", "--bits", "3", "--budget", "smoke",
                                  "-o", "synq.tau=1.5", "--dry-run"])
    assert "tau" in err and "synq" in err


def test_a_cam_target_that_is_not_a_layer_fails_before_synthesis(plugins, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_parts(plugins, synq_spec(cam_target="features.nowhere"), tmp_path)


def test_budgets_and_pass_counts(plugins):
    overrides = {(o.obj.preset, o.obj.generator): o.obj for o in plugins.budget_overrides
                 if o.obj.generator == "synq"}
    paper = overrides[("paper", "synq")]
    assert (paper.epochs, paper.batch_size, paper.lr_milestones, paper.optim) == (101, 256, [20, 40, 60],
                                                                                 {"student_lr": 1e-4})
    in1k = overrides[("in1k-paper", "synq")]
    assert (in1k.epochs, in1k.warmup_epochs, in1k.batch_size, in1k.lr_milestones) == (101, 4, 16, [100, 200, 350])
    assert in1k.generator_options["hardness_gamma"] == 0.5
    assert {"smoke", "cpu", "in1k-short", "in1k-smoke"} <= {p for p, _ in overrides}
    cls, hast = plugins.generators.get("synq"), plugins.generators.get("hast")
    teacher = plugins.models.get("resnet20_cifar10")
    ours, theirs = cls.pass_counts(cls.Options(), teacher), hast.pass_counts(hast.Options(), teacher)
    assert ours.train_teacher == theirs.train_teacher + 2 and ours.student_input_backwards == 1
    assert cls.pass_counts(cls.Options(lambda_cam=0.0), teacher) == theirs
