"""ResNet-20 teachers for CIFAR-10/100 in pytorchcv's layout (docs/methods/common.md#resnet-20-teacher).

Two checkpoints are pinned per dataset: pytorchcv's release files (what the papers used;
downloaded by users with internet) and chenyaofo's weights re-keyed to pytorchcv's names
(what ships in offline data roots). Each carries the normalization it was trained with.
"""

from __future__ import annotations

from torch import nn

from zsqbench.api import Normalization, PretrainedWeights, TeacherModel, hookimpl

# DFQ normalization used by the ZSQ papers (docs/methods/common.md#test-time-normalization).
DFQ_CIFAR10 = Normalization((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768))
DFQ_CIFAR100 = Normalization((0.50705882, 0.48666667, 0.44078431), (0.26745098, 0.25568627, 0.27607843))
# Normalizations the chenyaofo checkpoints were trained with.
CHENYAOFO_CIFAR10 = Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CHENYAOFO_CIFAR100 = Normalization((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))

_RELEASE = "https://github.com/osmr/imgclsmob/releases/download"

# The 9 residual-unit body outputs (before the residual addition), docs/methods/akt.md#tapped-feature-maps.
ALL_UNITS = tuple(f"features.stage{s}.unit{u}.body" for s in (1, 2, 3) for u in (1, 2, 3))
LAST_UNIT_PER_STAGE = tuple(f"features.stage{s}.unit3.body" for s in (1, 2, 3))
# The pooled 64-d feature before the classifier (post-ReLU, so >= 0): IntraQ's class centres (MDC).
PENULTIMATE = ("features.final_pool",)
# Conv2d + Linear multiply-accumulates per 32x32 image (forward hooks; IMAGENET.md §7.1: 40.8 MMAC)
RESNET20_MACS = 40_813_184
# The last conv (before its BN and the residual addition): SynQ's Grad-CAM layer, (B, 64, 8, 8).
CAM_TARGET = "features.stage3.unit3.body.conv2.conv"
TAP_SETS = {"default": ALL_UNITS, "all_units": ALL_UNITS, "last_per_stage": LAST_UNIT_PER_STAGE,
            "penultimate": PENULTIMATE}


def _builder(num_classes: int):
    def build() -> nn.Module:
        from pytorchcv.models.resnet_cifar import get_resnet_cifar

        return get_resnet_cifar(num_classes=num_classes, blocks=20, bottleneck=False, model_name=None)

    return build


RESNET20_CIFAR10 = TeacherModel(
    name="resnet20_cifar10",
    description="ResNet-20 (pytorchcv layout), CIFAR-10, 272,474 parameters",
    arch="resnet20",
    dataset="cifar10",
    num_classes=10,
    build=_builder(10),
    weights=(
        PretrainedWeights(
            tag="pytorchcv",
            filename="resnet20_cifar10-0597-9b0024ac.pth",
            normalization=DFQ_CIFAR10,
            expected_top1=93.89,
            url=f"{_RELEASE}/v0.0.163/resnet20_cifar10-0597-9b0024ac.pth.zip",
            sha1="9b0024ac4c2f374cde2c5052e0d0344a75871cdb",
            archive_member="resnet20_cifar10-0597-9b0024ac.pth",
            note="the papers' teacher; 93.89% with DFQ normalization",
        ),
        PretrainedWeights(
            tag="chenyaofo",
            filename="resnet20_cifar10.pth",
            normalization=CHENYAOFO_CIFAR10,
            expected_top1=92.60,
            sha256="c1757f29fae64e00b26a75d86dcea0d4b7a9dc824289bda8c152d4330a497cc9",
            note="chenyaofo/pytorch-cifar-models weights re-keyed to pytorchcv names",
        ),
    ),
    feature_taps=dict(TAP_SETS),
    input_size=(3, 32, 32),
    classifier="output",
    macs=RESNET20_MACS,
    cam_target=CAM_TARGET,
)

RESNET20_CIFAR100 = TeacherModel(
    name="resnet20_cifar100",
    description="ResNet-20 (pytorchcv layout), CIFAR-100, 278,324 parameters",
    arch="resnet20",
    dataset="cifar100",
    num_classes=100,
    build=_builder(100),
    weights=(
        PretrainedWeights(
            tag="pytorchcv",
            filename="resnet20_cifar100-2964-a5322afe.pth",
            normalization=DFQ_CIFAR100,
            expected_top1=70.33,
            url=f"{_RELEASE}/v0.0.180/resnet20_cifar100-2964-a5322afe.pth.zip",
            sha1="a5322afed92fa96cb7b3453106f73cf38e316151",
            archive_member="resnet20_cifar100-2964-a5322afe.pth",
            note="the papers' teacher; 70.33% with DFQ normalization",
        ),
        PretrainedWeights(
            tag="chenyaofo",
            filename="resnet20_cifar100.pth",
            normalization=CHENYAOFO_CIFAR100,
            expected_top1=68.83,
            sha256="e53eb03a7b6e65b71efac90fb1ab4bba1961bccf8098e8823865ce88b903287c",
            note="chenyaofo/pytorch-cifar-models weights re-keyed to pytorchcv names (published 68.83%)",
        ),
    ),
    feature_taps=dict(TAP_SETS),
    input_size=(3, 32, 32),
    classifier="output",
    macs=RESNET20_MACS,
    cam_target=CAM_TARGET,
)


@hookimpl
def register_models(register) -> None:
    register(RESNET20_CIFAR10)
    register(RESNET20_CIFAR100)
