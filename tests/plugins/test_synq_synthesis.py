"""SynQ's layered synthesis (synthesis = lbns, docs/methods/synq.md#the-synthetic-set): which BNs form
the later group, the centres' pooled statistics (the code's and the pooled variance) on hand values,
the layered terms, and a tiny end-to-end set with its centres."""

from __future__ import annotations

import pytest
import torch
from conftest import make_spec
from torch import nn

from zsqbench_plugins.generators.synq_synthesis import (
    BNInputs,
    CentreSet,
    centre_statistics,
    later_start,
    layered_bn_loss,
    lbns_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_images": 6, "synthesis_batch": 4, "synthesis_iters": 2, "calibration_batch": 4, "centre_iters": 2}


def _firing(model: nn.Module, size: int) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    inputs = BNInputs(model)
    with torch.no_grad(), inputs.recording():
        model.eval()(torch.randn(2, 3, size, size))
        return [names[id(bn)] for _, _, bn in inputs.take()]


@pytest.mark.parametrize("model, size, first_late, late", [
    ("resnet20_cifar10", 32, "features.stage2.unit1.body.conv2.bn", 12),
    ("resnet18_imagenet", 224, "features.stage2.unit2.body.conv2.bn", 11),
])
def test_the_later_group_starts_where_the_code_splits_the_firing_order(plugins, model, size, first_late, late):
    fired = _firing(plugins.models.get(model).build(), size)
    split = later_start(len(fired))
    assert fired[split] == first_late and len(fired) - split == late


class OneBN(nn.Module):
    """The BN input is the image itself: its statistics are the pixels'."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


def test_centre_statistics_code_and_pooled_variance():
    batches = [torch.tensor([0.0, 2.0]).view(2, 1, 1, 1), torch.tensor([4.0, 4.0]).view(2, 1, 1, 1)]
    # batch 0: mean 1, biased variance 1; batch 1: mean 4, variance 0; N = 4, pooled mean 2.5
    ((mean, pooled),) = centre_statistics(OneBN().eval(), batches, "pooled")
    ((_, code),) = centre_statistics(OneBN().eval(), batches, "code")
    assert mean.item() == pytest.approx(2.5)
    assert pooled.item() == pytest.approx(2.75)  # the variance of (0, 2, 4, 4)
    assert code.item() == pytest.approx((1 * 1 + 2 * 0) / 4 + 2.25)  # the first batch's variance unweighted
    ((_, single),) = centre_statistics(OneBN().eval(), batches[:1], "code")
    assert single.item() == pytest.approx(1 / 2)  # one batch (CIFAR): v / B


def test_layered_terms_weight_the_later_bns():
    bn = nn.BatchNorm2d(1)  # running mean 0, running variance 1
    records = [(torch.ones(1), torch.ones(1), bn) for _ in range(6)]  # mean gap 1, variance gap 0 per BN
    split = later_start(6)  # ⌊8/2⌋ − 2 = 2: two early BNs, four late ones
    assert split == 2
    assert layered_bn_loss(records).item() == pytest.approx((2 * 0.2 + 4 * 1.1) / 6)
    targets = [(torch.zeros(1), torch.full((1,), 3.0)) for _ in range(6)]  # gaps 1 and -2: 5 per BN
    assert lbns_loss(records, targets, batch=8).item() == pytest.approx(4 * 5 / (6 * 8))
    with pytest.raises(RuntimeError, match="centre statistics"):
        lbns_loss(records, targets[:5], batch=8)


def test_a_layered_set_and_its_centres(tiny_parts):
    parts = tiny_parts(make_spec("synq", batch_size=4, generator_options={**SMALL, "synthesis": "lbns",
                                                                         "centres_in_set": True}))
    gen = parts.generator
    x, y = gen.load_set()
    assert x.shape == (6 + 10, 3, 32, 32) and torch.isfinite(x).all()
    assert y[6:].tolist() == list(range(10))  # one centre per class, appended
    centres = CentreSet(parts.ctx, gen.options)
    assert centres.num_images == 12 and centres.labels_of(2, 4).tolist() == [8, 9, 0, 0]  # padded with class 0
    assert gen.synthetic_set.settings()["centres"] == centres.settings()
    assert (parts.ctx.cache_dir / "synq").is_dir() and (parts.ctx.cache_dir / "synq-centres").is_dir()


def test_pass_counts_add_the_centres(plugins):
    cls = plugins.generators.get("synq")
    teacher = plugins.models.get("resnet20_cifar10")
    plain = cls.pass_counts(cls.Options(), teacher)
    layered = cls.pass_counts(cls.Options(synthesis="lbns"), teacher)
    assert layered.synthesis_teacher - plain.synthesis_teacher == 3.0 * 256 * 1500  # 10 classes in one batch of 256
