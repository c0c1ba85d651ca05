"""Hutchinson Hessian-trace analysis (issue 7): estimator accuracy, per-layer split, stopping
rule, and that analysing a trial leaves it bit-identical.

Tolerances. The estimator is seeded, so every test is deterministic; the statistical bounds
are still chosen so that they would hold for almost any seed. For Rademacher probes
Var(vᵀHv) = 2(‖H‖_F² − Σ H_ii²), so the exact standard error of an n-probe mean is known and
the tests check |estimate − tr H| ≤ 5 such standard errors (a ~6e-7 two-sided chance for a
normal mean). Independently of statistics, each probe's value is checked against vᵀHv
computed from the exact Hessian with the replayed probe, in float64, to 1e-9 relative:
that pins the Hessian-vector products themselves, not just their average.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from conftest import make_spec
from torch import Tensor, nn
from torch.func import functional_call

from zsqbench.analysis.hessian import (
    fixed_generator_batch,
    model_state_fingerprint,
    state_differences,
    student_loss_closure,
    trial_hessian_trace,
)
from zsqbench.analysis.hutchinson import hutchinson_trace, parameter_groups, rademacher_probe
from zsqbench.api import Batch, Generator, LossInputs, NativeLosses, NoOptions, Phase
from zsqbench.trial.build import TrialParts
from zsqbench_plugins.quantizers._modules import QuantAct


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hutchinson_stderr(h: Tensor, n: int) -> float:
    """Exact standard error of the n-probe Rademacher mean for Hessian ``h``."""
    var = 2.0 * (h.pow(2).sum() - h.diagonal().pow(2).sum()).item()
    return math.sqrt(var / n)


def _quadratic(a: Tensor, seed: int = 1) -> tuple[nn.Parameter, Callable[[], Tensor]]:
    w = nn.Parameter(torch.randn(a.shape[0], generator=_rng(seed), dtype=a.dtype))
    return w, lambda: 0.5 * w @ (a @ w)


def _spd(dim: int = 20, seed: int = 3) -> Tensor:
    m = torch.randn(dim, dim, generator=_rng(seed), dtype=torch.float64)
    return m @ m.T  # symmetric, trace ≈ dim², strong off-diagonal mass (a real test of the averaging)


# ---------------------------------------------------------------------------- quadratics


def test_quadratic_trace_within_standard_errors():
    a = _spd()
    w, f = _quadratic(a)
    est = hutchinson_trace(f, [w], max_probes=2000, min_probes=2000, rtol=0.0, generator=_rng(0))
    tr = a.trace().item()
    se_exact = _hutchinson_stderr(a, 2000)
    assert est.num_probes == len(est.samples) == 2000 and not est.converged
    assert abs(est.trace - tr) <= 4 * est.stderr
    assert abs(est.trace - tr) <= 5 * se_exact
    assert abs(est.trace - tr) / tr < 0.05
    # the reported standard error estimates the true one (sample std of 2000 draws: ±~5%)
    assert est.stderr == pytest.approx(se_exact, rel=0.15)


def test_diagonal_hessian_is_exact_for_every_probe():
    # v_i² = 1 for Rademacher v, so vᵀAv = Σ a_ii for *every* probe; integer entries keep
    # float64 arithmetic exact, so equality is bitwise.
    diag = torch.arange(1, 21, dtype=torch.float64) * torch.tensor([1.0, -0.5] * 10, dtype=torch.float64)
    a = torch.diag(diag)
    w, f = _quadratic(a)
    est = hutchinson_trace(f, [w], max_probes=50, min_probes=5, rtol=0.0, generator=_rng(7))
    tr = diag.sum().item()
    assert all(s == tr for s in est.samples)
    assert est.trace == tr and est.stderr == 0.0
    assert est.converged and est.num_probes == 5  # zero spread meets even rtol = 0 at min_probes


def test_convergence_stops_early_with_loose_rtol():
    a = _spd()
    w, f = _quadratic(a)
    est = hutchinson_trace(f, [w], max_probes=5000, min_probes=10, rtol=0.05, generator=_rng(0))
    assert est.converged
    assert 10 <= est.num_probes < 5000
    assert est.stderr <= 0.05 * abs(est.trace) and est.relative_stderr <= 0.05
    # one probe fewer would not have met the rule (it stops at the first probe that does)
    prefix = est.samples[:-1]
    if len(prefix) >= 10:
        mean = sum(prefix) / len(prefix)
        se = math.sqrt(sum((s - mean) ** 2 for s in prefix) / (len(prefix) - 1) / len(prefix))
        assert se > 0.05 * abs(mean)


def test_strict_rtol_runs_to_max_probes_unconverged():
    w, f = _quadratic(_spd())
    est = hutchinson_trace(f, [w], max_probes=30, min_probes=10, rtol=1e-6, generator=_rng(0))
    assert est.num_probes == 30 and not est.converged


def test_probes_are_reproducible_and_seeded():
    w, f = _quadratic(_spd())
    kw = dict(max_probes=20, min_probes=20, rtol=0.0)
    a = hutchinson_trace(f, [w], generator=_rng(5), **kw)
    b = hutchinson_trace(f, [w], generator=_rng(5), **kw)
    c = hutchinson_trace(f, [w], generator=_rng(6), **kw)
    assert a.samples == b.samples and a.samples != c.samples


def test_linear_loss_has_zero_trace_and_grads_are_untouched():
    w = nn.Parameter(torch.randn(5))
    u = nn.Parameter(torch.randn(3))  # not reached by the loss at all
    w.grad = torch.full((5,), 3.0)
    est = hutchinson_trace(lambda: (w * torch.arange(5.0)).sum(), [w, u], max_probes=10, min_probes=3,
                           rtol=0.0, generator=_rng(0), per_param_groups={"w": [w], "u": [u]})
    assert est.trace == 0.0 and est.converged and est.num_probes == 3
    assert est.groups["u"].trace == 0.0
    assert torch.equal(w.grad, torch.full((5,), 3.0)) and u.grad is None


def test_non_finite_probe_stops_unconverged():
    w = nn.Parameter(torch.randn(4))
    est = hutchinson_trace(lambda: (w * w).sum() * float("nan"), [w], max_probes=50, min_probes=5,
                           rtol=1.0, generator=_rng(0))
    assert est.num_probes == 1 and not est.converged and math.isnan(est.trace)


def test_invalid_arguments_are_rejected():
    w, f = _quadratic(_spd())
    stranger = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="not in `params`"):
        hutchinson_trace(f, [w], generator=_rng(), per_param_groups={"x": [stranger]})
    with pytest.raises(ValueError, match="min_probes"):
        hutchinson_trace(f, [w], min_probes=1, generator=_rng())
    with pytest.raises(ValueError, match="max_probes"):
        hutchinson_trace(f, [w], min_probes=10, max_probes=5, generator=_rng())
    with pytest.raises(ValueError, match="twice"):
        hutchinson_trace(f, [w, w], generator=_rng())


# ---------------------------------------------------------------------- a tiny network


def _tiny_net_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(8, 4, dtype=torch.float64, generator=_rng(11))
    y = torch.randn(8, 2, dtype=torch.float64, generator=_rng(12))
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def flat_loss(flat: Tensor) -> Tensor:
        chunks = flat.split(sizes)
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return nn.functional.mse_loss(functional_call(net, params, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    h = torch.autograd.functional.hessian(flat_loss, flat)
    # MSE rather than CE: on a shared 2-core CPU, log_softmax's double backward costs ~7 ms
    # per call through thread contention, which 1000 probes would turn into seconds.
    loss_fn = lambda: nn.functional.mse_loss(net(x), y)  # noqa: E731
    return net, loss_fn, h, sizes


def test_tiny_network_matches_exact_hessian():
    net, loss_fn, h, sizes = _tiny_net_problem()
    params = list(net.parameters())
    groups = parameter_groups(net)  # per layer: "0" (Linear 4→3) and "2" (Linear 3→2)
    assert list(groups) == ["0", "2"]
    n = 2000
    est = hutchinson_trace(loss_fn, params, max_probes=n, min_probes=n, rtol=0.0, generator=_rng(0),
                           per_param_groups=groups)

    # 1. every probe is exactly vᵀHv of the exact Hessian (replayed probes, float64)
    replay = _rng(0)
    bounds = {"0": slice(0, sizes[0] + sizes[1]), "2": slice(sizes[0] + sizes[1], sum(sizes))}
    for k in range(50):
        v = torch.cat([t.reshape(-1) for t in rademacher_probe(params, replay)])
        hv = h @ v
        assert est.samples[k] == pytest.approx((v @ hv).item(), rel=1e-9, abs=1e-12)
        for name, sl in bounds.items():
            assert est.groups[name].samples[k] == pytest.approx((v[sl] @ hv[sl]).item(), rel=1e-9, abs=1e-12)

    # 2. the mean is the trace, within 5 exact standard errors
    tr = h.trace().item()
    assert abs(est.trace - tr) <= 5 * _hutchinson_stderr(h, n)
    assert abs(est.trace - tr) <= 5 * est.stderr

    # 3. per-layer traces sum to the total and match the diagonal blocks of H
    assert sum(g.trace for g in est.groups.values()) == pytest.approx(est.trace, rel=1e-12, abs=1e-12)
    for name, sl in bounds.items():
        block = h[sl, sl].trace().item()
        assert abs(est.groups[name].trace - block) <= 5 * est.groups[name].stderr + 1e-12


# ----------------------------------------------------------------- a ResNet-20 trial


def _calibrate(parts, batch: int = 2) -> None:
    """A warm-up forward so the activation ranges are non-degenerate; calibration stays ON,
    which the analysis must override (and restore)."""
    ctx = parts.ctx
    parts.quantizer.set_calibrating(ctx.student, True)
    with torch.no_grad():
        ctx.student(torch.randn(batch, 3, 32, 32, generator=_rng(99)))


def _quant_acts(student: nn.Module) -> list[QuantAct]:
    return [m for m in student.modules() if isinstance(m, QuantAct)]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_resnet20_trial_trace_is_finite_and_leaves_the_trial_untouched(tiny_parts):
    parts = tiny_parts(make_spec(loss="kd", batch_size=2))
    ctx = parts.ctx
    student, teacher, gen_net = ctx.student, ctx.teacher, parts.generator.networks()["generator"]
    _calibrate(parts)
    params = [p for p in student.parameters() if p.requires_grad]
    for i, p in enumerate(params[:3]):
        p.grad = torch.randn(p.shape, generator=_rng(i))  # existing grads must survive; the rest stay None

    acts = _quant_acts(student)
    assert acts and all(a.calibrating for a in acts) and all(a.updates.item() == 1 for a in acts)
    ranges = [(a.x_min.clone(), a.x_max.clone(), a.beta_t.clone(), a.updates.clone()) for a in acts]
    before = {"student": model_state_fingerprint(student, include_grads=True),
              "teacher": model_state_fingerprint(teacher, include_grads=True),
              "generator": model_state_fingerprint(gen_net, include_grads=True)}
    rng_before = torch.get_rng_state()

    batch = fixed_generator_batch(parts, batch_size=2, seed=0)
    again = fixed_generator_batch(parts, batch_size=2, seed=0)
    assert batch.x.shape == (2, 3, 32, 32) and torch.equal(batch.x, again.x) and torch.equal(batch.y, again.y)
    loss_fn = student_loss_closure(parts, batch)
    est = hutchinson_trace(loss_fn, params, max_probes=3, min_probes=2, rtol=0.0, generator=_rng(0),
                           per_param_groups=parameter_groups(student))

    assert est.num_probes == 3 and all(math.isfinite(s) for s in est.samples)
    assert math.isfinite(est.trace) and math.isfinite(est.stderr) and math.isfinite(est.loss)
    assert any(s != 0.0 for s in est.samples)
    assert sum(g.trace for g in est.groups.values()) == pytest.approx(est.trace, rel=1e-9, abs=1e-9)
    assert "output" in est.groups and "features.init_block.conv" in est.groups  # per layer: weight + bias

    after = {"student": model_state_fingerprint(student, include_grads=True),
             "teacher": model_state_fingerprint(teacher, include_grads=True),
             "generator": model_state_fingerprint(gen_net, include_grads=True)}
    for name in before:
        assert state_differences(before[name], after[name]) == [], name
    for a, (lo, hi, bt, up) in zip(acts, ranges):
        assert torch.equal(a.x_min, lo) and torch.equal(a.x_max, hi)
        assert torch.equal(a.beta_t, bt) and torch.equal(a.updates, up)
    assert all(a.calibrating for a in acts)  # the caller's flags are restored
    assert all(p.grad is None for p in params[3:])
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not student.training and not teacher.training and gen_net.training
    assert _hook_count(student) == _hook_count(teacher) == 0  # no feature tap left behind


def test_akt_closure_is_the_training_objective_and_trial_analysis_checks_state(tiny_parts):
    parts = tiny_parts(make_spec(loss="akt", batch_size=2))
    ctx = parts.ctx
    assert parts.objective.feature_taps  # AKT taps the residual-unit bodies
    _calibrate(parts)
    parts.quantizer.set_calibrating(ctx.student, False)
    batch = fixed_generator_batch(parts, batch_size=2, seed=3)
    closure_value = student_loss_closure(parts, batch)().item()

    # the same objective as the student step computes it (taps active, ranges frozen)
    with torch.no_grad(), ctx.teacher_taps.active():
        t, t_feats = ctx.teacher_forward(batch.x)
    with ctx.student_taps.active():
        s, s_feats = ctx.student_forward(batch.x)
    assert t_feats and s_feats
    terms = parts.objective(LossInputs(s, t, batch.y, s_feats, t_feats))
    assert terms["feature"].item() > 0
    assert closure_value == pytest.approx(terms["total"].item(), rel=1e-6)

    est = trial_hessian_trace(parts, batch=batch, seed=0, max_probes=2, min_probes=2, rtol=0.0)
    assert est.num_probes == 2 and math.isfinite(est.trace)
    assert est.loss == pytest.approx(closure_value, rel=1e-6)
    assert est.to_dict()["groups"]


# -------------------------------------------------- fixed batches from other generators


class _CountingGenerator(Generator):
    """A generator without networks (``sample`` gives None) that mutates itself, the student and
    the global RNG."""

    name = "counting"
    description = "test double"

    def __init__(self, options, ctx) -> None:
        super().__init__(options, ctx)
        self.calls = 0
        self.state = torch.zeros(())

    def next_batch(self, phase: Phase) -> Batch:
        self.calls += 1
        self.state.add_(1)
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            self.ctx.student(x)  # would move activation ranges while calibrating
        return Batch(x=x, y=torch.randint(0, self.ctx.num_classes, (3,)))

    def native_losses(self) -> NativeLosses:  # pragma: no cover - not used
        raise NotImplementedError


def test_fixed_batch_of_a_generator_without_net_changes_nothing(tiny_parts):
    base = tiny_parts(make_spec(loss="kd", batch_size=2))
    gen = _CountingGenerator(NoOptions(), base.ctx)
    parts = TrialParts(base.ctx, base.quantizer, gen, base.objective, base.optimizer, base.student_update)
    student_before = model_state_fingerprint(base.ctx.student)
    rng_before = torch.get_rng_state()

    a = fixed_generator_batch(parts, batch_size=5, seed=1)
    b = fixed_generator_batch(parts, batch_size=5, seed=1)
    c = fixed_generator_batch(parts, batch_size=5, seed=2)
    assert a.x.shape[0] == a.y.shape[0] == 5  # two calls of 3, truncated
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert gen.calls == 0 and gen.state.item() == 0
    assert state_differences(student_before, model_state_fingerprint(base.ctx.student)) == []
    assert torch.equal(torch.get_rng_state(), rng_before)
