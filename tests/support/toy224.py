"""A random-init 224-px, 1000-class toy teacher and the trial parts built on it: the ImageNet
code paths (224-px generator, 1000 classes, frozen warm-up) at a size a CPU test can afford."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zsqbench.api import TeacherModel, hookimpl
from zsqbench.api.models import Normalization, PretrainedWeights
from zsqbench.api.options import fill_options
from zsqbench.api.plugins import build_plugins
from zsqbench.api.spec import Budget, PluginChoice, TrialSpec
from zsqbench.trial.build import build_trial_parts
from zsqbench.trial.trainer import seed_everything

IMAGENET_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: what helper teachers declare: ResNet-18's forward (IMAGENET.md §7.1)
RESNET18_MACS = 1_814_000_000


class Toy224(nn.Module):
    """A random-init 224-px, 1000-class classifier with BNs (for BNS) and ReLUs (for quantizers)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=8, padding=3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=4, padding=1, bias=False), nn.BatchNorm2d(16))
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.output = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.flat(self.pool(self.act(self.body(self.stem(x))))))


TOY224 = TeacherModel(
    name="toy224", description="random-init 224-px toy", arch="toy", dataset="imagenet", num_classes=1000,
    build=Toy224, weights=(PretrainedWeights("toy", "toy.pth", IMAGENET_NORM, None, sha256="0" * 64),),
    feature_taps={"default": ("stem", "body"), "penultimate": ("flat",)}, input_size=(3, 224, 224),
    classifier="output", macs=RESNET18_MACS,
)


class _Toy224Plugin:
    @hookimpl
    def register_models(self, register) -> None:
        register(TOY224)


@pytest.fixture(scope="module")
def plugins224():
    return build_plugins(extra={"toy224": _Toy224Plugin()})


def spec224(generator: str, options: dict | None = None, **budget) -> TrialSpec:
    b = {"epochs": 2, "iters_per_epoch": 1, "batch_size": 2, "warmup_epochs": 1, **budget}
    return TrialSpec(model="toy224", dataset="imagenet", generator=PluginChoice(name=generator, options=options or {}),
                     loss=PluginChoice(name="kd"), w_bits=4, a_bits=4, seed=0, budget=Budget(**b))


def parts224(plugins, spec: TrialSpec, tmp_path):
    seed_everything(0)
    teacher = TOY224.build().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cls = plugins.generators.get(spec.generator.name)
    spec = spec.model_copy(update={"generator": PluginChoice(
        name=spec.generator.name, options=fill_options(cls, spec.generator.options, "generator", spec.generator.name))})
    return build_trial_parts(spec, plugins, TOY224, teacher, torch.device("cpu"), tmp_path / "cache")


