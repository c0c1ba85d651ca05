"""torchvision's ResNet-18 (IMAGENET1K_V1, 69.758 %) as a separate, clearly labelled ImageNet teacher
(IMAGENET.md §1.5): an ablation of the checkpoint source, never a substitute for the papers'
pytorchcv teacher (``resnet18``, 71.47 %).

torchvision's BasicBlock calls one ``relu`` module at two sites (after bn1 and after the residual
addition). The uniform quantizer replaces modules by type, so a shared module would give both
tensors one activation quantizer and one range. The blocks are therefore rebuilt around the same
conv/BN modules with one ReLU per site (``relu1``, ``relu2``); ReLUs hold no parameters, so the
state dict keys stay torchvision's and its checkpoint loads strictly. The "body before the add"
is not a module output here: the taps are each block's ``bn2``.

Pinning: the release name carries only the first 8 hex digits of the file's sha256, which is all
torchvision itself checks on download; the full digest is unknown here (no weights on this
machine), so the pin is that prefix (``sha256_prefix``), honestly no stronger, and the loaded
file's full sha256 is recorded in every trial's provenance.
"""

from __future__ import annotations

from torch import Tensor, nn

from zsqbench.api import Normalization, PretrainedWeights, TeacherModel, hookimpl

# torchvision's evaluation transform for these weights: Resize 256 bilinear, CenterCrop 224, these statistics
IMAGENET_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_INPUT = (3, 224, 224)

RESNET18_TV_MACS = 1_814_073_344  # same convs as pytorchcv's ResNet-18 (stride in the 3x3 of unit 1 only)
LAYERS = (1, 2, 3, 4)


class SplitReLUBasicBlock(nn.Module):
    """A torchvision BasicBlock with its own ReLU module per site (same submodule names otherwise)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


def build_resnet18_tv() -> nn.Module:
    """Random-init torchvision ResNet-18 (``weights=None``: nothing is downloaded) with split ReLUs."""
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    for i in LAYERS:
        layer = getattr(model, f"layer{i}")
        for j, block in enumerate(list(layer)):
            layer[j] = SplitReLUBasicBlock(block)
    return model


BN2_TAPS = tuple(f"layer{i}.{j}.bn2" for i in LAYERS for j in (0, 1))

RESNET18_TV_IMAGENET = TeacherModel(
    name="resnet18_tv_imagenet",
    description="ResNet-18 (torchvision IMAGENET1K_V1, 69.758%; a different teacher from resnet18), ImageNet",
    arch="resnet18_tv",
    dataset="imagenet",
    num_classes=1000,
    build=build_resnet18_tv,
    weights=(
        PretrainedWeights(
            tag="torchvision",
            filename="resnet18-f37072fd.pth",
            normalization=IMAGENET_NORM,
            expected_top1=69.758,
            url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            sha256_prefix="f37072fd",
            note="torchvision IMAGENET1K_V1; pinned by the sha256 prefix in its name (torchvision's own check); "
                 "not the papers' teacher",
        ),
    ),
    feature_taps={"default": BN2_TAPS, "all_units": BN2_TAPS,
                  "last_per_stage": tuple(f"layer{i}.1.bn2" for i in LAYERS), "penultimate": ("avgpool",)},
    input_size=IMAGENET_INPUT,
    classifier="fc",
    macs=RESNET18_TV_MACS,
    cam_target="layer4.1.conv2",  # the last conv, before bn2 (SynQ's Grad-CAM layer)
)


@hookimpl
def register_models(register) -> None:
    register(RESNET18_TV_IMAGENET)
