"""Grad-CAM maps and their alignment loss (docs/methods/synq.md#grad-cam-alignment) on the
specification's tiny network, whose values follow by hand: the target is a 1 x 1 identity conv (so
A = x), then global average pooling and a 2 x 2 linear layer, so ∂score_c/∂A_k = W[c, k]/4."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from zsqbench.errors import UserError
from zsqbench.toolkit.gradcam import (
    ActivationTap,
    CAMSettings,
    cam_alignment,
    cam_map,
    last_conv_path,
    minmax_normalize,
)


class Tiny(nn.Module):
    def __init__(self, fc: list[list[float]]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2)[:, :, None, None])
            self.fc.weight.copy_(torch.tensor(fc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


X = torch.tensor([[[[4.0, 2.0], [0.0, 0.0]], [[0.0, 1.0], [2.0, 1.5]]]])
TEACHER_FC = [[2.0, -1.0], [0.5, 0.5]]  # logits (1.875, 1.3125): class 0
STUDENT_FC = [[1.0, 0.0], [0.5, 2.0]]  # logits (1.5, 3.0): class 1


def align(settings: CAMSettings, label: int = 1):
    teacher, student = Tiny(TEACHER_FC), Tiny(STUDENT_FC)
    t_tap, s_tap = ActivationTap(teacher, "conv"), ActivationTap(student, "conv")
    with t_tap.active(leaf=True), s_tap.active():
        t = teacher(X)
        s = student(X)
        a_t, a_q = t_tap.take(), s_tap.take()
    result = cam_alignment(a_t, t, a_q, s, torch.tensor([label]), settings, (4, 4))
    result.loss.backward()
    return result, student


def test_code_form_maps_loss_and_gradients():
    result, student = align(CAMSettings())
    s_t = torch.tensor([[1, 0.875, 0.625, 0.5], [0.75, 0.65625, 0.46875, 0.375],
                        [0.25, 0.21875, 0.15625, 0.125], [0, 0, 0, 0]])
    s_q = torch.tensor([[0, 0.125, 0.375, 0.5], [0.25, 0.3125, 0.4375, 0.5],
                        [0.75, 0.6875, 0.5625, 0.5], [1, 0.875, 0.625, 0.5]])
    # the teacher's weights (0.5, -0.25) are clamped to (0.5, 1e-10): A_1 adds terms of order 1e-10
    assert torch.allclose(result.teacher_map[0, 0], s_t, atol=1e-9)
    assert torch.allclose(result.student_map[0, 0].detach(), s_q, atol=1e-7)
    assert result.loss.item() == pytest.approx(0.324462890625, abs=1e-7)
    expected = torch.tensor([[-0.11181640625, 0.0279541015625], [-0.447265625, 0.11181640625]])
    assert torch.allclose(student.conv.weight.grad.view(2, 2), expected, atol=1e-7)
    assert student.fc.weight.grad is None  # first order: nothing after the CAM layer learns from it


def test_weight_grad_adds_the_second_order_term_to_the_classifier_only():
    _, student = align(CAMSettings(weight_grad=True))
    assert torch.allclose(student.fc.weight.grad, torch.tensor([[0.0, 0.0], [-0.2236328125, 0.055908203125]]),
                          atol=1e-7)
    assert torch.allclose(student.conv.weight.grad.view(2, 2),
                          torch.tensor([[-0.11181640625, 0.0279541015625], [-0.447265625, 0.11181640625]]), atol=1e-7)


def test_paper_form_label_class_signed_weights_no_resize():
    result, _ = align(CAMSettings(form="paper"), label=1)
    assert torch.allclose(result.teacher_map, torch.tensor([[[[0.5, 0.375], [0.25, 0.1875]]]]))
    assert torch.allclose(result.student_map.detach(), torch.tensor([[[[0.5, 0.75], [1.0, 0.75]]]]))
    assert result.loss.item() == pytest.approx(1.01953125, abs=1e-7)


def test_the_clamp_drops_negative_channels():
    a = X.clone()
    g = torch.tensor([0.5, -0.25])[None, :, None, None].expand(1, 2, 2, 2)  # teacher class 0, before resize
    signed = F.relu((g.mean(dim=(2, 3))[:, :, None, None] * a).sum(dim=1))
    assert torch.allclose(signed[0], torch.tensor([[2.0, 0.75], [0.0, 0.0]]))
    m, _ = cam_map(a, g, CAMSettings(form="paper"), (2, 2))
    assert torch.allclose(m[0, 0], signed[0])  # paper form: signed weights
    clamped = (torch.tensor([0.5, 1e-10])[None, :, None, None] * a).sum(dim=1)
    assert torch.allclose(clamped[0], torch.tensor([[2.0, 1.0], [0.0, 0.0]]), atol=1e-9)


def test_bilinear_resize_without_aligned_corners():
    up = F.interpolate(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.equal(up[0, 0], torch.tensor([[1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5],
                                               [2.5, 2.75, 3.25, 3.5], [3, 3.25, 3.75, 4]]))


@pytest.mark.parametrize("r,expected", [(1.0, 0.5), (1e-3, 500.0), (1e-6, 5.0e5)])
def test_the_normalization_gradient_grows_as_one_over_the_range(r, expected):
    u = torch.tensor([[[[r, 0.0], [0.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]], dtype=torch.float64)
    s, _ = minmax_normalize(u, 1e-10, flat_guard=False)
    (g,) = torch.autograd.grad((s - target).pow(2).mean(), u)
    assert g.abs().max().item() == pytest.approx(expected, rel=1e-3)


def test_the_flat_guard_makes_a_constant_map_exactly_zero_without_gradient():
    u = torch.full((2, 1, 4, 4), 3.0, requires_grad=True)
    noisy = u + torch.tensor([0.0, 1e-6]).view(2, 1, 1, 1) * torch.linspace(0, 1, 16).view(1, 1, 4, 4)
    s, flat = minmax_normalize(noisy, 1e-10, flat_guard=True)
    assert torch.equal(s, torch.zeros_like(s)) and flat.tolist() == [True, True]
    (g,) = torch.autograd.grad((s - 0.5).pow(2).mean(), u)
    assert torch.equal(g, torch.zeros_like(g))
    s_off, _ = minmax_normalize(noisy, 1e-10, flat_guard=False)  # the code: rounding noise becomes [0, 1]
    assert s_off[1].max().item() == pytest.approx(1.0, abs=1e-3)


def test_a_1x1_target_gives_zero_maps_and_no_gradient_under_the_guard():
    a = torch.randn(3, 5, 1, 1, requires_grad=True)
    g = torch.zeros(3, 5, 1, 1)
    g[:, 2] = 1.0  # the gradient of the argmax score of a classifier conv: one-hot
    s, flat = cam_map(a, g, CAMSettings(flat_guard=True), (224, 224))
    assert torch.equal(s, torch.zeros_like(s)) and bool(flat.all())
    (grad,) = torch.autograd.grad(s.sum(), a)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_identities_equal_networks_and_map_range():
    teacher = Tiny(TEACHER_FC)
    student = Tiny(TEACHER_FC)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t_tap, s_tap = ActivationTap(teacher, "conv"), ActivationTap(student, "conv")
    with t_tap.active(leaf=True), s_tap.active():
        t, s = teacher(x), student(x)
        result = cam_alignment(t_tap.take(), t, s_tap.take(), s, torch.zeros(3, dtype=torch.long), CAMSettings(), (8, 8))
    assert result.loss.item() == 0.0
    # in [0, 1): the maximum is range/(range + 1e-10), which float32 rounds to 1
    assert result.student_map.min().item() == 0.0 and 1 - 1e-6 <= result.student_map.max().item() <= 1.0


def test_no_gradient_reaches_the_layers_after_the_cam_target_of_a_resnet(plugins):
    """On ResNet-20, L_CAM's gradient stops at the target conv's output: its BN, the last stage's
    remaining layers and the classifier get exactly none; the layers before it get some."""
    entry = plugins.models.get("resnet20_cifar10")
    teacher, student = entry.build().eval(), entry.build().eval()
    t_tap, s_tap = ActivationTap(teacher, entry.cam_target), ActivationTap(student, entry.cam_target)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with t_tap.active(leaf=True), s_tap.active():
        with torch.enable_grad():
            t = teacher(x)
        s = student(x)
        result = cam_alignment(t_tap.take(), t, s_tap.take(), s, torch.zeros(2, dtype=torch.long), CAMSettings(),
                               (32, 32))
    grads = dict(zip([n for n, _ in student.named_parameters()],
                     torch.autograd.grad(result.loss, list(student.parameters()), allow_unused=True)))
    after = [n for n in grads if n.startswith(("features.stage3.unit3.body.conv2.bn", "output"))]
    assert after and all(grads[n] is None for n in after)
    assert grads[f"{entry.cam_target}.weight"] is not None and grads["features.init_block.conv.weight"] is not None


def test_a_missing_target_fails_loudly():
    model = Tiny(TEACHER_FC)
    assert last_conv_path(model) == "conv"
    with pytest.raises(UserError, match="does not exist"):
        ActivationTap(model, "convv")
    tap = ActivationTap(model, "conv")
    with tap.active(), pytest.raises(RuntimeError, match="captured nothing"):
        tap.take()
