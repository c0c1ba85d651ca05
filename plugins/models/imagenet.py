"""ImageNet-1K teachers in pytorchcv's layout: ResNet-18, ResNet-50, MobileNetV2 and MobileNet (IMAGENET.md §1).

Each is built from the installed pytorchcv with ``pretrained=False`` and gets exactly one pinned
checkpoint: the pytorchcv release file the ZSQ papers used (full sha1, release zip, expected
top-1). ``pretrained=True`` is never called: it resolves the file from the *installed* package's
table, and pytorchcv >= 0.0.61 returns a different ResNet-18 (73.06 % instead of the papers'
71.47 %, §1.2). That file, and the 0.0.59–0.0.60 one, are declared as refused files of the
ResNet-18 pin, so they cannot stand in for it under any name.

Only sha1 is pinned (the only hash pytorchcv publishes; no weights are on the machines this was
written on); the sha256 of the verified file is recorded in every trial's provenance.

Tap sets (§1.4): ``default``/``all_units`` are the outputs of every unit's body before the
residual addition (ResNet ``body``, MobileNetV2 ``conv3``, the linear bottleneck) or, for
MobileNet, every pointwise block; ``last_per_stage`` the last unit of each stage; ``penultimate``
the pooled feature before the classifier (IntraQ's class centres).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from zsqbench.api import Normalization, PretrainedWeights, RefusedFile, TeacherModel, hookimpl

# The torchvision/pytorchcv ImageNet statistics every ZSQ repo evaluates with (IMAGENET.md §5.1).
IMAGENET_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_INPUT = (3, 224, 224)
_RELEASE = "https://github.com/osmr/imgclsmob/releases/download"

# Units per stage (IMAGENET.md §1.3), which fix the tap paths.
RESNET18_UNITS = (2, 2, 2, 2)
RESNET50_UNITS = (3, 4, 6, 3)
MOBILENETV2_UNITS = (1, 2, 3, 7, 4)
MOBILENET_UNITS = (1, 2, 2, 6, 2)

# Conv2d + Linear multiply-accumulates per 224x224 image, measured with forward hooks on the
# random-init models (IMAGENET.md §7.1: 1,814 / 3,858 / 314 / 569 MMAC; tests re-measure them).
RESNET18_MACS = 1_814_073_344
RESNET50_MACS = 3_857_973_248
MOBILENETV2_MACS = 313_619_328
MOBILENET_MACS = 568_740_352

# Grad-CAM layers (SynQ, docs/methods/synq.md#grad-cam-alignment): the last conv with spatial extent,
# before its BN. For MobileNetV2 that is the 320 -> 1280 conv of the final block, (B, 1280, 7, 7): the
# last Conv2d, `output`, is the 1 x 1 classifier conv, whose maps are 1 x 1 and carry no spatial signal.
MOBILENETV2_CAM_TARGET = "features.final_block.conv"

# pytorchcv's later ResNet-18 files (IMAGENET.md §1.2): what `pretrained=True` fetches from
# pytorchcv 0.0.59-0.0.60 and >= 0.0.61 (0.0.74 is installed here).
RESNET18_LATER_FILES = (
    RefusedFile(
        filename="resnet18-0896-77a56f15.pth",
        sha1_prefix="77a56f15",
        reason="pytorchcv >= 0.0.61's ResNet-18 (release v0.0.478, 73.06 % top-1, what pretrained=True fetches "
               "today), not the papers' 71.47 % teacher",
    ),
    RefusedFile(
        filename="resnet18-0941-8ef01e05.pth",
        sha1_prefix="8ef01e05",
        reason="pytorchcv 0.0.59-0.0.60's ResNet-18 (release v0.0.469, 71.97 % top-1), not the papers' "
               "71.47 % teacher",
    ),
)


def unit_paths(units: tuple[int, ...], leaf: str) -> tuple[str, ...]:
    """``features.stage{s}.unit{u}.<leaf>`` for every unit, in forward order."""
    return tuple(f"features.stage{s}.unit{u}.{leaf}" for s, n in enumerate(units, 1) for u in range(1, n + 1))


def last_unit_paths(units: tuple[int, ...], leaf: str) -> tuple[str, ...]:
    """The last unit of each stage."""
    return tuple(f"features.stage{s}.unit{n}.{leaf}" for s, n in enumerate(units, 1))


def tap_sets(units: tuple[int, ...], leaf: str) -> dict[str, tuple[str, ...]]:
    every = unit_paths(units, leaf)
    return {"default": every, "all_units": every, "last_per_stage": last_unit_paths(units, leaf),
            "penultimate": ("features.final_pool",)}


def pytorchcv_weights(file: str, sha1: str, tag: str, top1: float, note: str,
                      refused: tuple[RefusedFile, ...] = ()) -> PretrainedWeights:
    """The pin of one imgclsmob release file: ``<file>.zip`` under release ``tag``, holding ``file``."""
    if len(sha1) != 40 or not file.endswith(f"-{sha1[:8]}.pth"):
        raise ValueError(f"sha1 {sha1} does not fit the pytorchcv file name {file}")
    return PretrainedWeights(
        tag="pytorchcv",
        filename=file,
        normalization=IMAGENET_NORM,
        expected_top1=top1,
        url=f"{_RELEASE}/{tag}/{file}.zip",
        sha1=sha1,
        archive_member=file,
        note=note,
        refused=refused,
    )


def _builder(module: str, fn: str) -> Callable[[], nn.Module]:
    """Random-init pytorchcv network, never ``pretrained=True`` (the pinned file is loaded by the core)."""

    def build() -> nn.Module:
        import importlib

        return getattr(importlib.import_module(f"pytorchcv.models.{module}"), fn)(pretrained=False)

    return build


def _teacher(arch: str, description: str, build: Callable[[], nn.Module], weights: PretrainedWeights,
             taps: dict[str, tuple[str, ...]], macs: int, cam_target: str) -> TeacherModel:
    return TeacherModel(
        name=f"{arch}_imagenet",
        description=description,
        arch=arch,
        dataset="imagenet",
        num_classes=1000,
        build=build,
        weights=(weights,),
        feature_taps=taps,
        input_size=IMAGENET_INPUT,
        classifier="output",
        macs=macs,
        cam_target=cam_target,
    )


RESNET18_IMAGENET = _teacher(
    "resnet18", "ResNet-18 (pytorchcv), ImageNet, 11,689,512 parameters, 1.81 GMAC",
    _builder("resnet", "resnet18"),
    pytorchcv_weights("resnet18-0982-0126861b.pth", "0126861b4cd7f7b14196b1e01827da688f8bab6d", "v0.0.153", 71.47,
                      "the papers' teacher (pytorchcv <= 0.0.58; every ZSQ repo vendors it); 71.47% top-1",
                      refused=RESNET18_LATER_FILES),
    tap_sets(RESNET18_UNITS, "body"), RESNET18_MACS, "features.stage4.unit2.body.conv2.conv",
)

RESNET50_IMAGENET = _teacher(
    "resnet50", "ResNet-50 (pytorchcv, stride in the 1x1 conv), ImageNet, 25,557,032 parameters, 3.86 GMAC",
    _builder("resnet", "resnet50"),
    pytorchcv_weights("resnet50-0633-b00d1c8e.pth", "b00d1c8e52aa7a2badc705b1545aaf6ccece6ce9", "v0.0.329", 77.72,
                      "the papers' teacher; 77.72% top-1 (papers print 77.72-77.74)"),
    tap_sets(RESNET50_UNITS, "body"), RESNET50_MACS, "features.stage4.unit3.body.conv3.conv",
)

MOBILENETV2_IMAGENET = _teacher(
    "mobilenetv2_w1", "MobileNetV2 1.0 (pytorchcv), ImageNet, 3,504,960 parameters, 314 MMAC",
    _builder("mobilenetv2", "mobilenetv2_w1"),
    pytorchcv_weights("mobilenetv2_w1-0887-13a021bc.pth", "13a021bca5b679b76156829743f7182da42e8bb6", "v0.0.213",
                      73.03, "the papers' teacher; 73.03% top-1"),
    tap_sets(MOBILENETV2_UNITS, "conv3"), MOBILENETV2_MACS, MOBILENETV2_CAM_TARGET,
)

MOBILENET_IMAGENET = _teacher(
    "mobilenet_w1", "MobileNet 1.0 (pytorchcv), ImageNet, 4,231,976 parameters, 569 MMAC",
    _builder("mobilenet", "mobilenet_w1"),
    pytorchcv_weights("mobilenet_w1-0895-7e1d739f.pth", "7e1d739f0fd4b95c16eef077c5dc0a5bb1da8ad5", "v0.0.155", 73.39,
                      "IntraQ's README teacher; 73.39% top-1"),
    tap_sets(MOBILENET_UNITS, "pw_conv"), MOBILENET_MACS, "features.stage5.unit2.pw_conv.conv",
)

IMAGENET_TEACHERS = (RESNET18_IMAGENET, RESNET50_IMAGENET, MOBILENETV2_IMAGENET, MOBILENET_IMAGENET)


@hookimpl
def register_models(register) -> None:
    for teacher in IMAGENET_TEACHERS:
        register(teacher)
