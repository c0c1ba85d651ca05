"""AdaDFQ's generator loss terms and its entropy-of-difference student loss (docs/methods/adadfq.md).

Expected values are computed by hand from two-class softmaxes: a logit difference
d = (ln(p/(1−p)), 0) gives softmax (p, 1−p) and entropy h(p) = −p ln p − (1−p) ln(1−p).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_spec

from zsqbench.api import LossInputs
from zsqbench.trial.step import epoch_context, iterate
from zsqbench_plugins.generators.adadfq import (
    AdaDFQOptions,
    EntropyDiffLoss,
    agreement_loss,
    disagreement_loss,
    generator_loss,
    margin_loss,
)
from zsqbench_plugins.quantizers._modules import QuantAct

LAMBDA_L, LAMBDA_U = 0.1, 0.8


pytestmark = pytest.mark.usefixtures("one_thread")


def h(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def diff_row(p: float) -> list[float]:
    """Teacher-minus-student logits whose softmax is (p, 1 − p)."""
    return [math.log(p / (1 - p)), 0.0]


# The batch minimum is always one sample with p = 0.9; h' = (h − h(0.9)) / (ln 2 − h(0.9)).
H_MIN = h(0.9)  # 0.325083
DENOM = math.log(2) - H_MIN  # 0.368064
CASES = {
    # kind: (p of the other samples, hinge penalty each of them pays)
    "inside": (0.75, 0.0),  # h' = 0.644596 ∈ [0.1, 0.8]
    "below": (0.895, LAMBDA_L - (h(0.895) - H_MIN) / DENOM),  # h' = 0.029484 -> pays 0.070516
    "above": (0.5, 1.0 - LAMBDA_U),  # uniform difference: h' = 1 -> pays 0.2
}


@pytest.mark.parametrize("batch", [1, 16, 200])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_margin_loss_inside_below_above(batch: int, kind: str):
    p, penalty = CASES[kind]
    rows = [diff_row(0.9)] + [diff_row(p)] * (batch - 1)
    d = torch.tensor(rows, dtype=torch.float64)
    s = torch.randn_like(d)  # only t − s matters
    t = s + d
    # the arg-min sample has h' = 0 and always pays λ_l; the others pay their hinge
    expected = LAMBDA_L / batch + (batch - 1) / batch * penalty
    got = margin_loss(t, s, LAMBDA_L, LAMBDA_U)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_margin_loss_hand_values_and_gradient_through_the_minimum():
    d = torch.tensor([diff_row(0.9)] + [diff_row(0.5)] * 15, requires_grad=True)
    s = torch.zeros(16, 2)
    loss = margin_loss(d, s, LAMBDA_L, LAMBDA_U)
    assert loss.item() == pytest.approx(0.1 / 16 + 0.2 * 15 / 16, rel=1e-6)  # 0.19375
    (grad,) = torch.autograd.grad(loss, d)
    # the arg-min sample's own hinge (λ_l − 0) has no gradient in h'; it is reached only
    # through min_j h_j inside every other sample's h'
    assert grad[0].abs().sum() > 0


def test_margin_loss_uniform_batch_is_finite():
    t = torch.zeros(4, 10)
    loss = margin_loss(t, t.clone(), LAMBDA_L, LAMBDA_U)  # every h = log C: 0/0 without the floor
    assert loss.item() == pytest.approx(LAMBDA_L)


def test_disagreement_and_agreement_terms():
    t = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1])
    # t − s = (1, −1): CE for label 0 = ln(1 + e^−2), for label 1 = ln(1 + e^2)
    # t + s = (3, 1): the same two values
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2  # 1.126928
    assert disagreement_loss(t, s, y).item() == pytest.approx(expected, rel=1e-6)
    assert agreement_loss(t, s, y).item() == pytest.approx(expected, rel=1e-6)
    y0 = torch.tensor([0, 0])
    assert disagreement_loss(t, s, y0).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # they differ when s is not symmetric: t − s = (2, −1), t + s = (2, 1)
    s2 = torch.tensor([[0.0, 1.0]])
    t2 = torch.tensor([[2.0, 0.0]])
    y2 = torch.tensor([0])
    assert disagreement_loss(t2, s2, y2).item() == pytest.approx(math.log(1 + math.exp(-3)), rel=1e-6)
    assert agreement_loss(t2, s2, y2).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_entropy_of_difference_hand_value_and_no_label_term():
    t = torch.tensor([[2 * math.log(3.0), 0.0]])  # at T = 2: softmax((t − s)/T) = (0.75, 0.25)
    s = torch.zeros(1, 2)
    loss = EntropyDiffLoss(temperature=2.0)
    assert loss(s, t, torch.tensor([0])).item() == pytest.approx(-4 * h(0.75), rel=1e-6)  # −2.249341
    assert loss(s, t, torch.tensor([1])).item() == loss(s, t, torch.tensor([0])).item()


@pytest.mark.parametrize("classes, minimum", [(10, -921.0340), (100, -1842.0681)])
def test_entropy_of_difference_minimum_at_shifted_teacher(classes: int, minimum: float):
    torch.manual_seed(0)
    t = 5 * torch.randn(8, classes)
    shift = torch.randn(8, 1)  # any per-sample constant
    loss = EntropyDiffLoss(temperature=20.0)
    at_optimum = loss(t + shift, t, torch.zeros(8, dtype=torch.long))
    assert at_optimum.item() == pytest.approx(minimum, abs=1e-3)  # −T² log C
    assert loss(t + torch.randn(8, classes), t, torch.zeros(8, dtype=torch.long)).item() > minimum


def test_generator_loss_composition():
    opts = AdaDFQOptions(beta=2.0, gamma=3.0)
    t = torch.tensor([[2.0, 0.0]])
    s = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    terms = generator_loss(t, s, y, torch.tensor(0.5), opts)
    # batch of one: L_m = λ_l; L_ds = ln(1+e^−3); L_as = ln(1+e^−1)
    expected = 0.1 + 2.0 * (0.2 * math.log(1 + math.exp(-3)) + 0.1 * math.log(1 + math.exp(-1))) + 3.0 * 0.5
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)
    assert set(terms) == {"total", "margin", "disagreement", "agreement", "bns"}


def test_options_reject_inverted_bounds():
    with pytest.raises(ValueError):
        AdaDFQOptions(lambda_l=0.9, lambda_u=0.1)


def test_adadfq_iteration_smoke(tiny_parts):
    parts = tiny_parts(make_spec("adadfq", batch_size=4))
    ctx, gen = parts.ctx, parts.generator
    budget = ctx.spec.budget
    student_before = [p.detach().clone() for p in ctx.student.parameters()]
    gen_before = [p.detach().clone() for p in gen.online.net.parameters()]
    acts = [m for m in ctx.student.modules() if isinstance(m, QuantAct)]
    inputs = []
    handle = ctx.student.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    try:
        with epoch_context(parts, budget.phase(0)):
            assert iterate(parts, budget.phase(0)) == {}  # calibration: no student update
            assert ctx.student_taps.take(detach=True) == {}  # the step's student features were consumed
    finally:
        handle.remove()
    # the G step's student forward (with the graph to G) and the calibration forward (detached
    # images) both move the ranges, as in the code
    assert [x.requires_grad for x in inputs] == [True, False] and inputs[0].shape == (4, 3, 32, 32)
    assert all(int(a.updates) == 2 for a in acts)
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, gen.online.net.parameters()))
    # G learned through the student, but left no gradients and no change in it
    assert all(p.grad is None for p in ctx.student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student_before, ctx.student.parameters()))
    assert all(p.grad is None for p in ctx.teacher.parameters())

    with epoch_context(parts, budget.first_training_phase):
        terms = iterate(parts, budget.first_training_phase)
    assert set(terms) == {"total", "logit"}
    assert torch.isfinite(terms["total"]) and terms["total"].item() >= -400 * math.log(10) - 1e-3
    assert any(not torch.equal(a, b) for a, b in zip(student_before, ctx.student.parameters()))
    # the kd loss in its native form is the entropy-of-difference loss itself
    batch = gen.sample(4)
    x, y = batch.x.detach(), batch.y
    with torch.no_grad():
        t = ctx.teacher(x)
    s = ctx.student(x)
    native = EntropyDiffLoss(20.0)(s, t, y)
    assert parts.objective(LossInputs(s, t, y))["total"].item() == pytest.approx(native.item())
