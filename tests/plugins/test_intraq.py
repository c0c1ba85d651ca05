"""IntraQ (docs/methods/intraq.md): SIL and MDC on hand values, the class-centre store, the
synthesis (first batch without centres, centres rebuilt on resume, LOR seeded), the fine-tuning
batches and the native student loss."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CountingCalls, make_spec
from support.steps import calibration_input_shapes

from zsqbench.errors import UserError
from zsqbench.grid.budgets import resolve_budget
from zsqbench.trial.step import epoch_context, iterate
from zsqbench_plugins.generators import intraq_synthesis
from zsqbench_plugins.generators.intraq import IntraQOptions, resolve_constants
from zsqbench_plugins.generators.intraq_synthesis import ClassCentres, mdc_loss, sil_loss, soft_targets

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_images": 6, "synthesis_batch": 2, "synthesis_iters": 3, "calibration_batch": 2}


def intraq_spec(dataset: str = "cifar10", **options):
    return make_spec("intraq", batch_size=4, dataset=dataset, generator_options={**SMALL, **options})


# ------------------------------------------------------------------------------ loss terms


def test_sil_hand_value_and_zero_gradient_at_the_target():
    logits = torch.tensor([[math.log(4.0), 0.0]])  # softmax (0.8, 0.2)
    y = torch.tensor([0])
    assert sil_loss(logits, y, torch.tensor([0.95])).item() == pytest.approx(0.0225, rel=1e-5)  # (0.8 - 0.95)²
    assert sil_loss(logits, torch.tensor([1]), torch.tensor([1.0])).item() == pytest.approx(0.64, rel=1e-5)
    at_target = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sil_loss(at_target, y, torch.tensor([0.8])), at_target)
    assert grad.abs().max().item() < 1e-6


def test_mdc_hand_values():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    same, orthogonal = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    one = torch.ones(1)
    # d = 0 < λ_l = 0.05: the lower hinge costs 0.05
    assert mdc_loss(f[:1], same[None], one, 0.05, 0.8).item() == pytest.approx(0.05 / (1 + 1e-6), rel=1e-6)
    # d = 1 > λ_u = 0.8: the upper hinge costs 0.2
    assert mdc_loss(f[1:2], orthogonal[None], one, 0.05, 0.8).item() == pytest.approx(0.2 / (1 + 1e-6), rel=1e-5)
    # d = 1 − 1/√2 = 0.293 inside [0.05, 0.8]: 0
    assert mdc_loss(f[2:], same[None], one, 0.05, 0.8).item() == 0.0
    # no centre for any image: 0, whatever the distances
    assert mdc_loss(f, torch.zeros(3, 2), torch.zeros(3), 0.05, 0.8).item() == 0.0
    # averaged over the images with a centre only: (0.05 + 0) / 2
    centres = torch.stack([same, orthogonal, same])
    present = torch.tensor([1.0, 0.0, 1.0])
    assert mdc_loss(f, centres, present, 0.05, 0.8).item() == pytest.approx(0.05 / (2 + 1e-6), rel=1e-6)


def test_cifar100_upper_hinge_never_binds_for_non_negative_features():
    torch.manual_seed(0)
    f, c = torch.rand(64, 16), torch.rand(64, 16)
    assert mdc_loss(f, c, torch.ones(64), 0.0, 1.0).item() == 0.0


def test_soft_targets():
    tau = soft_targets(4000, 0.6, torch.Generator().manual_seed(0))
    hard = tau == 1
    assert 0.45 < hard.float().mean().item() < 0.55
    assert tau[~hard].min().item() >= 0.6 and tau[~hard].max().item() < 1


# -------------------------------------------------------------------------- class centres


def test_centre_store_is_the_mean_of_every_stored_feature_in_any_order():
    torch.manual_seed(0)
    batches = [(torch.rand(8, 5), torch.randint(0, 3, (8,))) for _ in range(4)]
    store, reverse = ClassCentres(3), ClassCentres(3)
    for f, y in batches:
        store.add(f, y)
    for f, y in reversed(batches):
        reverse.add(f, y)
    feats, labels = torch.cat([f for f, _ in batches]), torch.cat([y for _, y in batches])
    for c in range(3):
        assert torch.allclose(store.centres()[c].float(), feats[labels == c].mean(0), atol=1e-6)
    assert torch.allclose(store.centres(), reverse.centres(), atol=1e-12)
    centres, present = ClassCentres(3).lookup(torch.tensor([0, 2]), dim=5)
    assert centres.shape == (2, 5) and present.tolist() == [0.0, 0.0]  # nothing stored yet
    partial = ClassCentres(3)
    partial.add(torch.ones(1, 5), torch.tensor([1]))
    assert partial.lookup(torch.tensor([0, 1]), dim=5)[1].tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------- synthesis


#: Batches of 8 repeat classes across batches; λ_l = 0.99 makes every image with a centre pay MDC.
BINDING = {"num_images": 24, "synthesis_batch": 8, "margin_lower": 0.99, "margin_upper": 1.0}


def test_synthesis_first_batch_has_no_centres_and_a_resume_rebuilds_them(tiny_parts, monkeypatch):
    reference = tiny_parts(intraq_spec(**BINDING)).generator
    reference.ctx.cache_dir = reference.ctx.cache_dir / "reference"
    state = torch.get_rng_state()
    reference.prepare()
    assert torch.equal(torch.get_rng_state(), state)  # LOR draws from its own seeded stream
    mdc = reference.synthetic_set.diagnostics[:, :, 2]  # (batches, first/last)
    assert mdc[0].tolist() == [0.0, 0.0]  # the first batch has no centres
    assert (mdc[1:] > 0).all()  # later ones do, and the band binds
    checks = reference.synthetic_set.records["checks"]
    assert checks.shape == (3, 3) and math.isnan(checks[0, 2].item())  # no hinge fraction without centres
    assert checks[1:, 2].tolist() == [1.0, 1.0]
    assert reference.images.shape == (24, 3, 32, 32) and reference.labels.shape == (24,)

    counter = CountingCalls(monkeypatch, intraq_synthesis, "optimize_pixels", fail_at=3)
    gen = tiny_parts(intraq_spec(**BINDING)).generator
    with pytest.raises(KeyboardInterrupt):
        gen.prepare()
    counter.fail_at = None
    gen.prepare()  # batches 1-2 from the parts: their features rebuild the centres batch 3 needs
    assert counter.calls == 4
    assert torch.equal(gen.images, reference.images) and torch.equal(gen.labels, reference.labels)
    again = tiny_parts(intraq_spec(**BINDING)).generator
    again.prepare()
    assert counter.calls == 4  # the assembled set is reused


def test_centres_follow_only_earlier_batches(tiny_parts, monkeypatch):
    """The centre batch k sees is the mean teacher feature of batches < k (MDC's c_y)."""
    seen = []
    real = intraq_synthesis.ClassCentres.lookup

    def spy(self, labels, dim):
        seen.append((self.counts.clone(), labels.clone()))
        return real(self, labels, dim)

    monkeypatch.setattr(intraq_synthesis.ClassCentres, "lookup", spy)
    gen = tiny_parts(intraq_spec()).generator
    gen.prepare()
    assert [int(c.sum()) for c, _ in seen] == [0, 2, 4]


def test_fine_tuning_batches_and_native_loss(tiny_parts):
    parts = tiny_parts(intraq_spec())
    ctx, gen = parts.ctx, parts.generator
    gen.prepare()
    budget = ctx.spec.budget
    assert calibration_input_shapes(parts) == [(2, 3, 32, 32)]  # the GDFQ calibration generator at its own batch
    phase = budget.first_training_phase
    with epoch_context(parts, phase):
        assert gen.networks() == {}
        batch = gen.next_batch(phase)
        assert batch.x.shape == (4, 3, 32, 32) and all(l in gen.labels for l in batch.y)
        terms = iterate(parts, phase)
    assert set(terms) == {"total", "logit"} and torch.isfinite(terms["total"])
    s, t = torch.zeros(1, 2), torch.tensor([[20 * math.log(3.0), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert gen.native_losses().logit(s, t, torch.tensor([0])).item() == pytest.approx(8000 * kl + math.log(2), rel=1e-5)


def test_dataset_constants_and_budgets(plugins):
    assert resolve_constants(IntraQOptions(), "cifar10") == (0.95, 0.05, 0.8)
    assert resolve_constants(IntraQOptions(), "cifar100") == (0.6, 0.02, 1.0)
    assert resolve_constants(IntraQOptions(margin_upper=0.5), "cifar100") == (0.6, 0.02, 0.5)
    assert resolve_constants(IntraQOptions(), "imagenet") == (1.0, 0.0, 2.0)  # IMAGENET.md §4.2
    with pytest.raises(UserError, match="intraq.target_pro"):
        resolve_constants(IntraQOptions(), "svhn")
    with pytest.raises(UserError, match="swap"):
        resolve_constants(IntraQOptions(margin_lower=0.9, margin_upper=0.5), "cifar10")
    paper = resolve_budget(plugins, "paper", "intraq", "kd")
    b = paper.budget
    assert (b.epochs, b.iters_per_epoch, b.batch_size, b.warmup_epochs, b.lr_milestones) == (151, 200, 256, 4, [20, 40, 60])
    assert paper.optim.student_lr == 1e-4
    assert resolve_budget(plugins, "smoke", "intraq", "kd").generator_options["synthesis_iters"] == 3
