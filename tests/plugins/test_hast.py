"""HAST: hardness loss, KD + feature alignment, the difficulty-promotion step, the synthetic-set
cache and the batch pipeline (docs/methods/hast.md). Hand-computed values use two-class softmaxes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CountingCalls, make_parts, make_spec
from support.steps import calibration_input_shapes

from zsqbench.api import Batch, FeatureTaps, LossInputs, StudentUpdate
from zsqbench.toolkit.augment import random_resized_crop_flip
from zsqbench.trial.step import epoch_context
from zsqbench_plugins.generators import hast_synthesis
from zsqbench_plugins.generators.hast import HASTLogitLoss, HASTObjective
from zsqbench_plugins.generators.hast_synthesis import hardness_loss

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"num_images": 6, "synthesis_batch": 4, "synthesis_iters": 2, "calibration_batch": 4}


def hast_spec(**options):
    return make_spec("hast", batch_size=4, generator_options={**SMALL, **options})


# ------------------------------------------------------------------------------ losses


def test_hardness_loss_hand_value():
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    y = torch.tensor([0, 1])
    easy = (1 - 0.75) ** 2 * -math.log(0.75)  # 0.0625 · 0.287682 = 0.017980
    hard = (1 - 0.25) ** 2 * -math.log(0.25)  # 0.5625 · 1.386294 = 0.779791
    assert hardness_loss(logits, y, beta=10.0, gamma=2.0).item() == pytest.approx(10 * (easy + hard) / 2, rel=1e-6)
    assert hardness_loss(logits, y, beta=1.0, gamma=0.0).item() == pytest.approx(
        (-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6
    )  # γ = 0 is plain CE


def test_hardness_loss_gradient_includes_the_focal_weight():
    z = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1])
    (grad,) = torch.autograd.grad(hardness_loss(z, y, 10.0, 2.0), z)
    # central finite difference of the full expression: a detached weight would not match
    for k in range(2):
        e = torch.zeros_like(z)
        e[0, k] = 1e-6
        fd = (hardness_loss(z + e, y, 10.0, 2.0) - hardness_loss(z - e, y, 10.0, 2.0)) / 2e-6
        assert grad[0, k].item() == pytest.approx(fd.item(), rel=1e-6)


def test_kd_and_feature_alignment_hand_values():
    # KD: softmax(t/20) = (0.75, 0.25) vs (0.5, 0.5): KL = 0.130812, weight α·T² = 8000
    s = torch.zeros(1, 2)
    t = torch.tensor([[20 * math.log(3.0), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert HASTLogitLoss(20.0, 20.0)(s, t, torch.tensor([0])).item() == pytest.approx(8000 * kl, rel=1e-5)

    # FA on one (1, 2, 2, 2) map: mean_hw F² is (9, 16) for the student and (16, 9) for the
    # teacher; normalized by √337 they differ by ±7/√337, so mean_c (ΔÂ)² = 49/337
    q = torch.tensor([[[[3.0, 3.0], [3.0, 3.0]], [[4.0, -4.0], [4.0, -4.0]]]])
    tt = torch.tensor([[[[4.0, -4.0], [-4.0, 4.0]], [[3.0, 3.0], [-3.0, 3.0]]]])
    same = torch.randn(1, 4, 2, 2)
    objective = HASTObjective(HASTLogitLoss(20.0, 20.0), 1000.0, ("a", "b"))
    terms = objective(LossInputs(s, s.clone(), torch.tensor([0]), {"a": q, "b": same}, {"a": tt, "b": same}))
    assert terms["fa"].item() == pytest.approx(1000 * 49 / 337, rel=1e-5)  # 145.401
    assert terms["logit"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["total"].item() == pytest.approx(terms["fa"].item())
    with pytest.raises(RuntimeError, match="feature taps"):
        objective(LossInputs(s, s, torch.tensor([0]), {"a": q}, {"a": tt}))


def test_native_objective_declares_the_nine_unit_taps_and_hparams(tiny_parts):
    parts = tiny_parts(hast_spec())
    native = parts.generator.native_losses()
    assert native.objective.feature_taps == tuple(
        f"features.stage{s}.unit{u}.body" for s in (1, 2, 3) for u in (1, 2, 3)
    )
    assert parts.objective.feature_taps == native.objective.feature_taps  # kd installs them
    assert (parts.generator.lambda_fa, parts.generator.eps) == (1000.0, 0.01)


@pytest.mark.parametrize(
    "dataset, options, expected",
    [
        ("cifar100", {"hparams": "hocon"}, (2000.0, 0.02)),
        ("cifar100", {"hparams": "code"}, (1000.0, 0.01)),
        ("cifar10", {"hparams": "hocon"}, (1000.0, 0.01)),
        ("cifar100", {"hparams": "hocon", "eps": 0.05}, (2000.0, 0.05)),
    ],
)
def test_hparams_switch(plugins, tmp_path, dataset, options, expected):
    spec = make_spec("hast", batch_size=4, dataset=dataset, generator_options={**SMALL, **options})
    gen = make_parts(plugins, spec, tmp_path).generator
    assert (gen.lambda_fa, gen.eps) == expected
    assert gen.native_losses().objective.lambda_fa == expected[0]


# ----------------------------------------------------------------- difficulty promotion


class Recorder:
    """Wraps an objective and remembers the inputs it saw."""

    def __init__(self, objective):
        self.objective = objective
        self.feature_taps = objective.feature_taps
        self.seen: list[LossInputs] = []

    def __call__(self, inputs):
        self.seen.append(inputs)
        return self.objective(inputs)


def test_student_step_perturbs_by_eps_sign_of_input_gradient(tiny_parts):
    parts = tiny_parts(hast_spec(eps=0.05))
    ctx, gen = parts.ctx, parts.generator
    parts.quantizer.set_calibrating(ctx.student, False)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    objective = parts.objective
    paths = objective.feature_taps

    # expected, computed independently: g = dL/dx through student *and* teacher (features included)
    t_taps, s_taps = FeatureTaps(ctx.teacher, paths), FeatureTaps(ctx.student, paths)
    with t_taps.active(), s_taps.active():
        xg = x.clone().requires_grad_(True)
        t = ctx.teacher(xg)
        t_feats = t_taps.take(detach=False)
        s = ctx.student(xg)
        loss = objective(LossInputs(s, t, y, s_taps.take(detach=False), t_feats))["total"]
        (g,) = torch.autograd.grad(loss, xg)
        x_adv = x + 0.05 * g.sign()
        params = list(ctx.student.parameters())
        clean_grads = torch.autograd.grad(
            objective(LossInputs(ctx.student(x), t.detach(), y, s_taps.take(detach=False), {k: v.detach() for k, v in t_feats.items()}))["total"],
            params, allow_unused=True,
        )
        with torch.no_grad():
            t_adv = ctx.teacher(x_adv)
            t_adv_feats = t_taps.take(detach=False)
        adv_total = objective(LossInputs(ctx.student(x_adv), t_adv, y, s_taps.take(detach=False), t_adv_feats))["total"]
        adv_grads = torch.autograd.grad(adv_total, params, allow_unused=True)

    seen_inputs = []
    handle = ctx.student.register_forward_pre_hook(lambda m, args: seen_inputs.append(args[0].detach().clone()))
    optimizer = torch.optim.SGD(ctx.student.parameters(), lr=0.0)  # keep the weights: inspect the gradients
    recorder = Recorder(objective)
    try:
        with ctx.teacher_taps.active(), ctx.student_taps.active():
            terms = gen.student_step(Batch(x=x, y=y), ctx.spec.budget.first_training_phase,
                                     StudentUpdate(ctx, recorder, optimizer))
    finally:
        handle.remove()

    assert len(seen_inputs) == 2 and torch.equal(seen_inputs[0], x)
    assert torch.allclose(seen_inputs[1], x_adv, atol=1e-6)
    assert torch.allclose((seen_inputs[1] - x).abs(), torch.full_like(x, 0.05), atol=1e-6)  # no g is exactly 0 here
    # the SGD step got clean + perturbed gradients
    for p, a, b in zip(params, clean_grads, adv_grads):
        expected = (0 if a is None else a) + (0 if b is None else b)
        assert torch.allclose(p.grad, expected, rtol=1e-4, atol=1e-6)
    # terms: clean + perturbed per key, plus the perturbed total
    assert set(terms) == {"total", "logit", "fa", "adv_total"}
    assert terms["adv_total"].item() == pytest.approx(adv_total.item(), rel=1e-4)
    assert terms["total"].item() == pytest.approx(loss.item() + adv_total.item(), rel=1e-4)
    assert terms["total"].item() == pytest.approx(terms["logit"].item() + terms["fa"].item(), rel=1e-5)
    assert recorder.seen[0].teacher_logits.requires_grad  # clean teacher pass keeps the graph to x
    assert not recorder.seen[1].teacher_logits.requires_grad


def test_perturbation_can_ignore_the_teacher_path(tiny_parts):
    parts = tiny_parts(hast_spec(perturb_through_teacher=False))
    ctx = parts.ctx
    parts.quantizer.set_calibrating(ctx.student, False)
    recorder = Recorder(parts.objective)
    with ctx.teacher_taps.active(), ctx.student_taps.active():
        parts.generator.student_step(Batch(x=torch.randn(4, 3, 32, 32), y=torch.zeros(4, dtype=torch.long)),
                                     ctx.spec.budget.first_training_phase,
                                     StudentUpdate(ctx, recorder, parts.optimizer))
        # no trainer state was changed for the step: a plain teacher forward detaches its features
        _, feats = ctx.teacher_forward(torch.randn(2, 3, 32, 32, requires_grad=True))
    assert not recorder.seen[0].teacher_logits.requires_grad
    assert all(not f.requires_grad for f in recorder.seen[0].teacher_features.values())
    assert feats and all(not f.requires_grad for f in feats.values())


# ------------------------------------------------------------------------------- cache


def CountingSynthesis(monkeypatch, fail_at: int | None = None) -> CountingCalls:
    return CountingCalls(monkeypatch, hast_synthesis, "synthesize_batch", fail_at)


def test_cache_reused_then_rebuilt_when_truncated(tiny_parts, monkeypatch):
    counter = CountingSynthesis(monkeypatch)
    first = tiny_parts(hast_spec()).generator
    first.prepare()
    assert counter.calls == 2  # 6 images in batches of 4 + 2
    assert first.images.shape == (6, 3, 32, 32) and first.labels.shape == (6,)
    cache = first.synthetic_set.cache()
    assert cache.manifest_path.is_file() and not cache.parts_dir.exists()

    second = tiny_parts(hast_spec()).generator
    second.prepare()
    assert counter.calls == 2  # no re-synthesis
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)

    data = cache.data_path.read_bytes()
    cache.data_path.write_bytes(data[: len(data) // 2])  # truncate
    reports = []
    third = tiny_parts(hast_spec()).generator
    third.ctx.report = lambda desc, done, total: reports.append(desc)
    third.prepare()
    assert counter.calls == 4  # rebuilt, never silently used
    assert any("unusable" in r for r in reports)
    assert torch.equal(third.images, first.images)  # synthesis is seeded per batch
    assert third.synthetic_set.cache().load(lambda tensors: "")[0] is not None


def test_cache_follows_teacher_and_settings(tiny_parts, monkeypatch):
    counter = CountingSynthesis(monkeypatch)
    tiny_parts(hast_spec()).generator.prepare()
    assert counter.calls == 2
    other_teacher = tiny_parts(hast_spec(), seed=1).generator  # a different random teacher
    assert other_teacher.synthetic_set.cache().key != tiny_parts(hast_spec()).generator.synthetic_set.cache().key
    other_teacher.prepare()
    assert counter.calls == 4
    tiny_parts(hast_spec(synthesis_iters=3)).generator.prepare()
    assert counter.calls == 6
    # groups is informational and does not change the set
    assert (tiny_parts(hast_spec(groups=2)).generator.synthetic_set.cache().key
            == tiny_parts(hast_spec()).generator.synthetic_set.cache().key)


def test_interrupted_synthesis_resumes_from_finished_batches(tiny_parts, monkeypatch):
    reference = tiny_parts(hast_spec(synthesis_seed=7)).generator
    reference.ctx.cache_dir = reference.ctx.cache_dir / "reference"
    reference.prepare()

    counter = CountingSynthesis(monkeypatch, fail_at=2)
    gen = tiny_parts(hast_spec(synthesis_seed=7)).generator
    with pytest.raises(KeyboardInterrupt):
        gen.prepare()
    cache = gen.synthetic_set.cache()
    assert not cache.manifest_path.exists() and (cache.parts_dir / "00000.pt").is_file()
    counter.fail_at = None
    gen.prepare()
    assert counter.calls == 3  # only the unfinished batch was redone
    assert torch.equal(gen.images, reference.images)

    # a damaged finished batch is redone, not trusted
    cache.invalidate()
    cache.save_part(0, {"x": gen.images[:4], "y": gen.labels[:4]})
    part = cache.parts_dir / "00000.pt"
    part.write_bytes(part.read_bytes()[:100])
    calls = counter.calls
    gen.prepare()
    assert counter.calls == calls + 2


# ------------------------------------------------------------------------ batches


def test_augmentation_shapes_and_identity_crop():
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(0)
    out = random_resized_crop_flip(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.manual_seed(0)
    assert torch.equal(random_resized_crop_flip(x), out)  # seeded by the global RNG
    # a full-size crop is the image itself, possibly flipped
    full = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.5)
    for a, b in zip(full, x):
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, b.flip(-1), atol=1e-5)
    flipped = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_batches_cycle_through_reshuffled_passes(tiny_parts):
    gen = tiny_parts(hast_spec()).generator
    gen.labels = torch.arange(6)
    drawn = torch.cat([gen._next_indices(4) for _ in range(3)])  # 12 draws = two passes of 6
    assert sorted(drawn[:6].tolist()) == list(range(6)) and sorted(drawn[6:].tolist()) == list(range(6))


def test_hast_smoke_calibration_then_training(tiny_parts):
    parts = tiny_parts(hast_spec())
    ctx, gen = parts.ctx, parts.generator
    budget = ctx.spec.budget
    gen.prepare()
    calibration = gen.calibration
    assert set(gen.networks()) == {"calibration"}  # declared, so it gets the compute settings
    calib_before = [p.detach().clone() for p in calibration.net.parameters()]
    assert calibration_input_shapes(parts) == [(4, 3, 32, 32)]  # calibration_batch images from the GDFQ generator
    assert any(not torch.equal(a, b) for a, b in zip(calib_before, calibration.net.parameters()))

    phase = budget.first_training_phase
    before = [p.detach().clone() for p in ctx.student.parameters()]
    with epoch_context(parts, phase):
        assert gen.calibration is None and gen.networks() == {}
        batch = gen.next_batch(phase)
        assert batch.x.shape == (4, 3, 32, 32) and batch.teacher_logits is None
        assert all(any(torch.equal(l, v) for v in gen.labels) for l in batch.y)
        terms = gen.student_step(batch, phase, parts.student_update)
    assert set(terms) == {"total", "logit", "fa", "adv_total"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["fa"].item() > 0  # 4-bit features differ from the teacher's
    assert any(not torch.equal(a, b) for a, b in zip(before, ctx.student.parameters()))
