"""The shared synthesis parts (docs/methods/common.md#shared-parts-of-the-offline-methods): the
BN-statistics loss family on hand-computed values, the pixel-synthesis engine, and the range
estimators of the uniform quantizer (uniform.md#range-estimators-for-post-training-quantization).
Expected values are plain torch formulas written out here, never the implementation's helpers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from zsqbench.toolkit.bn_stats import BATCH_MSE, ZEROQ, BNLossConfig, BNStatsLoss, batch_moments, sample_moments
from zsqbench.toolkit.synthesis import PixelSchedule, SynthesisView, bn_term, optimize_pixels
from zsqbench_plugins.quantizers._modules import QuantAct
from zsqbench_plugins.quantizers.uniform import UniformOptions, UniformQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_net(channels=(3, 4, 5), seed: int = 0) -> nn.Sequential:
    """conv -> BN -> ReLU twice, with random (trained-looking) running statistics."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels, channels[1:]):
        bn = nn.BatchNorm2d(c_out)
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), bn, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def bns_of(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def feed(loss: BNStatsLoss, net: nn.Module, inputs: list[torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
    """Record the BNs on hand-made inputs (the BN-input tensors themselves, not through the network)."""
    with loss.recording():
        for bn, z in zip(bns_of(net), inputs):
            bn(z)
    return loss.loss(x)


# ------------------------------------------------------------------- the BN-statistics family


def test_golden_values_with_zero_bn_inputs():
    net = bn_net()
    zeros = [torch.zeros(2, bn.num_features, 4, 4) for bn in bns_of(net)]
    mu = [bn.running_mean for bn in bns_of(net)]
    var = [bn.running_var for bn in bns_of(net)]
    # zeroq: Σ_l [‖μ̂_l‖² + ‖ŝ_l − 1e-3‖²] + 3·(1 − 1e-3)², since sqrt(0 + 1e-6) = 1e-3
    expected = sum((m ** 2).sum() + ((v + 1e-6).sqrt() - 1e-3).pow(2).sum() for m, v in zip(mu, var)).item()
    expected += 3 * (1 - 1e-3) ** 2
    got = feed(BNStatsLoss(net, ZEROQ), net, zeros, torch.zeros(2, 3, 4, 4)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert 3 * (1 - 1e-3) ** 2 == pytest.approx(2.994003, abs=1e-6)  # the input term alone
    # batch_mse: (1/L) Σ_l [mean_c μ̂² + mean_c v̂²]
    expected = sum((m ** 2).mean() + (v ** 2).mean() for m, v in zip(mu, var)).item() / 2
    assert feed(BNStatsLoss(net, BATCH_MSE), net, zeros).item() == pytest.approx(expected, rel=1e-6)


def test_random_inputs_against_hand_computed_moments():
    net = bn_net()
    torch.manual_seed(3)
    zs = [torch.randn(3, bn.num_features, 4, 5) * 2 + 1 for bn in bns_of(net)]
    x = torch.randn(3, 3, 4, 5)

    def per_sample(z, mu, var, eps=1e-6):
        n = z.shape[2] * z.shape[3]
        m = z.sum(dim=(2, 3)) / n
        s = (((z - m[:, :, None, None]) ** 2).sum(dim=(2, 3)) / (n - 1) + eps).sqrt()
        target = (var + eps).sqrt()
        return (((m - mu) ** 2).sum(dim=1) + ((s - target) ** 2).sum(dim=1)).mean()

    bns = bns_of(net)
    expected = sum(per_sample(z, bn.running_mean, bn.running_var) for z, bn in zip(zs, bns))
    expected = expected + per_sample(x, torch.zeros(3), torch.ones(3) - 1e-6)  # input term: std target exactly 1
    assert feed(BNStatsLoss(net, ZEROQ), net, zs, x).item() == pytest.approx(expected.item(), rel=1e-5)

    def batch(z, mu, var):
        n = z.numel() / z.shape[1]
        m = z.sum(dim=(0, 2, 3)) / n
        v = ((z - m[None, :, None, None]) ** 2).sum(dim=(0, 2, 3)) / n  # biased
        return ((m - mu) ** 2).sum() + ((v - var) ** 2).sum()

    expected = sum(batch(z, bn.running_mean, bn.running_var) for z, bn in zip(zs, bns))
    summed = BNLossConfig(reduce_channels="sum", reduce_layers="sum")
    assert feed(BNStatsLoss(net, summed), net, zs).item() == pytest.approx(expected.item(), rel=1e-5)


def test_unbiased_versus_biased_variance_on_a_two_by_two_map():
    z = torch.tensor([[0.0, 2.0], [0.0, 2.0]]).view(1, 1, 2, 2)
    _, std = sample_moments(z, 1e-6)
    assert std.item() ** 2 == pytest.approx(4 / 3 + 1e-6, rel=1e-6)
    var, mean = batch_moments(z)
    assert (var.item(), mean.item()) == pytest.approx((1.0, 1.0))


def test_slack_is_zero_inside_the_margin_and_plain_without_it():
    net = bn_net((3, 4))
    (bn,) = bns_of(net)
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - 1e-6)  # ŝ = 1 exactly
    z = torch.zeros(1, 4, 2, 2)
    z[0, :, 0, 0] = 0.4  # every channel: mean 0.1, unbiased var 0.04, std sqrt(0.04 + 1e-6)
    s = math.sqrt(0.04 + 1e-6)
    plain = 4 * (0.1 ** 2 + (s - 1) ** 2)
    sample = BNLossConfig(granularity="sample", reduce_channels="sum", reduce_layers="sum")
    assert feed(BNStatsLoss(net, sample), net, [z]).item() == pytest.approx(plain, rel=1e-5)
    zero_margin = BNLossConfig(granularity="sample", reduce_channels="sum", reduce_layers="sum",
                               mean_margin=0.0, second_margin=(0.0,))
    assert feed(BNStatsLoss(net, zero_margin), net, [z]).item() == pytest.approx(plain, rel=1e-5)
    inside = BNLossConfig(granularity="sample", reduce_channels="sum", reduce_layers="sum",
                          mean_margin=0.2, second_margin=(1.0,))
    assert feed(BNStatsLoss(net, inside), net, [z]).item() == 0.0
    partly = BNLossConfig(granularity="sample", reduce_channels="sum", reduce_layers="sum",
                          mean_margin=0.05, second_margin=0.5)
    assert feed(BNStatsLoss(net, partly), net, [z]).item() == pytest.approx(4 * (0.05 ** 2 + (1 - s - 0.5) ** 2),
                                                                             rel=1e-5)


def test_input_term_needs_the_input():
    net = bn_net((3, 4))
    with pytest.raises(RuntimeError, match="input term"):
        feed(BNStatsLoss(net, ZEROQ), net, [torch.zeros(1, 4, 2, 2)])


# ---------------------------------------------------------------------------------- the engine


def test_engine_moves_only_the_pixels_in_term_order_and_keeps_the_rng():
    net = nn.Sequential(bn_net(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()
    params_before = [p.detach().clone() for p in net.parameters()]
    x0 = torch.randn(4, 3, 6, 6)
    seen: list[str] = []

    def mean_term(view: SynthesisView) -> torch.Tensor:
        seen.append("mean")
        assert view.x_aug is view.x  # no augmentation configured
        return view.x.mean().pow(2)

    calls = []

    def augment(x):
        calls.append(1)
        return x.flip(-1)

    state = torch.get_rng_state()
    done = optimize_pixels(net, x0, {"mean": mean_term, "bn": bn_term}, PixelSchedule(iters=5, lr=0.1, patience=2),
                           BNStatsLoss(net))
    assert seen == ["mean"] * 5 and not torch.equal(done.x, x0) and not done.x.requires_grad
    assert all(p.grad is None and torch.equal(p, b) for p, b in zip(net.parameters(), params_before))
    assert set(done.first) == {"mean", "bn", "total"}
    assert done.first["total"] == pytest.approx(done.first["mean"] + done.first["bn"], rel=1e-6)
    assert done.last["bn"] < done.first["bn"]  # the BN loss falls
    never = optimize_pixels(net, x0, {"bn": bn_term}, PixelSchedule(iters=3, lr=0.1, patience=2, augment_p=0.0),
                            BNStatsLoss(net), augment=augment, augment_seed=1)
    always = optimize_pixels(net, x0, {"bn": bn_term}, PixelSchedule(iters=3, lr=0.1, patience=2, augment_p=1.0),
                             BNStatsLoss(net), augment=augment, augment_seed=1)
    assert len(calls) == 3 and not torch.equal(never.x, always.x)
    assert torch.equal(torch.get_rng_state(), state)  # synthesis never draws from the trial's stream
    with pytest.raises(ValueError, match="augment_seed"):
        optimize_pixels(net, x0, {"bn": bn_term}, PixelSchedule(iters=1, lr=0.1, patience=2), BNStatsLoss(net),
                        augment=augment)


def test_plateau_lowers_the_lr_after_patience_on_a_flat_loss():
    net = bn_net((3, 4))
    lrs = []
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    flat = {"flat": lambda view: view.x.sum() * 0 + 1.0}
    torch.optim.Adam.step = spy
    try:
        optimize_pixels(net, torch.randn(1, 3, 4, 4), flat, PixelSchedule(iters=6, lr=0.5, patience=2),
                        BNStatsLoss(net))
    finally:
        torch.optim.Adam.step = original
    # mode min, threshold 1e-4: the first value is the best, then 2 bad iterations are tolerated
    assert lrs == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.05, 0.05])


# ------------------------------------------------------------------------- range estimators


def quant_act(tracking: str) -> QuantAct:
    return QuantAct(bits=4, tracking=tracking)


def test_minmax_is_a_running_min_max_from_zero():
    act = quant_act("minmax")
    act(torch.tensor([[1.0, 2.0]]))
    assert (act.x_min.item(), act.x_max.item()) == (0.0, 2.0)  # starts from 0: a positive batch keeps x_min 0
    act(torch.tensor([[-1.0, 1.5]]))
    act(torch.tensor([[0.5, 3.0]]))
    assert (act.x_min.item(), act.x_max.item()) == (-1.0, 3.0)


def test_sample_mean_max_takes_the_mean_of_each_samples_extremes():
    act = quant_act("sample_mean_max")
    act(torch.tensor([[1.0, 4.0], [-2.0, 2.0]]))  # maxes 4, 2 -> 3; mins 1, -2 -> -0.5
    assert (act.x_min.item(), act.x_max.item()) == (-0.5, 3.0)
    act(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # mean max 1 < 3, mean min 0 > -0.5: unchanged
    assert (act.x_min.item(), act.x_max.item()) == (-0.5, 3.0)
    act(torch.tensor([[-3.0, 5.0], [-1.0, 5.0]]))
    assert (act.x_min.item(), act.x_max.item()) == (-2.0, 5.0)


def test_one_calibration_forward_gives_the_same_range_with_exact_and_minmax():
    """The first update of the exact recurrence is (0.9·0 + 0.1·b)/(1 − 0.9) = b (up to rounding), and
    minmax from 0 keeps b_min = 0 after a ReLU: one forward calibrates ZeroQ's range with either."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(6, 8, 5, 5) * 3)
    ranges = {}
    for tracking in ("exact", "minmax"):
        act = quant_act(tracking)
        act(x)
        ranges[tracking] = (act.x_min.item(), act.x_max.item())
    assert ranges["minmax"] == (0.0, x.max().item())
    assert ranges["exact"] == pytest.approx(ranges["minmax"], rel=1e-6)
    act = quant_act("exact")
    act(x)
    act(x)  # a second forward already inflates the exact range (uniform.md#activation-range-tracking, S1)
    assert act.x_max.item() > 1.5 * x.max().item()


def test_minmax_first_range_is_the_max_relu_of_the_init_block_over_all_batches(plugins):
    teacher = plugins.models.get("resnet20_cifar10").build().eval()
    quantizer = UniformQuantizer(UniformOptions(range_tracking="minmax"))
    student = quantizer.quantize(copy.deepcopy(teacher), 4, 4).eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32) * 2]
    with quantizer.calibrating(student, True), torch.no_grad():
        for b in batches:
            student(b)
    block = student.features.init_block
    with torch.no_grad():  # recomputed independently: the quantized conv, its BN, a ReLU
        expected = max(torch.relu(block.bn(block.conv(b))).max().item() for b in batches)
    assert block.activ.quant.x_max.item() == pytest.approx(expected, rel=1e-6)
    assert block.activ.quant.x_min.item() == 0.0


def test_default_range_tracking_is_unchanged():
    assert UniformOptions().range_tracking == "exact"
    assert "range_tracking" in UniformOptions().model_dump()


# ------------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("form", ["random_resized_crop_flip", "batched_random_resized_crop_flip"])
def test_the_crop_inside_a_compiled_step_draws_like_eager_and_never_recompiles(form):
    """The crop boxes are Python numbers drawn per image: traced, every batch would be a new graph (HAST's
    compiled step recompiled until torch.compile's limit). Both forms run eagerly inside a compiled function:
    no recompilation over batches with other boxes, and the same images as eager from the same seed."""
    import torch._dynamo

    from zsqbench.toolkit import augment

    crop = getattr(augment, form)
    x = torch.randn(4, 3, 32, 32)
    torch._dynamo.reset()
    step = torch.compile(lambda images: crop(images, scale=(0.3, 1.0)) * 2.0, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(4):
            torch.manual_seed(seed)
            compiled = step(x)
            torch.manual_seed(seed)
            assert torch.equal(compiled, crop(x, scale=(0.3, 1.0)) * 2.0)
    torch._dynamo.reset()


def test_batched_crop_matches_the_per_image_loop_and_has_gradients():
    from zsqbench.toolkit.augment import batched_random_resized_crop_flip, random_resized_crop_flip

    x = torch.randn(16, 3, 32, 32, requires_grad=True)
    torch.manual_seed(5)
    loop = random_resized_crop_flip(x, scale=(0.3, 1.0))
    torch.manual_seed(5)
    batched = batched_random_resized_crop_flip(x, scale=(0.3, 1.0))
    assert torch.allclose(batched, loop, atol=1e-5)
    (grad,) = torch.autograd.grad(batched.square().sum(), x)
    (expected,) = torch.autograd.grad(loop.square().sum(), x)
    assert torch.allclose(grad, expected, atol=1e-4)
    small = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    torch.manual_seed(1)
    full = batched_random_resized_crop_flip(small, size=4, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.equal(full, small)  # a full-size crop without flip is the identity
    from zsqbench.toolkit.augment import crop_flip

    torch.manual_seed(5)
    assert torch.equal(crop_flip(x.detach(), scale=(0.3, 1.0)), loop.detach())  # the CPU takes the loop
