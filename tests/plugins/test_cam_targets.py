"""Every teacher's declared Grad-CAM layer (TeacherModel.cam_target, SynQ's CAM term) is its last convolution
with spatial extent: MobileNetV2's final-block conv, not the 1 x 1 classifier conv that SynQ's code hooks. The
``in1k-smoke`` runs of ``synq`` on ResNet-18 and MobileNetV2 are in tests/trial/test_imagenet_e2e.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


def _spatial_convs(model: nn.Module, input_size: tuple[int, int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """(path, output shape) of every Conv2d in forward order."""
    found: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: found.append((name, tuple(out.shape))))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    for h in hooks:
        h.remove()
    return found


@pytest.mark.parametrize("name", ["resnet20_cifar10", "resnet18_imagenet", "resnet50_imagenet",
                                  "mobilenetv2_w1_imagenet", "mobilenet_w1_imagenet", "resnet18_tv_imagenet"])
def test_the_declared_cam_target_is_the_last_spatial_conv(plugins, name):
    entry = plugins.models.get(name)
    convs = _spatial_convs(entry.build().eval(), entry.input_size)
    spatial = [path for path, shape in convs if shape[-1] > 1 and shape[-2] > 1]
    assert entry.cam_target == spatial[-1]


def test_mobilenetv2_does_not_take_the_classifier_conv(plugins):
    entry = plugins.models.get("mobilenetv2_w1_imagenet")
    convs = dict(_spatial_convs(entry.build().eval(), entry.input_size))
    assert entry.cam_target == "features.final_block.conv" and convs[entry.cam_target] == (1, 1280, 7, 7)
    assert convs["output"][-2:] == (1, 1)  # the last Conv2d, which SynQ's code hooks: 1 x 1 maps
