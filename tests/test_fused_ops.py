"""The fused forms of issue 15 against their reference forms.

Each rewrite does the same mathematics in fewer operations; these tests bound the difference in
float64 (where rounding cannot hide a wrong formula) and check float32 agreement at rounding level,
or bit-identity where the rewrite keeps the operations (foreach optimizers, per-step weight codes).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from zsqbench.api import LossInputs, NativeLosses, TeacherModel
from zsqbench.toolkit.bn_stats import BNStatsLoss
from zsqbench.trial.build import student_sgd
from zsqbench.trial.spec import OptimSettings
from zsqbench_plugins.losses.akt import AKTLoss
from zsqbench_plugins.losses.channel import ChannelLoss
from zsqbench_plugins.losses.spatial import SpatialLoss


def _resnet20(dtype: torch.dtype = torch.float32) -> nn.Module:
    from pytorchcv.models.resnet_cifar import get_resnet_cifar

    torch.manual_seed(0)
    net = get_resnet_cifar(num_classes=10, blocks=20, bottleneck=False, model_name=None).eval().to(dtype)
    for m in net.modules():  # running statistics a trained network could have
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net


def _bns_value_and_grad(net: nn.Module, x: Tensor, fused: bool) -> tuple[Tensor, Tensor]:
    loss = BNStatsLoss(net, fused=fused)
    x = x.clone().requires_grad_(True)
    with loss.recording():
        net(x)
    value = loss.loss()
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_fused_bn_statistics_loss_equals_the_per_layer_sum(dtype):
    net = _resnet20(dtype)
    x = torch.randn(8, 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ref_value, ref_grad = _bns_value_and_grad(net, x, fused=False)
    value, grad = _bns_value_and_grad(net, x, fused=True)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert value.item() == pytest.approx(ref_value.item(), rel=rtol)
    torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=rtol * ref_grad.abs().max().item())
    assert ref_value.item() > 1.0  # not a vacuous comparison of two zeros


def test_the_fused_bn_loss_follows_statistics_that_change_and_keeps_other_family_members_per_layer():
    net = _resnet20(torch.float64)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    loss = BNStatsLoss(net, fused=True)
    with loss.recording():
        net(x)
    before = loss.loss().item()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.add_(1.0)  # the cached targets must not go stale
    with loss.recording():
        net(x)
    assert loss.loss().item() != pytest.approx(before)
    assert loss.loss.__self__._moments == []
    from zsqbench.toolkit.bn_stats import ZEROQ

    assert not BNStatsLoss(net, ZEROQ, fused=True).fused  # only the plain batch form is fused


def test_reference_kernels_switch_turns_the_fused_forms_off(monkeypatch):
    net = _resnet20()
    monkeypatch.setenv("ZSQBENCH_REFERENCE_KERNELS", "1")
    assert not BNStatsLoss(net).fused
    monkeypatch.delenv("ZSQBENCH_REFERENCE_KERNELS")
    assert BNStatsLoss(net).fused


# ---------------------------------------------------------------- attention losses, grouped maps

STAGES = {f"s{s}u{u}": (16 * 2 ** (s - 1), 32 // 2 ** (s - 1)) for s in (1, 2, 3) for u in (1, 2, 3)}
MODEL = TeacherModel(name="maps", description="", arch="maps", dataset="toy", num_classes=10, build=lambda: None,
                     weights=(), feature_taps={"default": tuple(STAGES)})


def _map_inputs(dtype: torch.dtype, batch: int = 6) -> LossInputs:
    g = torch.Generator().manual_seed(3)
    teacher = {p: torch.randn(batch, c, h, h, generator=g, dtype=dtype) for p, (c, h) in STAGES.items()}
    student = {p: (t + 0.3 * torch.randn(t.shape, generator=g, dtype=dtype)).requires_grad_(True)
               for p, t in teacher.items()}
    logits = torch.zeros(batch, 10, dtype=dtype)
    return LossInputs(logits, logits, torch.zeros(batch, dtype=torch.long), student, teacher)


def _native() -> NativeLosses:
    return NativeLosses(logit=lambda s, t, y: 0 * s.sum(), objective=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [AKTLoss, SpatialLoss, ChannelLoss])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_grouped_attention_terms_equal_the_per_map_terms(cls, reduction):
    results = {}
    for fused in (False, True):
        for dtype in (torch.float64, torch.float32):
            loss = cls(cls.Options(batch_reduction=reduction), _native(), MODEL)
            loss.fused = fused
            inputs = _map_inputs(dtype)
            terms = loss(inputs)
            grads = torch.autograd.grad(terms["total"], list(inputs.student_features.values()))
            per_map = loss.map_terms(inputs)
            results[fused, dtype] = (terms["total"].detach(), grads, per_map)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        (ref_total, ref_grads, ref_maps), (total, grads, maps) = results[False, dtype], results[True, dtype]
        assert total.item() == pytest.approx(ref_total.item(), rel=tol) and ref_total.item() > 0
        assert list(maps) == list(ref_maps) and all(list(maps[b]) == list(ref_maps[b]) for b in maps)  # path order
        for b in maps:
            for p in maps[b]:
                assert maps[b][p].item() == pytest.approx(ref_maps[b][p].item(), rel=tol)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=tol, atol=tol * r.abs().max().item())


# ---------------------------------------------------------------- optimizers


def _train(make, steps: int = 15) -> list[Tensor]:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(16, 8, 3, 3)), nn.Parameter(torch.randn(10, 64)), nn.Parameter(torch.randn(10))]
    opt = make(params)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 3
        opt.step()
    return [p.detach().clone() for p in params]


def test_foreach_student_sgd_is_bit_identical_to_the_loop():
    o = OptimSettings()
    looped = _train(lambda ps: student_sgd(ps, o, foreach=False))
    fused = _train(lambda ps: student_sgd(ps, o))
    assert all(torch.equal(a, b) for a, b in zip(looped, fused))
    assert student_sgd([nn.Parameter(torch.zeros(1))], o).defaults["foreach"] is True


def test_foreach_generator_adam_is_bit_identical_to_the_loop():
    looped = _train(lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.5, 0.999), foreach=False))
    fused = _train(lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.5, 0.999), foreach=True))
    assert all(torch.equal(a, b) for a, b in zip(looped, fused))


# ---------------------------------------------------------------- weight codes once per update


def test_weights_are_quantized_once_per_update_with_the_same_values_and_gradients(monkeypatch):
    import copy

    from zsqbench_plugins.quantizers import uniform

    torch.manual_seed(0)
    conv = uniform.QuantConv2d.from_float(nn.Conv2d(3, 4, 3), 3)
    twin = copy.deepcopy(conv)
    calls = []
    real = uniform.quantize_weight
    monkeypatch.setattr(uniform, "quantize_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 3, 8, 8)
    outs = [conv(x), conv(2 * x)]  # two uses between updates (HAST's clean and adversarial passes)
    assert len(calls) == 1
    sum(o.sum() for o in outs).backward()
    expected = [twin._conv_forward(xi, real(twin.weight, 3), twin.bias) for xi in (x, 2 * x)]
    sum(o.sum() for o in expected).backward()
    assert all(torch.equal(a, b) for a, b in zip(outs, expected))
    assert torch.equal(conv.weight.grad, twin.weight.grad)
    with torch.no_grad():
        conv.weight.mul_(1.5)  # an optimizer step: a new version of the weight
        assert not torch.equal(conv(x), outs[0]) and len(calls) == 2
        conv(x)  # no_grad: its own cached tensor (no autograd node), reused
    assert len(calls) == 2
    conv(x)
    assert len(calls) == 3  # grad mode again: not the no_grad tensor
    assert "_wq" not in copy.deepcopy(conv).__dict__



def test_an_optimizer_that_writes_through_data_still_gets_fresh_quantized_weights(tiny_parts):
    """``p.data.add_`` bypasses the version counter the cache is keyed by; every student optimizer
    gets a post-step hook (trial/build.py) that tells the quantizer, which drops its cache."""
    from conftest import make_spec

    parts = tiny_parts(make_spec("gdfq", "kd"))
    student = parts.ctx.student
    conv = next(m for m in student.modules() if hasattr(m, "quantized_weight"))
    with torch.no_grad():
        before = conv.quantized_weight().clone()
        conv.weight.data.mul_(1.5)  # what an optimizer written against .data does
        assert torch.equal(conv.quantized_weight(), before)  # unseen by the version counter...
    for p in student.parameters():
        p.grad = torch.zeros_like(p)
    parts.optimizer.step()  # ...until a step: its post-step hook drops the cache
    assert "_wq" not in conv.__dict__
    with torch.no_grad():
        torch.testing.assert_close(conv.quantized_weight(), 1.5 * before, rtol=1e-5, atol=1e-6)
