"""What the CUDA tests share: the device they run on, their skip where it is missing, trial parts
built on it as a trial builds them, and a toy teacher small enough to compile in seconds.

``ZSQBENCH_CUDA_TESTS_DEVICE=cpu`` runs them on the CPU instead: a machine without a GPU can then
check the tests themselves before a lent GPU's minutes are spent on them (the host-device
synchronization test has nothing to check there and skips)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import zsqbench.api.plugins as plugins_mod
from zsqbench.api import Normalization, PretrainedWeights, TeacherModel, hookimpl
from zsqbench.api.plugins import Plugins
from zsqbench.api.spec import TrialSpec
from zsqbench.perf.compute import ComputeSettings, apply_compute_settings
from zsqbench.trial.build import TrialParts, build_trial_parts
from zsqbench.trial.trainer import seed_everything

DEVICE = torch.device(os.environ.get("ZSQBENCH_CUDA_TESTS_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"

#: Every test module here: ``pytestmark = NEEDS_DEVICE``.
NEEDS_DEVICE = [pytest.mark.cuda,
                pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="CUDA not available")]


def parts_on_device(plugins: Plugins, spec: TrialSpec, cache_dir: Path, seed: int = 0) -> TrialParts:
    """Trial parts around a random, frozen teacher on :data:`DEVICE`, with the device's default
    compute settings, as the trainer builds them (zsqbench.testing.make_parts does this on the CPU)."""
    seed_everything(seed)
    entry = plugins.models.get(spec.model)
    teacher = entry.build().to(DEVICE).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    parts = build_trial_parts(spec, plugins, entry, teacher, DEVICE, Path(cache_dir))
    apply_compute_settings(parts.networks(), ComputeSettings().resolved(DEVICE))
    return parts


def off_device(parts: TrialParts) -> list[str]:
    """The parameters and buffers of the trained and reading networks that are not on :data:`DEVICE`."""
    nets = {"student": parts.ctx.student, "teacher": parts.ctx.teacher,
            **{f"generator.{k}": v for k, v in parts.generator.networks().items()}}
    return [f"{name}.{t}" for name, net in nets.items()
            for t, tensor in [*net.named_parameters(), *net.named_buffers()] if tensor.device.type != DEVICE.type]


def toy() -> nn.Module:
    """Two conv-BN-ReLU blocks and a classifier: inductor compiles its iteration in seconds."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def toy_plugins(weights_sha256: str = "0" * 64) -> Plugins:
    """The plugins with the toy registered as ``toy_cifar10`` (its pin: a file with that digest)."""
    entry = TeacherModel(
        name="toy_cifar10", description="two conv blocks", arch="toy", dataset="cifar10", num_classes=10,
        build=toy, weights=(PretrainedWeights("toy", "toy.pth", Normalization((0.5,) * 3, (0.25,) * 3), None,
                                               sha256=weights_sha256),),
        feature_taps={"default": ("2", "5")}, classifier="8", macs=1)

    class Toy:
        @hookimpl
        def register_models(self, register):
            register(entry)

    return plugins_mod.build_plugins(extra={"toy": Toy()})
