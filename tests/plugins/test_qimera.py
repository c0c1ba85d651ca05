"""Qimera (docs/methods/qimera.md): superposed labels, latent standardization, embedding
initialization, parameter counts, and the one-hot golden test against GDFQ's loss formulas.

Expected values are derived here by hand (closed forms, quadrature, the spec's tables), never
read from the implementation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_parts, make_spec
from torch.nn import functional as F

from zsqbench.analysis.hessian import fixed_generator_batch
from zsqbench.api import LossInputs
from zsqbench.api.options import fill_options
from zsqbench.errors import UserError
from zsqbench.toolkit.logits import soft_cross_entropy
from zsqbench.trial.build import build_trial_parts
from zsqbench_plugins.generators.gdfq import GDFQLogitLoss, GDFQOptions
from zsqbench_plugins.generators.qimera import Qimera, QimeraOptions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def qimera(plugins, tmp_path):
    """Factory: the trial parts of a Qimera trial around a random ResNet-20 teacher."""
    def build(dataset="cifar10", bits=4, batch_size=4, **options):
        spec = make_spec("qimera", dataset=dataset, bits=bits, batch_size=batch_size, generator_options=options)
        return make_parts(plugins, spec, tmp_path / "cache")
    return build


def _entropy(rows: torch.Tensor) -> torch.Tensor:
    return -torch.where(rows > 0, rows * rows.clamp_min(1e-30).log(), torch.zeros_like(rows)).sum(dim=1)


def _gdfq_kd(s: torch.Tensor, t: torch.Tensor, temperature: float = 20.0) -> torch.Tensor:
    """GDFQ's KD term by hand (docs/methods/gdfq.md#losses): T²·Σ_{b,c} p_t·(log p_t − log p_s) / (B·C) at T."""
    log_pt, log_ps = F.log_softmax(t / temperature, dim=1), F.log_softmax(s / temperature, dim=1)
    return temperature**2 * (log_pt.exp() * (log_pt - log_ps)).sum() / s.numel()


def _superposed_stats(gen, batches: int, batch_size: int):
    """(ℓ, λ) of ``batches`` superposed batches drawn by the generator (no network run)."""
    ls, lams = [], []
    for _ in range(batches):
        _, _, lam, soft = gen.draw_inputs(batch_size)
        assert lam is not None
        ls.append(soft)
        lams.append(lam)
    return torch.cat(ls), torch.cat(lams)


def _k2_expectations(num_classes: int) -> tuple[float, float]:
    """Exact E[H(ℓ)] and E[max λ] for K = 2: λ = (σ(D), 1 − σ(D)) with D = a₁ − a₂ ~ N(0, 2);
    the two classes coincide with probability 1/C, and then ℓ is one-hot (H = 0)."""
    d = np.linspace(-30.0, 30.0, 300_001)  # σ(±30) stays inside (0, 1) in float64
    pdf = np.exp(-d**2 / 4) / math.sqrt(4 * math.pi)
    s = 1 / (1 + np.exp(-d))
    h = -(s * np.log(s) + (1 - s) * np.log1p(-s))
    step = d[1] - d[0]
    return float((1 - 1 / num_classes) * (h * pdf).sum() * step), float((np.maximum(s, 1 - s) * pdf).sum() * step)


def test_superposed_labels_c10_k2_entropy_and_max_weight(qimera):
    gen = qimera(p_mix=1.0).generator
    assert gen.mix_classes == 2  # the CIFAR-10 script
    torch.manual_seed(0)
    soft, lam = _superposed_stats(gen, 100, 200)  # 20,000 samples
    assert torch.allclose(soft.sum(dim=1), torch.ones(len(soft)), atol=1e-6) and (soft >= 0).all()
    assert torch.allclose(lam.sum(dim=1), torch.ones(len(lam)), atol=1e-6)
    h_exact, max_exact = _k2_expectations(10)
    assert round(h_exact, 2) == 0.49 and round(max_exact, 2) == 0.73  # qimera.md#soft-label-statistics
    # per-sample sd of H is ≈ 0.22 and of max λ ≈ 0.13: 4 standard errors over 20,000 samples
    assert _entropy(soft).mean().item() == pytest.approx(h_exact, abs=4 * 0.22 / math.sqrt(20_000))
    assert lam.max(dim=1).values.mean().item() == pytest.approx(max_exact, abs=4 * 0.13 / math.sqrt(20_000))


def test_superposed_labels_c100_k10_entropy_and_max_weight(qimera):
    gen = qimera(dataset="cifar100", p_mix=1.0).generator
    assert gen.mix_classes == 10  # the CIFAR-100 4-bit script (K 50 from 5 bits: below)
    torch.manual_seed(1)
    soft, lam = _superposed_stats(gen, 100, 200)
    assert torch.allclose(soft.sum(dim=1), torch.ones(len(soft)), atol=1e-6)
    # the spec's table: 1.88 and 0.32 (two decimals: ±0.005), plus 4 standard errors (sd 0.21, 0.11)
    assert _entropy(soft).mean().item() == pytest.approx(1.88, abs=0.005 + 4 * 0.21 / math.sqrt(20_000))
    assert lam.max(dim=1).values.mean().item() == pytest.approx(0.32, abs=0.005 + 4 * 0.11 / math.sqrt(20_000))


def test_soft_label_adds_the_weights_of_repeated_classes(qimera):
    gen = qimera(p_mix=1.0, mix_classes=3).generator
    torch.manual_seed(2)
    for _ in range(20):
        _, y, lam, soft = gen.draw_inputs(8)
        for b in range(8):
            expected = torch.zeros(10)
            for k in range(3):
                expected[y[b, k]] += lam[b, k]
            assert torch.allclose(soft[b], expected, atol=1e-7)


def test_superposition_share_is_p_mix_over_many_coin_flips(qimera):
    gen = qimera().generator  # p_mix 0.4, the scripts' value
    torch.manual_seed(3)
    n = 400
    superposed = sum(gen.draw_inputs(1)[2] is not None for _ in range(n))
    sd = math.sqrt(n * 0.4 * 0.6)  # binomial: 160 ± 9.8
    assert abs(superposed - 0.4 * n) < 4 * sd
    never = qimera(p_mix=0.0).generator
    assert all(never.draw_inputs(2)[2] is None for _ in range(50))


def test_single_path_standardizes_each_sample(qimera):
    net = qimera(batch_size=16).generator.online.net
    torch.manual_seed(4)
    z, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    with torch.no_grad():
        h = net.latent(z, y)
        u = net.embed(y) + z  # σ = 1
    assert h.shape == (16, 64)
    assert torch.allclose(h.mean(dim=1), torch.zeros(16), atol=1e-5)
    var = h.var(dim=1, unbiased=False)
    assert torch.allclose(var, u.var(dim=1, unbiased=False) / (u.var(dim=1, unbiased=False) + 1e-5), atol=1e-5)
    assert (var < 1).all() and (var > 1 - 1e-4).all()  # 1 − O(1e-5)


@pytest.mark.parametrize("norm", ["code", "per_sample"])
def test_superposed_path_standardizes_each_slot_over_the_batch(qimera, norm):
    """λ = onehot(k) for every sample makes h the standardized slot k itself (DM off)."""
    net = qimera(batch_size=32, norm=norm).generator.online.net
    torch.manual_seed(5)
    b, k = 32, 3
    z, y = torch.randn(b, k, 64) * 3 + 2, torch.randint(0, 10, (b, k))
    for slot in range(k):
        lam = F.one_hot(torch.full((b,), slot), k).float()
        with torch.no_grad():
            n = net.latent(z, y, lam)
        row_means = n.mean(dim=1)
        if norm == "code":  # one mean and variance per slot over all (b, j), not per row
            assert abs(n.mean().item()) < 1e-5 and n.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
            assert row_means.abs().max() > 0.05
        else:
            assert torch.allclose(row_means, torch.zeros(b), atol=1e-5)
            assert torch.allclose(n.var(dim=1, unbiased=False), torch.ones(b), atol=1e-4)


def test_superposition_mixes_the_mapped_slots_with_lambda(qimera):
    net = qimera(batch_size=8, dm=True).generator.online.net
    torch.manual_seed(6)
    z, y = torch.randn(8, 2, 64), torch.randint(0, 10, (8, 2))
    lam = torch.softmax(torch.randn(8, 2), dim=1)
    with torch.no_grad():
        h = net.latent(z, y, lam)
        slots = [net.latent(z, y, F.one_hot(torch.full((8,), k), 2).float()) for k in range(2)]
    assert h.shape == (8, 100)  # DM: Linear(64 -> 100)
    assert torch.allclose(h, lam[:, :1] * slots[0] + lam[:, 1:] * slots[1], atol=1e-5)


def test_embedding_starts_as_a_copy_of_the_teacher_classifier(qimera):
    parts = qimera(emb_init="teacher_fc")
    gen, fc = parts.generator, parts.ctx.teacher.output.weight
    embed = gen.online.net.embed.weight
    assert embed.shape == (10, 64) and torch.equal(embed, fc)
    assert embed.data_ptr() != fc.data_ptr()
    before = fc.clone()
    gen.next_batch(parts.ctx.spec.budget.first_training_phase)
    assert not torch.equal(embed, before) and torch.equal(fc, before)  # E trains, the teacher does not move
    assert any(p is embed for g in gen.online.optimizer.param_groups for p in g["params"])
    assert "embed.weight" in gen.networks()["generator"].state_dict()  # checkpointed with the generator


def test_script_defaults_per_dataset_and_bits(qimera):
    c10 = qimera().generator
    assert (c10.mix_classes, c10.emb_init) == (2, "random")
    assert not torch.equal(c10.online.net.embed.weight, c10.ctx.teacher.output.weight)
    c100 = qimera(dataset="cifar100").generator
    assert (c100.mix_classes, c100.emb_init) == (10, "teacher_fc")
    assert qimera(dataset="cifar100", bits=5).generator.mix_classes == 50
    assert qimera(dataset="cifar100", bits=5, mix_classes=7).generator.mix_classes == 7


@pytest.mark.parametrize(("dataset", "dm", "count"), [
    ("cifar10", False, 756_867), ("cifar10", True, 1_058_279), ("cifar100", False, 762_627), ("cifar100", True, 1_064_039),
])
def test_parameter_counts(qimera, dataset, dm, count):
    # by hand, DM off: E C·64 + l1 64·8192 + 8192 + the GDFQ trunk after l1 (223,747); DM on: + 64·100 + 100, l1 from 100
    trunk = 256 + (128 * 128 * 9 + 128) + 256 + (128 * 64 * 9 + 64) + 128 + (64 * 3 * 9 + 3)
    c = 10 if dataset == "cifar10" else 100
    d_in = 100 if dm else 64
    assert c * 64 + (64 * 100 + 100) * dm + d_in * 8192 + 8192 + trunk == count
    net = qimera(dataset=dataset, dm=dm).generator.networks()["generator"]
    assert sum(p.numel() for p in net.parameters()) == count


def test_one_hot_golden_losses_equal_gdfq_formulas(qimera, monkeypatch):
    """p_mix = 0: the generator loss and the student loss are GDFQ's on the same tensors."""
    parts = qimera(p_mix=0.0, batch_size=6)
    gen = parts.generator
    seen = {}
    bns_loss, step = gen.online.bns.loss, gen.online.step
    monkeypatch.setattr(gen.online.bns, "loss", lambda: seen.setdefault("bns", bns_loss()))
    monkeypatch.setattr(gen.online, "step", lambda loss, **kw: (seen.setdefault("g", loss.detach()), step(loss, **kw)))
    batch = gen.next_batch(parts.ctx.spec.budget.first_training_phase)
    assert torch.equal(batch.y_soft, F.one_hot(batch.y, 10).float())
    t, y = batch.teacher_logits, batch.y
    gdfq_g = F.cross_entropy(t, y) + 0.1 * seen["bns"].detach()
    assert seen["g"].item() == pytest.approx(gdfq_g.item(), rel=1e-6, abs=0)

    s = torch.randn(6, 10)
    inputs = LossInputs(s, t, y, soft_labels=batch.y_soft)
    qimera_s = parts.objective(inputs)["total"]
    # GDFQ (docs/methods/gdfq.md#losses): 20²·KL with the element mean (÷ B·C) + CE(s, y)
    gdfq_s = _gdfq_kd(s, t) \
        + F.cross_entropy(s, y)
    assert qimera_s.item() == pytest.approx(gdfq_s.item(), rel=1e-6, abs=0)
    assert qimera_s.item() == pytest.approx(GDFQLogitLoss(GDFQOptions())(s, t, y).item(), rel=1e-6, abs=0)
    # in float64 the soft and the index CE differ by summation order only
    s64, t64 = s.double(), t.double()
    soft64 = GDFQLogitLoss(QimeraOptions())(s64, t64, batch.y_soft.double())
    assert soft64.item() == pytest.approx(GDFQLogitLoss(GDFQOptions())(s64, t64, y).item(), rel=1e-14, abs=0)


def test_student_loss_fits_the_soft_labels_of_a_superposed_batch(qimera):
    parts = qimera(p_mix=1.0, batch_size=4)
    batch = parts.generator.next_batch(parts.ctx.spec.budget.first_training_phase)
    soft, t, y = batch.y_soft, batch.teacher_logits, batch.y
    assert not torch.equal(soft, F.one_hot(y, 10).float())
    s = torch.randn(4, 10)
    expected = _gdfq_kd(s, t) \
        - (soft * F.log_softmax(s, dim=1)).sum(dim=1).mean()
    got = parts.objective(LossInputs(s, t, y, soft_labels=soft))["total"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # and the trainer's student step hands the batch's soft labels to the objective
    captured = []
    objective = parts.student_update.objective
    parts.student_update.objective = lambda inputs: captured.append(inputs) or objective(inputs)
    parts.student_update.step(batch)
    assert captured[0].soft_labels is soft and torch.equal(captured[0].targets, soft)


def test_soft_cross_entropy_is_at_least_the_label_entropy():
    torch.manual_seed(7)
    a = torch.randn(64, 2)
    y = torch.randint(0, 10, (64, 2))
    soft = torch.zeros(64, 10).scatter_add_(1, y, torch.softmax(a, dim=1))
    floor = _entropy(soft).mean()
    assert floor > 0.3
    for _ in range(20):
        assert soft_cross_entropy(torch.randn(64, 10) * 5, soft) >= floor
    # reached at logits = log ℓ (the teacher agreeing with the mixture exactly)
    assert soft_cross_entropy(soft.clamp_min(1e-30).log(), soft).item() == pytest.approx(floor.item(), abs=1e-5)


def test_feature_loss_adds_to_the_soft_label_logit_term(qimera, plugins, tmp_path):
    spec = make_spec("qimera", "akt", generator_options={"p_mix": 1.0})
    parts = make_parts(plugins, spec, tmp_path / "akt")
    torch.manual_seed(8)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    soft = torch.softmax(torch.randn(4, 10), dim=1)
    y = soft.argmax(dim=1)
    logit = parts.objective.logit_term(LossInputs(s, t, y, soft_labels=soft))
    expected = _gdfq_kd(s, t) \
        - (soft * F.log_softmax(s, dim=1)).sum(dim=1).mean()
    assert logit.item() == pytest.approx(expected.item(), rel=1e-6)


def test_sample_and_fixed_batches_keep_the_soft_labels(qimera):
    parts = qimera(p_mix=1.0)
    a = parts.generator.sample(3, torch.Generator().manual_seed(0))
    b = parts.generator.sample(3, torch.Generator().manual_seed(0))
    assert a.x.shape == (3, 3, 32, 32) and a.x.requires_grad
    assert torch.equal(a.y_soft, b.y_soft) and torch.allclose(a.x, b.x)
    fixed = fixed_generator_batch(parts, 5, seed=1)
    assert fixed.y_soft.shape == (5, 10) and torch.allclose(fixed.y_soft.sum(dim=1), torch.ones(5))


def test_bad_options_and_a_model_without_classifier_are_one_line_user_errors(plugins, tmp_path):
    for bad in ({"p_mix": 1.5}, {"mix_classes": 1}, {"noise_scale": 0.0}, {"emb_init": "zeros"}, {"norm": "bn"}):
        with pytest.raises(UserError) as err:
            fill_options(Qimera, bad, "generator", "qimera")
        assert len(str(err.value).splitlines()) == 1
    spec = make_spec("qimera")
    entry = dataclasses.replace(plugins.models.get(spec.model), classifier=None)
    with pytest.raises(UserError, match="declares no classifier") as err:
        build_trial_parts(spec, plugins, entry, entry.build().eval(), torch.device("cpu"), Path(tmp_path))
    assert len(str(err.value).splitlines()) == 1
