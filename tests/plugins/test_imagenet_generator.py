"""The 224-px conditional-BN generator (IMAGENET.md §3.1), its selection by the teacher's input
size, and one iteration of each method on a random-init 224-px toy teacher at batch 2.

Helper models are tiny (a strided conv stack), so the 5.7-GMAC generator dominates; every test
stays at batch 2 and one or two iterations."""

from __future__ import annotations

import pytest
import torch
from support.toy224 import RESNET18_MACS, TOY224, parts224, plugins224, spec224  # noqa: F401 (fixture)
from torch import nn

from zsqbench.errors import UserError
from zsqbench.toolkit.cifar_generator import CifarGenerator
from zsqbench.toolkit.imagenet_generator import (
    CIFAR_GENERATOR_MACS,
    ConditionalBatchNorm2d,
    ImageNetGenerator,
    generator_network,
)
from zsqbench.trial.step import epoch_context


def _macs(net: nn.Module, *inputs: torch.Tensor) -> int:
    """Conv2d and Linear multiply-accumulates per image, by forward hooks (a folded upsampling
    convolution counts as the 3x3 convolution on the upsampled map, its reference form)."""
    total = 0

    def hook(m: nn.Module, args, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(*inputs)
    for h in handles:
        h.remove()
    return total


# ------------------------------------------------------------------------------ the network


def test_the_conditional_bn_generator_has_the_papers_shape_size_and_eps():
    torch.manual_seed(0)
    g = ImageNetGenerator(1000).train()
    x = g(torch.randn(2, 100), torch.tensor([3, 999]))
    assert x.shape == (2, 3, 224, 224)
    assert sum(p.numel() for p in g.parameters()) == 41_405_315  # IMAGENET.md §3.1: 41.41 M
    assert g.project.in_features == 100 and g.project.out_features == 128 * 56 * 56
    assert [g.bn0.eps, g.bn1.eps, g.bn2.eps] == [1e-5, 0.8, 0.8]
    assert [m.bn.affine for m in (g.bn0, g.bn1, g.bn2)] == [False] * 3
    final = g.head[2]
    assert isinstance(final, nn.BatchNorm2d) and not final.affine and final.eps == 1e-5
    assert isinstance(g.head[1], nn.Tanh) and g.act.negative_slope == 0.2


def test_the_class_enters_only_through_the_conditional_bns():
    torch.manual_seed(0)
    g = ImageNetGenerator(1000).train()
    embeddings = [n for n, m in g.named_modules() if isinstance(m, nn.Embedding)]
    assert embeddings == ["bn0.gamma", "bn0.beta", "bn1.gamma", "bn1.beta", "bn2.gamma", "bn2.beta"]
    ccbn = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert all(torch.equal(m.gamma.weight, torch.ones_like(m.gamma.weight)) and not m.beta.weight.any() for m in ccbn)
    z = torch.randn(2, 100)
    # at initialization every class has γ = 1, β = 0: the labels do not matter (no input embedding)
    assert torch.equal(g(z, torch.tensor([0, 1])), g(z, torch.tensor([5, 7])))
    with torch.no_grad():
        g.bn1.beta.weight[7] += 1.0
    assert not torch.allclose(g(z, torch.tensor([0, 1])), g(z, torch.tensor([5, 7])))


def test_declared_macs_match_forward_hooks():
    g = ImageNetGenerator(1000)
    assert _macs(g, torch.randn(1, 100), torch.tensor([0])) == ImageNetGenerator.MACS  # 5,676 MMAC (§7.1)
    assert _macs(CifarGenerator(10), torch.randn(1, 100), torch.tensor([0])) == CIFAR_GENERATOR_MACS  # 115.8


def test_the_network_is_chosen_by_input_size_and_cifar_stays_bit_identical():
    torch.manual_seed(1)
    chosen = generator_network((3, 32, 32), 10)
    torch.manual_seed(1)
    reference = CifarGenerator(10)
    assert type(chosen) is CifarGenerator
    assert all(torch.equal(a, b) for a, b in zip(chosen.state_dict().values(), reference.state_dict().values()))
    assert isinstance(generator_network((3, 224, 224), 1000), ImageNetGenerator)
    trunk = generator_network((3, 224, 224), None, latent_dim=16)
    assert trunk.project.in_features == 16 and trunk.decode(torch.randn(2, 16)).shape == (2, 3, 224, 224)
    with pytest.raises(UserError, match=r"input size \(3, 64, 64\); supported: \(3, 32, 32\), \(3, 224, 224\)"):
        generator_network((3, 64, 64), 10)


# ------------------------------------------------------------------------------ methods at 224 px


@pytest.mark.parametrize("generator", ["gdfq", "adadfq", "qimera"])
def test_online_methods_run_a_calibration_and_a_training_step_at_224(plugins224, tmp_path, generator):
    spec = spec224(generator, {"temperature": 5.0} if generator == "adadfq" else None)
    parts = parts224(plugins224, spec, tmp_path)
    net = parts.generator.networks()["generator"]
    assert (net.body if generator == "qimera" else net).__class__ is ImageNetGenerator
    if generator == "qimera":
        assert net.body.project.in_features == 16  # d = the toy classifier's width
    for epoch in range(2):
        phase = spec.budget.phase(epoch)
        with epoch_context(parts, phase):
            terms = parts.generator.step(phase, parts.student_update)
        assert bool(terms) == phase.training
        assert all(torch.isfinite(v).all() for v in terms.values())


@pytest.mark.parametrize("generator", ["hast", "intraq"])
def test_offline_methods_synthesize_and_train_at_224(plugins224, plugins, tmp_path, generator):
    from zsqbench.grid.budgets import resolve_budget
    options = resolve_budget(plugins, "in1k-smoke", generator, "kd").generator_options
    assert options["num_images"] == 4 and options["synthesis_iters"] == 2
    spec = spec224(generator, options)
    parts = parts224(plugins224, spec, tmp_path)
    parts.generator.prepare()
    assert parts.generator.images.shape == (4, 3, 224, 224)
    assert isinstance(parts.generator.calibration.net, ImageNetGenerator)
    for epoch in range(2):
        phase = spec.budget.phase(epoch)
        with epoch_context(parts, phase):
            terms = parts.generator.step(phase, parts.student_update)
        assert bool(terms) == phase.training


def test_hast_imagenet_synthesis_augments_and_keys_its_cache_by_it(plugins224, tmp_path):
    from zsqbench_plugins.generators.hast import HASTOptions
    assert "synthesis_augment_p" not in HASTOptions().model_dump(mode="json")  # CIFAR ids unchanged
    parts = parts224(plugins224, spec224("hast", {"num_images": 2, "synthesis_batch": 2, "synthesis_iters": 2,
                                                  "synthesis_augment_p": 0.5, "hardness_beta": 0.1,
                                                  "hardness_gamma": 0.5, "calibration_batch": 2}), tmp_path)
    settings = parts.generator.synthetic_set.settings()
    assert settings["augment"] == [0.5, 0.4] and settings["image_shape"] == [3, 224, 224]
