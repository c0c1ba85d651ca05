"""The uniform quantizer against hand-computed values (docs/methods/uniform.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zsqbench_plugins.quantizers._fake_quant import fake_quantize, quantize_weight
from zsqbench_plugins.quantizers._modules import QuantAct, QuantConv2d, QuantizedActivation, QuantLinear
from zsqbench_plugins.quantizers.uniform import UniformOptions, UniformQuantizer


def test_grid_and_clamping_unit_range():
    # k=2, [0, 3]: n=3, S=1, Z=round(0)+2=2, q=clamp(round(x-2), -2, 1), x̂=q+2
    x = torch.tensor([-1.0, 0.4, 1.5, 2.5, 3.0, 5.0])
    # x-2 = [-3, -1.6, -0.5, 0.5, 1, 3] -> round-half-even [-3, -2, -0, 0, 1, 3] -> clamp [-2,-2,0,0,1,1]
    expected = torch.tensor([0.0, 0.0, 2.0, 2.0, 3.0, 3.0])
    got = fake_quantize(x, torch.tensor(0.0), torch.tensor(3.0), 2)
    assert torch.equal(got, expected)


def test_signed_order_with_negative_minimum():
    # k=3, [-1, 1]: n=7, S=3.5, Z=round(-3.5)+4 = -4+4 = 0 (half to even), q=clamp(round(3.5x), -4, 3)
    x = torch.tensor([-1.0, -0.3, 0.2, 1.0])
    # 3.5x = [-3.5, -1.05, 0.7, 3.5] -> round [-4, -1, 1, 4] -> clamp [-4, -1, 1, 3] -> /3.5
    expected = torch.tensor([-4.0, -1.0, 1.0, 3.0]) / 3.5
    got = fake_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), 3)
    assert torch.allclose(got, expected, atol=1e-7)


def test_degenerate_range_does_not_divide_by_zero():
    got = fake_quantize(torch.tensor([0.5, 0.5]), torch.tensor(0.5), torch.tensor(0.5), 4)
    assert torch.isfinite(got).all()


def test_weight_ranges_are_per_output_channel():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-8.0, -4.0, 0.0, 6.0]]).view(2, 1, 2, 2)
    q = quantize_weight(w, 2).view(2, 4)
    # channel 0: [0,3] at 2 bits is exactly representable
    assert torch.equal(q[0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    # channel 1: [-8, 6], n=3, S=3/14, Z=round(-12/7)+2 = -2+2 = 0, grid = multiples of 14/3
    step = 14.0 / 3.0
    expected = torch.tensor([-2.0, -1.0, 0.0, 1.0]) * step  # -8->-1.714->-2, -4->-0.857->-1, 0, 6->1.286->1
    assert torch.allclose(q[1], expected, atol=1e-6)


def test_ste_passes_gradient_unchanged_even_where_clipped():
    act = QuantAct(bits=2)
    act.x_min.fill_(0.0)
    act.x_max.fill_(1.0)
    act.calibrating = False
    x = torch.tensor([-5.0, 0.2, 0.7, 9.0], requires_grad=True)
    y = act(x)
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_weight_ste_gradient_is_the_gradient_at_the_quantized_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    qconv = QuantConv2d.from_float(conv, 3)
    x = torch.randn(2, 3, 5, 5)
    qconv(x).square().sum().backward()
    ref = nn.Conv2d(3, 4, 3, bias=False)
    ref.weight.data.copy_(quantize_weight(conv.weight.detach(), 3))
    ref(x).square().sum().backward()
    assert torch.allclose(qconv.weight.grad, ref.weight.grad, atol=1e-5)


def test_exact_range_recurrence_first_values_and_peak():
    act = QuantAct(bits=4, tracking="exact")
    batch = torch.tensor([0.0, 0.5, 1.0])  # batch min 0, max 1
    values = []
    for _ in range(200):
        act(batch)
        values.append(act.x_max.item())
    # x_max_k = (0.9 x_max_{k-1} + 0.1) / (1 - 0.9^k)
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(1.0 / 0.19, rel=1e-5)  # 5.263
    assert values[2] == pytest.approx((0.9 / 0.19 + 0.1) / 0.271, rel=1e-5)  # 17.85
    peak = max(values)
    assert values.index(peak) == 20  # the 21st update
    assert peak == pytest.approx(3945, rel=2e-3)
    assert values[99] == pytest.approx(3.6, rel=0.05)
    assert values[199] == pytest.approx(1.0, abs=1e-3)
    assert act.x_min.item() == 0.0


def test_plain_ema_initializes_from_first_batch():
    act = QuantAct(bits=4, tracking="ema")
    act(torch.tensor([0.0, 2.0]))
    assert act.x_max.item() == pytest.approx(2.0)
    act(torch.tensor([0.0, 4.0]))
    assert act.x_max.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


def test_frozen_ranges_do_not_move():
    act = QuantAct(bits=4)
    act(torch.tensor([0.0, 1.0]))
    act.calibrating = False
    before = act.x_max.clone()
    act(torch.tensor([0.0, 100.0]))
    assert torch.equal(act.x_max, before)


def test_resnet20_student_structure(plugins):
    teacher = plugins.models.get("resnet20_cifar10").build().eval()
    quantizer = UniformQuantizer(UniformOptions())
    student = quantizer.quantize(copy.deepcopy(teacher), 3, 3)
    modules = dict(student.named_modules())
    assert sum(isinstance(m, QuantAct) for m in modules.values()) == 19
    assert sum(isinstance(m, QuantConv2d) for m in modules.values()) == 21
    assert sum(isinstance(m, QuantLinear) for m in modules.values()) == 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in modules.values()) == 21
    # FP module names survive, so taps address teacher and student alike
    for s in (1, 2, 3):
        for u in (1, 2, 3):
            assert f"features.stage{s}.unit{u}.body" in modules
    assert isinstance(modules["features.init_block.activ"], QuantizedActivation)
    assert set(teacher.state_dict()) <= set(student.state_dict())
    # the input is not quantized; the first conv's weights are
    assert isinstance(modules["features.init_block.conv"], QuantConv2d)


def test_calibration_switch_reaches_every_activation_quantizer(plugins):
    teacher = plugins.models.get("resnet20_cifar10").build().eval()
    quantizer = UniformQuantizer(UniformOptions())
    student = quantizer.quantize(copy.deepcopy(teacher), 4, 4).eval()
    student(torch.randn(2, 3, 32, 32))
    quantizer.set_calibrating(student, False)
    ranges = [m.x_max.clone() for m in student.modules() if isinstance(m, QuantAct)]
    student(torch.randn(2, 3, 32, 32) * 10)
    assert all(torch.equal(a, m.x_max) for a, m in zip(ranges, (m for m in student.modules() if isinstance(m, QuantAct))))
    assert all(r.item() > 0 for r in ranges)


def test_calibration_state_is_read_and_restored_through_the_quantizer(plugins):
    teacher = plugins.models.get("resnet20_cifar10").build().eval()
    quantizer = UniformQuantizer(UniformOptions())
    student = quantizer.quantize(copy.deepcopy(teacher), 4, 4).eval()
    assert quantizer.is_calibrating(student)  # a fresh student tracks its ranges
    with quantizer.calibrating(student, False):
        assert not quantizer.is_calibrating(student)
        assert not any(m.calibrating for m in student.modules() if isinstance(m, QuantAct))
    assert quantizer.is_calibrating(student)  # the previous state comes back
    quantizer.set_calibrating(student, False)
    with quantizer.calibrating(student, True):
        assert quantizer.is_calibrating(student)
    assert not quantizer.is_calibrating(student)
    next(m for m in student.modules() if isinstance(m, QuantAct)).calibrating = True
    with pytest.raises(RuntimeError, match="disagree"):
        quantizer.is_calibrating(student)


# ---------------------------------------------------------------- where the activations are


class _SharedReLU(nn.Module):
    """torchvision's BasicBlock pattern: one ReLU module called after the conv and after the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Linear(3, 10)

    def forward(self, x):
        x = self.relu(self.conv(x)) + x
        return self.fc(self.relu(x).mean((2, 3)))


class _FunctionalReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(self.relu(torch.relu(self.conv(x)) + x).mean((2, 3)))


class _Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it, so nothing can be checked."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Linear(3, 10)

    def forward(self, x):
        y = self.relu(self.conv(x))
        return self.fc((y if y.sum() > 0 else x).mean((2, 3)))


@pytest.mark.parametrize("profile", ["zsq-asym-pc", "ort-int8"])
@pytest.mark.parametrize("model, needle", [
    (_SharedReLU, "_SharedReLU calls its activation module 'relu' at 2 places of its forward"),
    (_FunctionalReLU, "_FunctionalReLU applies ReLU as a function at 1 place(s) of its forward (first: "
                      "test_quantizer.py:"),
])
def test_a_relu_module_called_twice_or_a_functional_relu_is_refused_in_one_line(model, needle, profile):
    """One quantizer for two tensors would track one range for both; a functional ReLU would stay in float
    while the student is reported as W4A4. Both were quantized silently before."""
    from zsqbench.errors import UserError

    quantizer = UniformQuantizer(UniformOptions(profile=profile))
    with pytest.raises(UserError) as refused:
        quantizer.quantize(model(), 4, 4)
    message = str(refused.value)
    assert needle in message and "\n" not in message and "nn.ReLU" in message


def test_models_with_one_relu_module_per_place_and_untraceable_ones_are_quantized():
    from torchvision.models import resnet18

    from zsqbench_plugins.models.torchvision_resnet import build_resnet18_tv

    quantizer = UniformQuantizer(UniformOptions())
    student = quantizer.quantize(build_resnet18_tv(), 4, 4)  # torchvision's blocks with split ReLUs
    assert sum(isinstance(m, QuantizedActivation) for m in student.modules()) == 17
    untraceable = quantizer.quantize(_Untraceable(), 4, 4)
    assert isinstance(untraceable.relu, QuantizedActivation)
    with pytest.raises(Exception, match="layer1.0.relu' at 2 places"):
        quantizer.quantize(resnet18(), 4, 4)  # torchvision's own BasicBlock
