"""The CIFAR generator, the BN-statistics loss and GDFQ's student loss (docs/methods/gdfq.md)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_spec
from torch import nn

from zsqbench.api import LossInputs
from zsqbench.toolkit.bn_stats import BNStatsLoss, batch_moments
from zsqbench.toolkit.cifar_generator import CifarGenerator, UpsampleConv2d
from zsqbench_plugins.generators.gdfq import GDFQLogitLoss, GDFQOptions


def test_generator_output_shape_and_standardized_channels():
    torch.manual_seed(0)
    gen = CifarGenerator(num_classes=10).train()
    z, y = torch.randn(16, 100), torch.randint(0, 10, (16,))
    x = gen(z, y)
    assert x.shape == (16, 3, 32, 32)
    # the final non-affine BN standardizes each channel over the batch
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=5e-3)  # eps 1e-5 vs a small tanh variance
    assert gen.block1[1].eps == 0.8 and gen.block2[1].eps == 0.8
    assert not gen.head[2].affine


def test_generator_is_conditioned_multiplicatively_on_the_label():
    torch.manual_seed(0)
    gen = CifarGenerator(num_classes=10).train()
    z = torch.randn(1, 100).repeat(8, 1)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    x = gen(z, y)
    assert torch.allclose(x[0], x[1]) and not torch.allclose(x[0], x[4])
    # input to the projection is E[y] ⊙ z
    seen = {}
    gen.project.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    gen(z[:2], y[3:5])
    assert torch.allclose(seen["inp"], gen.embed.weight[y[3:5]] * z[:2])


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("c_in", "c_out", "size"), [(5, 3, 4), (128, 64, 8)])
def test_upsample_conv_equals_upsampling_then_convolving(c_in, c_out, size, channels_last):
    """The folded transposed convolution is the same linear map as Upsample(×2) + Conv3x3:
    outputs, input gradients and weight/bias gradients agree to float rounding."""
    torch.manual_seed(0)
    conv = UpsampleConv2d(c_in, c_out)
    x = torch.randn(6, c_in, size, size)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    cotangent = torch.randn(6, c_out, 2 * size, 2 * size)
    results = []
    for fn in (conv.forward, conv.reference_forward):
        xi = x.clone().requires_grad_(True)
        conv.zero_grad(set_to_none=True)
        out = fn(xi)
        out.backward(cotangent)
        results.append((out.detach(), xi.grad, conv.weight.grad, conv.bias.grad))
    for folded, reference in zip(*results):
        scale = reference.abs().max()
        assert scale > 0
        assert torch.allclose(folded, reference, rtol=0, atol=1e-5 * scale)
    assert results[0][0].shape == (6, c_out, 2 * size, 2 * size)


def test_generator_blocks_upsample_by_two_with_the_standard_layout():
    gen = CifarGenerator(num_classes=10)
    assert [type(gen.block1[0]), type(gen.block2[0])] == [UpsampleConv2d, UpsampleConv2d]
    assert gen.block1[0].weight.shape == (128, 128, 3, 3) and gen.block2[0].weight.shape == (64, 128, 3, 3)
    # same state_dict keys as nn.Conv2d blocks: older checkpoints load unchanged
    assert {"block1.0.weight", "block1.0.bias", "block2.0.weight", "block2.0.bias"} <= set(gen.state_dict())


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_moments_equal_var_mean_in_value_and_gradient(channels_last):
    torch.manual_seed(0)
    x = torch.randn(7, 5, 4, 3, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 10.0, 1.0]).view(1, 5, 1, 1)
    x = x + torch.tensor([0.0, 5.0, -2.0, 1.0, 100.0]).view(1, 5, 1, 1)  # a mean 100x the spread
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g_var, g_mean = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    results = []
    for fn in (batch_moments, lambda t: torch.var_mean(t, dim=(0, 2, 3), unbiased=False)):
        xi = x.clone().requires_grad_(True)
        var, mean = fn(xi)
        ((var * g_var).sum() + (mean * g_mean).sum()).backward()
        results.append((var.detach(), mean.detach(), xi.grad))
    for ours, reference in zip(*results):
        assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-12)
    # float32, as trained: within a few float32 roundings of the float64 result
    var32, mean32 = batch_moments(x.float())
    assert torch.allclose(var32.double(), results[1][0], rtol=1e-5)
    assert torch.allclose(mean32.double(), results[1][1], rtol=1e-6, atol=1e-6)


def test_bns_loss_hand_computed():
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([0.0, 1.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0]))
    teacher = nn.Sequential(bn)
    loss = BNStatsLoss(teacher)
    # channel 0: values {1, 3} -> mean 2, biased var 1; channel 1: values {1, 1} -> mean 1, var 0
    x = torch.tensor([[[[1.0]], [[1.0]]], [[[3.0]], [[1.0]]]])
    with loss.recording():
        teacher(x)
    # mean_c (μ-μ̂)² = ((2-0)² + (1-1)²)/2 = 2 ; mean_c (σ²-σ̂²)² = ((1-1)² + (0-4)²)/2 = 8 ; L=1 layer
    assert loss.loss().item() == pytest.approx(10.0)
    assert not bn._forward_hooks  # hooks only exist while recording


def test_gdfq_student_loss_hand_computed():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2 * math.log(3.0), 0.0]])  # at T=2: softmax(t/T) = [0.75, 0.25]
    y = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    ce = math.log(2.0)
    code = GDFQLogitLoss(GDFQOptions(temperature=2.0))(s, t, y)
    assert code.item() == pytest.approx(kl / 2 * 4 + ce, rel=1e-5)  # element mean: ÷ B·C = 2
    textbook = GDFQLogitLoss(GDFQOptions(temperature=2.0, kd_reduction="batchmean"))(s, t, y)
    assert textbook.item() == pytest.approx(kl * 4 + ce, rel=1e-5)


def test_gdfq_iteration_trains_generator_and_returns_teacher_outputs(tiny_parts):
    parts = tiny_parts(make_spec(batch_size=4))
    gen = parts.generator
    phase = parts.ctx.spec.budget.first_training_phase
    before = [p.clone() for p in gen.online.net.parameters()]
    batch = gen.next_batch(phase)
    assert batch.x.shape == (4, 3, 32, 32) and not batch.x.requires_grad
    assert batch.teacher_logits.shape == (4, 10) and not batch.teacher_logits.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.online.net.parameters()))
    # teacher weights stay frozen: no gradients accumulate there
    assert all(p.grad is None for p in parts.ctx.teacher.parameters())
    terms = gen.student_step(batch, phase, parts.student_update)
    assert set(terms) == {"total", "logit"} and torch.isfinite(terms["total"])
    objective_value = parts.objective(LossInputs(parts.ctx.student(batch.x), batch.teacher_logits, batch.y))
    assert torch.isfinite(objective_value["total"])
