"""Grad-CAM maps of a teacher and a student at one declared layer, and the loss that aligns them
(docs/methods/synq.md#grad-cam-alignment): SynQ's CAM term, usable by any method.

A map comes from the layer's output A (B, K, h, w) and the gradient G of a class score with
respect to A. The gradient is first order: the score's gradient is taken without a graph of its
own (``create_graph`` only with ``weight_grad``), so the channel weights are constants and the
loss reaches the student only through A, i.e. through the layer and everything before it. The
layers after it (its BN, the rest of the network, the classifier) get no gradient from the term.
Because the score only depends on A through the network's tail, the gradient costs a backward
through that tail, not through the whole network.

Two forms (the same steps; the code's form is SynQ's released code, the paper's its Eq. 5):

=============  ===========================================  =====================================
step           ``code``                                     ``paper``
=============  ===========================================  =====================================
class          each network's own argmax                    the sample's label
weights w_k    max(mean_hw G_k, 1e-10): negative dropped    mean_hw G_k, signed
map            ReLU(Σ_k w_k·A_k), bilinearly resized to     ReLU(Σ_k w_k·A_k) at the layer's size
               the input (align_corners False), min–max
               normalized per sample (eps 1e-10)
distance       mean over B·H·W of (S_T − S_Q)²              Σ_hw (S_T − S_Q)², mean over samples
=============  ===========================================  =====================================

The released code also nudges exact zeros of G by 1e-10 before the mean; the clamp of the
weights at 1e-10 absorbs that, up to differences of order 1e-10.

Numerics: the min–max normalization divides by the map's range plus eps, so its gradient grows as
1/range (500 at a range of 1e-3, 5e5 at 1e-6). ``flat_guard`` treats a map whose range is below
1e-6·max|U| + 1e-12 as constant: it becomes exactly 0 with no gradient. A 1 × 1 target (a
classifier conv) gives such maps: constant in exact arithmetic, rounding noise in float32.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.errors import UserError

CamForm = Literal["code", "paper"]
#: Smallest channel weight of the code's form (negative mean gradients are clamped up to it).
WEIGHT_FLOOR = 1e-10


@dataclass(frozen=True)
class CAMSettings:
    """How the maps are made and compared (see the module docstring)."""

    form: CamForm = "code"
    norm_eps: float = 1e-10
    flat_guard: bool = False
    weight_grad: bool = False


def last_conv_path(model: nn.Module) -> str:
    """The last ``nn.Conv2d`` in registration order: the layer SynQ's code takes whatever it is told
    (on MobileNetV2 that is the 1 × 1 classifier conv, whose maps are degenerate)."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("the model has no Conv2d layer for a Grad-CAM target; declare cam_target in its model plugin")
    return convs[-1]


class ActivationTap:
    """A forward hook on one module, for the Grad-CAM layer: the output of the latest forward, with
    its graph. ``leaf``: the output is replaced by a detached copy that requires grad, so a forward
    run without an input gradient still builds the graph of the tail (the score's gradient needs
    it) and nothing before the layer."""

    def __init__(self, model: nn.Module, path: str) -> None:
        modules = dict(model.named_modules())
        if path not in modules:
            raise UserError(f"Grad-CAM target '{path}' does not exist in the model; use a module path such as "
                            f"'{last_conv_path(model)}'")
        self.path = path
        self.module = modules[path]
        self._captured: Tensor | None = None

    @contextmanager
    def active(self, leaf: bool = False) -> Iterator["ActivationTap"]:
        def hook(module: nn.Module, inputs, output: Tensor) -> Tensor:
            if leaf:
                output = output.detach().requires_grad_(True)
            self._captured = output
            return output

        handle = self.module.register_forward_hook(hook)
        try:
            yield self
        finally:
            handle.remove()
            self._captured = None

    def take(self) -> Tensor:
        """The captured output; a forward that never reached the layer is an error, never an empty
        term (a silently missing tap is how a distillation term becomes 0)."""
        captured, self._captured = self._captured, None
        if captured is None:
            raise RuntimeError(f"Grad-CAM target '{self.path}' captured nothing; was its tap active during the forward?")
        return captured


def score_gradient(logits: Tensor, activation: Tensor, classes: Tensor, create_graph: bool = False) -> Tensor:
    """∂(Σ_b logits[b, classes_b]) / ∂A. The graph is kept for the later backward of the loss. In eval
    mode the samples are independent, so row b holds ∂logits[b, classes_b]/∂A_b."""
    score = logits.gather(1, classes[:, None]).sum()
    (grad,) = torch.autograd.grad(score, activation, retain_graph=True, create_graph=create_graph)
    return grad


def minmax_normalize(u: Tensor, eps: float, flat_guard: bool) -> tuple[Tensor, Tensor]:
    """(U − min U)/(max U − min U + eps) per sample, and which samples are flat (range below
    1e-6·max|U| + 1e-12). With ``flat_guard`` the flat ones are exactly 0, without gradient."""
    flat = u.flatten(1)
    # min/max by selection: at ties the gradient goes to one element (amin/amax would share it)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    is_flat = (span < 1e-6 * flat.abs().amax(dim=1, keepdim=True) + 1e-12).detach()
    s = (flat - low) / (span + eps)
    if flat_guard:
        s = torch.where(is_flat, torch.zeros_like(s), s)
    return s.view_as(u), is_flat.squeeze(1)


def cam_map(activation: Tensor, grad: Tensor, settings: CAMSettings, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """One network's maps (B, 1, H, W) (the input's size in the code's form, the layer's in the
    paper's) and which samples are flat. ``grad`` carries a graph only with ``weight_grad``."""
    weights = grad.mean(dim=(2, 3))
    if settings.form == "code":
        weights = weights.clamp_min(WEIGHT_FLOOR)
    m = F.relu((weights[:, :, None, None] * activation).sum(dim=1, keepdim=True))
    if settings.form == "paper":
        return m, torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
    u = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return minmax_normalize(u, settings.norm_eps, settings.flat_guard)


def cam_distance(student_map: Tensor, teacher_map: Tensor, form: CamForm) -> Tensor:
    """The code's MSE over every element, or the paper's per-sample squared Frobenius norm averaged
    over samples (H·W times larger at the same maps)."""
    diff = (student_map - teacher_map).pow(2)
    return diff.mean() if form == "code" else diff.flatten(1).sum(dim=1).mean()


@dataclass
class CAMAlignment:
    """The term and what the step logs of it: ``loss`` (with its graph to the student's layer), the
    fraction of flat student maps, and both maps (the teacher's detached)."""

    loss: Tensor
    flat_fraction: Tensor
    student_map: Tensor
    teacher_map: Tensor


def cam_alignment(teacher_activation: Tensor, teacher_logits: Tensor, student_activation: Tensor,
                  student_logits: Tensor, labels: Tensor, settings: CAMSettings,
                  size: tuple[int, int]) -> CAMAlignment:
    """The Grad-CAM alignment of the clean pass: the teacher's map as a constant, the student's with
    its graph through its layer's output. Both activations must still be connected to their logits."""

    if student_activation.dim() != 4 or teacher_activation.shape != student_activation.shape:
        raise UserError(f"a Grad-CAM layer must output (B, K, h, w) maps of one shape in teacher and student; got "
                        f"{tuple(teacher_activation.shape)} and {tuple(student_activation.shape)}: choose a conv layer")

    def classes(logits: Tensor) -> Tensor:
        return labels if settings.form == "paper" else logits.detach().argmax(dim=1)

    g_t = score_gradient(teacher_logits, teacher_activation, classes(teacher_logits))
    s_t, _ = cam_map(teacher_activation.detach(), g_t, settings, size)
    g_q = score_gradient(student_logits, student_activation, classes(student_logits), settings.weight_grad)
    if not settings.weight_grad:
        g_q = g_q.detach()
    s_q, flat = cam_map(student_activation, g_q, settings, size)
    loss = cam_distance(s_q, s_t.detach(), settings.form)
    return CAMAlignment(loss, flat.float().mean(), s_q, s_t.detach())


__all__ = ["ActivationTap", "CAMAlignment", "CAMSettings", "cam_alignment", "cam_distance", "cam_map",
           "last_conv_path", "minmax_normalize", "score_gradient"]
