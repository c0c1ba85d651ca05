"""The uniform quantizer's profiles (docs/methods/uniform.md#profiles): which layers each one
quantizes at which bit-width, the symmetric grid on hand values, and that the default profile is
the quantizer as it always was (its trial ids and numbers unchanged)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zsqbench.api.options import fill_options
from zsqbench_plugins.quantizers import _fake_quant
from zsqbench_plugins.quantizers._fake_quant import quantize_weight, quantize_weight_symmetric, symmetric_weight_grid
from zsqbench_plugins.quantizers._modules import QuantAct, QuantConv2d, QuantLinear
from zsqbench_plugins.quantizers.profiles import DEFAULT_PROFILE, PROFILES
from zsqbench_plugins.quantizers.uniform import UniformOptions, UniformQuantizer


def _student(plugins, profile: str, bits: int = 3, model: str = "resnet20_cifar10") -> tuple[UniformQuantizer, nn.Module]:
    quantizer = UniformQuantizer(UniformOptions(profile=profile))
    teacher = plugins.models.get(model).build().eval()
    return quantizer, quantizer.quantize(copy.deepcopy(teacher), bits, bits).eval()


def _weight_bits(student: nn.Module) -> dict[str, int]:
    return {n: m.w_bits for n, m in student.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def _act_bits(student: nn.Module) -> dict[str, int]:
    return {n: m.a_bits for n, m in student.named_modules() if isinstance(m, QuantAct)}


def test_the_default_profile_stays_out_of_the_options_and_the_others_are_in_them():
    assert "profile" not in fill_options(UniformQuantizer, {}, "quantizer", "uniform")
    assert "profile" not in fill_options(UniformQuantizer, {"profile": DEFAULT_PROFILE}, "quantizer", "uniform")
    for name in ("first-last-8bit", "sym-pc"):
        assert fill_options(UniformQuantizer, {"profile": name}, "quantizer", "uniform")["profile"] == name
    assert set(PROFILES) == {"zsq-asym-pc", "first-last-8bit", "sym-pc", "ort-int8", "ort-int4w"}
    assert all(p.version >= 1 for p in PROFILES.values())


def test_the_default_profile_quantizes_every_layer_at_the_trials_bits(plugins):
    _, student = _student(plugins, DEFAULT_PROFILE)
    assert set(_weight_bits(student).values()) == {3} and len(_weight_bits(student)) == 22
    assert set(_act_bits(student).values()) == {3} and len(_act_bits(student)) == 19
    assert not any(m.w_symmetric for m in student.modules() if isinstance(m, (QuantConv2d, QuantLinear)))


def test_first_last_8bit_keeps_the_first_conv_the_classifier_and_its_input_at_8_bits(plugins):
    _, student = _student(plugins, "first-last-8bit")
    weights, acts = _weight_bits(student), _act_bits(student)
    assert weights.pop("features.init_block.conv") == 8 and weights.pop("output") == 8
    assert set(weights.values()) == {3} and len(weights) == 20
    # the last activation quantizer is the one whose (pooled) output the classifier reads
    assert acts.pop("features.stage3.unit3.activ.quant") == 8
    assert set(acts.values()) == {3} and len(acts) == 18


def test_first_last_8bit_forward_uses_the_8_bit_grids(plugins):
    quantizer, student = _student(plugins, "first-last-8bit")
    first = dict(student.named_modules())["features.init_block.conv"]
    levels = first.quantized_weight().detach().flatten(1)[0].unique().numel()
    assert 8 < levels <= 256  # more than a 3-bit grid holds
    student(torch.randn(2, 3, 32, 32))
    quantizer.set_calibrating(student, False)
    grids = {layer.path: layer.grid.bits for layer in quantizer.integer_layers(student)}
    assert grids["features.init_block.conv"] == grids["output"] == grids["features.stage3.unit3.activ.quant"] == 8
    assert grids["features.stage1.unit1.body.conv1.conv"] == 3


def test_symmetric_grid_on_hand_values():
    # 3 bits: max|w| = 2, S = (4 - 1) / 2 = 1.5, Z = 0, q = clamp(round(1.5 w), -4, 3) = round(1.5 w) here
    w = torch.tensor([[-2.0, 0.5, 1.0, 1.5], [0.0, 0.0, 0.3, -0.6]]).view(2, 1, 2, 2)
    q = quantize_weight_symmetric(w, 3).view(2, 4)
    # 1.5 w = [-3, 0.75, 1.5, 2.25] -> round half to even [-3, 1, 2, 2] -> / 1.5
    assert torch.allclose(q[0], torch.tensor([-3.0, 1.0, 2.0, 2.0]) / 1.5, atol=1e-7)
    # row 2: max|w| = 0.6, S = 5, 5 w = [0, 0, 1.5, -3] -> [0, 0, 2, -3] -> / 5
    assert torch.allclose(q[1], torch.tensor([0.0, 0.0, 2.0, -3.0]) / 5, atol=1e-7)
    codes, scale, zero = symmetric_weight_grid(w, 3)
    assert torch.equal(zero, torch.zeros(2)) and torch.allclose(scale, torch.tensor([1.5, 5.0]))
    assert codes.view(2, 4).tolist() == [[-3, 1, 2, 2], [0, 0, 2, -3]]
    # the largest magnitude lands on ±(2^(k−1) − 1); -2^(k−1) is never used
    assert torch.equal(quantize_weight_symmetric(torch.tensor([[-1.0, 1.0]]), 3), torch.tensor([[-1.0, 1.0]]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_symmetric_weights_fused_reference_codes_and_export_agree(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 8, 3, 3, generator=g).requires_grad_(True)
    fused = quantize_weight_symmetric(w, bits)
    with _fake_quant.reference_ste():
        reference = quantize_weight_symmetric(w, bits)
    assert torch.equal(fused, reference)
    codes, scale, zero = symmetric_weight_grid(w, bits)
    assert codes.abs().max().item() == 2 ** (bits - 1) - 1  # each row's extreme reaches the end of the grid
    assert torch.equal(((codes + zero.view(-1, 1, 1, 1)) / scale.view(-1, 1, 1, 1)).float(), fused.detach())
    quantizer = UniformQuantizer(UniformOptions(profile="sym-pc"))
    assert torch.equal(quantizer.weight_codes(w, bits), codes.float())
    stacked = torch.stack([w.detach(), 2 * w.detach()])
    assert torch.equal(quantizer.weight_codes(stacked, bits, stacked=True)[1], quantizer.weight_codes(2 * w, bits))
    (fused * 3).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))  # identity STE, as the asymmetric grid


def test_sym_pc_quantizes_weights_symmetrically_and_activations_as_before(plugins):
    quantizer, student = _student(plugins, "sym-pc")
    layers = [m for m in student.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 22 and all(m.w_symmetric for m in layers)
    assert set(_act_bits(student).values()) == {3}
    conv = dict(student.named_modules())["features.stage2.unit1.body.conv1.conv"]
    assert torch.equal(conv.quantized_weight(), quantize_weight_symmetric(conv.weight, 3))
    assert not torch.equal(conv.quantized_weight(), quantize_weight(conv.weight, 3))
    student(torch.randn(2, 3, 32, 32))
    quantizer.set_calibrating(student, False)
    weights = [layer for layer in quantizer.integer_layers(student) if hasattr(layer, "codes")]
    assert all(torch.equal(layer.grid.zero, torch.zeros_like(layer.grid.zero)) for layer in weights)


def test_symmetric_weights_are_requantized_after_each_step(plugins):
    """The once-per-update cache serves symmetric weights too (left to the forward, not batched)."""
    quantizer, student = _student(plugins, "sym-pc")
    conv = dict(student.named_modules())["output"]
    before = conv.quantized_weight().detach().clone()
    with torch.no_grad():
        conv.weight.mul_(2.0)
    quantizer.weights_updated(student)
    torch.testing.assert_close(conv.quantized_weight().detach(), 2 * before)


def test_every_profile_describes_what_it_quantizes():
    for name, profile in PROFILES.items():
        described = UniformQuantizer.describe_protocol({"profile": name} if name != DEFAULT_PROFILE else {})
        assert described["profile"] == name and described["version"] == profile.version
        assert described["activations_static"] is True and described["weight_granularity"] == "per-channel"
    assert UniformQuantizer.describe_protocol({})["first_last_bits"] is None
    assert UniformQuantizer.describe_protocol({"profile": "first-last-8bit"})["first_last_bits"] == 8
    assert "8 bits" in UniformQuantizer.describe_protocol({"profile": "first-last-8bit"})["quantized_layers"]
    assert UniformQuantizer.describe_protocol({"profile": "sym-pc"})["weight_symmetric"] is True
    assert UniformQuantizer.describe_protocol({"range_tracking": "minmax"})["activation_range"] == "minmax"


def test_the_leaderboards_default_profile_is_the_quantizers():
    from zsqbench.runs.result_file import DEFAULT_PROFILE as LEADERBOARD_DEFAULT

    assert LEADERBOARD_DEFAULT == DEFAULT_PROFILE


@pytest.mark.parametrize("model", ["resnet18_tv_imagenet", "mobilenetv2_w1_imagenet"])
def test_first_last_8bit_on_imagenet_teachers_picks_the_stem_and_the_classifier(plugins, model):
    _, student = _student(plugins, "first-last-8bit", 4, model)
    weights, acts = _weight_bits(student), _act_bits(student)
    eight = sorted(n for n, b in weights.items() if b == 8)
    first, last = list(weights)[0], list(weights)[-1]
    assert eight == sorted([first, last]) and last in ("fc", "output")
    assert [n for n, b in acts.items() if b == 8] == [list(acts)[-1]]
    assert list(acts)[-1] in ("layer4.1.relu2.quant", "features.final_block.activ.quant")
