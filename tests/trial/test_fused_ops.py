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
from zsqbench.api.spec import OptimSettings
from zsqbench.toolkit.bn_stats import BNStatsLoss
from zsqbench.trial.build import student_sgd
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
@pytest.mark.parametrize("shape", [(200, 16, 32, 32), (7, 13, 5, 3)])
def test_the_one_kernel_centered_squares_give_the_two_pass_moments_bit_for_bit(dtype, shape):
    """_two_pass_moments takes d·d of d = x − mean from mse_loss's kernel: the same roundings as
    ``(x − mean).square_()``, so the moments, and every fused BN loss before it, keep their bits."""
    from zsqbench.toolkit.bn_stats import _two_pass_moments

    g = torch.Generator().manual_seed(len(shape))
    for layout in (torch.contiguous_format, torch.channels_last):
        x = (torch.randn(shape, generator=g, dtype=dtype) * 0.7 + 1.3).contiguous(memory_format=layout)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var, got_mean = _two_pass_moments(x)
        assert torch.equal(got_mean, mean)
        assert torch.equal(var, (x - mean).square_().mean(dim=(0, 2, 3)))


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

    from zsqbench_plugins.quantizers import _modules as uniform

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
    parts.optimizer.step()  # ...until a step: its post-step hook requantizes every weight
    torch.testing.assert_close(conv.quantized_weight().detach(), 1.5 * before, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(conv.quantized_weight(), 1.5 * before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weights_quantized_together_equal_each_weight_quantized_alone(dtype, bits):
    """The multi-tensor form (one operation per stage for all weights) gives each weight's
    quantize_weight bit for bit, ties on the grid included, and the same identity STE."""
    from zsqbench_plugins.quantizers._fake_quant import quantize_weight, quantize_weights_together

    g = torch.Generator().manual_seed(bits)
    shapes = [(16, 3, 3, 3), (16, 16, 3, 3), (64, 32, 1, 1), (10, 64), (8, 1, 3, 3)]
    weights = [torch.randn(s, generator=g, dtype=dtype).requires_grad_(True) for s in shapes]
    ties = torch.arange(-16, 17, dtype=dtype).div(8).repeat(16, 1).view(16, 33)  # steps of 1/8: .5 ties at 2-8 bits
    weights.append(ties.requires_grad_(True))
    weights.append(torch.full((4, 9), 0.25, dtype=dtype, requires_grad=True))  # zero range: clamped to 1e-8
    together = quantize_weights_together(weights, bits)
    alone = [quantize_weight(w, bits) for w in weights]
    for t, a in zip(together, alone):
        assert t.dtype == dtype and torch.equal(t, a)
    sum((t * (i + 1)).sum() for i, t in enumerate(together)).backward()
    for i, w in enumerate(weights):
        assert torch.equal(w.grad, torch.full_like(w, i + 1.0))  # identity STE, no clipping mask


def test_an_optimizer_step_requantizes_the_weights_for_the_next_training_forward(tiny_parts, monkeypatch):
    """The post-step hook quantizes every weight at once in the training forward's autograd mode,
    so the next forward computes none, and its values equal a per-weight quantization."""
    from conftest import make_spec

    from zsqbench_plugins.quantizers import _modules as uniform

    parts = tiny_parts(make_spec("gdfq", "kd"))
    student = parts.ctx.student
    convs = [m for m in student.modules() if isinstance(m, uniform._WeightCodesOncePerStep)]
    for p in student.parameters():
        p.grad = torch.randn_like(p)
    parts.optimizer.step()
    calls = []
    real = uniform.quantize_weight
    monkeypatch.setattr(uniform, "quantize_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    student(torch.randn(2, *parts.ctx.teacher_entry.input_size))
    assert calls == [] and all("_wq" in m.__dict__ for m in convs)
    for m in convs:
        assert torch.equal(m.quantized_weight(), real(m.weight, m.w_bits))


# ---------------------------------------------------------------- frozen activation grids


def test_a_frozen_activation_quantizer_computes_its_grid_once_with_the_same_values():
    """Once the range is frozen, S and Z are computed once per range, not at every forward: the
    output is the uncached forward's bit for bit (exact .5 ties and clamping included), in float32
    and for bf16 inputs, and a range that changes (calibration, a loaded state) is picked up."""
    from zsqbench_plugins.quantizers._fake_quant import FakeQuantSTE
    from zsqbench_plugins.quantizers._modules import QuantAct

    quant = QuantAct(4)
    quant.calibrating = False
    quant.x_min.fill_(-0.5)
    quant.x_max.fill_(2.5)  # S = 5, Z = round(-2.5) + 8 = 6: x = 0.1·k hits .5 ties
    x = torch.cat([torch.arange(-10, 40) / 10.0, torch.randn(1000) * 3]).requires_grad_(True)

    def uncached(inp: Tensor) -> Tensor:
        return FakeQuantSTE.apply(inp, quant.x_min, quant.x_max, 4)

    first = quant(x)
    assert torch.equal(first, uncached(x))
    grid = quant.__dict__["_frozen_grid"][3]
    assert quant(x * 1.0) is not None and quant.__dict__["_frozen_grid"][3] is grid  # reused, not recomputed
    first.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # the identity STE, no clipping mask

    assert torch.equal(quant(x.bfloat16()), uncached(x.bfloat16()))  # the float32 grid of a bf16 input
    quant.load_state_dict({**quant.state_dict(), "x_max": torch.tensor(1.25)})  # a loaded range
    assert torch.equal(quant(x), uncached(x)) and quant.__dict__["_frozen_grid"][3] is not grid
    quant.calibrating = True
    calibrated = quant(x)  # the range moves; the calibrating forward uses it directly
    quant.calibrating = False
    assert torch.equal(quant(x), uncached(x)) and torch.equal(calibrated, uncached(x))


# ---------------------------------------------------------------- HAST's feature alignment


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hasts_fused_feature_alignment_equals_pow_mean(dtype):
    """HAST's channel energies through the one-node mean of squares: the same value and, up to float
    rounding, the same gradient for student and (perturb_through_teacher) teacher maps as pow(2).mean."""
    from zsqbench_plugins.generators.hast import feature_alignment

    g = torch.Generator().manual_seed(3)
    shapes = {"a": (4, 16, 8, 8), "b": (4, 32, 4, 4), "c": (4, 64, 2, 2)}
    results = {}
    for fused in (False, True):
        student = {k: torch.randn(s, generator=g.manual_seed(i), dtype=dtype).requires_grad_(True)
                   for i, (k, s) in enumerate(shapes.items())}
        teacher = {k: torch.randn(s, generator=g.manual_seed(10 + i), dtype=dtype).requires_grad_(True)
                   for i, (k, s) in enumerate(shapes.items())}
        value = feature_alignment(student, teacher, tuple(shapes), fused)
        value.backward()
        results[fused] = (value.detach(), [student[k].grad for k in shapes] + [teacher[k].grad for k in shapes])
    (ref, ref_grads), (got, grads) = results[False], results[True]
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.item() == pytest.approx(ref.item(), rel=tol) and ref.item() > 0
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


def test_reference_kernels_switch_turns_hasts_fused_energies_off(monkeypatch):
    from zsqbench_plugins.generators.hast import HASTLogitLoss, HASTObjective

    monkeypatch.setenv("ZSQBENCH_REFERENCE_KERNELS", "1")
    assert not HASTObjective(HASTLogitLoss(20.0, 20.0), 1000.0, ("a",)).fused
    monkeypatch.delenv("ZSQBENCH_REFERENCE_KERNELS")
    assert HASTObjective(HASTLogitLoss(20.0, 20.0), 1000.0, ("a",)).fused
