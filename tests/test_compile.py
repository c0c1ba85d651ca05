"""``--compile``: the whole training iteration through torch.compile (issue 15 item 3).

A compiled trial must train the same way as the eager one: fused kernels may contract
multiply-adds, so the numbers agree to float rounding, not bit for bit. The teacher is a toy
(two conv-BN-ReLU blocks) because inductor's compilation time grows with the graph; the
trial still goes through every part the compile path touches (calibration and training
phases, AdaDFQ's shared student forward and its two backward passes, the fused BN-statistics
loss, grouped attention maps, both optimizers).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zsqbench.api.plugins as plugins_mod
from zsqbench.api import Normalization, PretrainedWeights, TeacherModel, hookimpl
from zsqbench.files import file_digest
from zsqbench.trial.environment import Environment
from zsqbench.trial.spec import Budget, PluginChoice, TrialSpec
from zsqbench.trial.trainer import run_trial

from fixtures_data import write_random_weights, write_test_set


def _toy() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


@pytest.fixture
def toy_setup(tmp_path):
    root = tmp_path / "data"
    write_test_set(root, "cifar10", n=24)
    weights = write_random_weights(root / "weights" / "toy.pth", _toy())
    entry = TeacherModel(
        name="toy_cifar10", description="two conv blocks", arch="toy", dataset="cifar10", num_classes=10,
        build=_toy, weights=(PretrainedWeights("toy", "toy.pth", Normalization((0.5,) * 3, (0.25,) * 3), None,
                                               sha256=file_digest(weights)),),
        feature_taps={"default": ("2", "5")}, classifier="8", macs=1)

    class Toy:
        @hookimpl
        def register_models(self, register):
            register(entry)

    return root, plugins_mod.build_plugins(extra={"toy": Toy()})


def _trial(root, plugins, tmp_path, compile: bool):
    spec = TrialSpec(model="toy_cifar10", dataset="cifar10", w_bits=4, a_bits=4, seed=0,
                     generator=PluginChoice(name="adadfq"), loss=PluginChoice(name="akt"),
                     budget=Budget(epochs=2, iters_per_epoch=2, batch_size=16, warmup_epochs=1))  # the smoke preset
    env = Environment(data_root=root, device=torch.device("cpu"), cache_dir=tmp_path / "cache", offline=True,
                      compile=compile)
    return run_trial(spec, plugins, env)


@pytest.mark.slow
def test_a_compiled_trial_trains_like_the_eager_one(toy_setup, tmp_path):
    root, plugins = toy_setup
    eager = _trial(root, plugins, tmp_path / "eager", compile=False)
    compiled = _trial(root, plugins, tmp_path / "compiled", compile=True)
    assert compiled.compute["compile"] is True and eager.compute["compile"] is False
    assert compiled.ptq_top1 == eager.ptq_top1  # calibration: the same ranges to rounding, the same decisions
    (e_last,), (c_last,) = eager.epochs[-1:], compiled.epochs[-1:]
    assert set(c_last.losses) == set(e_last.losses) and {"logit", "feature"} <= set(e_last.losses)
    for key, value in e_last.losses.items():  # 2 training steps: rounding-level drift only
        assert math.isfinite(c_last.losses[key])
        assert c_last.losses[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key
    assert abs(c_last.top1 - e_last.top1) <= 100 / 24 + 1e-9  # at most one of the 24 images flips


def test_bench_explain_lists_the_graphs_of_the_iteration(toy_setup, capsys, monkeypatch):
    from zsqbench.trial.bench import BenchConfig, explain_bench

    _, plugins = toy_setup
    report = explain_bench(BenchConfig(generator="gdfq", loss="kd", batch_size=4, model="toy_cifar10",
                                       eval_images=8), plugins)
    assert report["graphs"] >= 1 and report["graph_breaks"] == report["graphs"] - 1
    assert report["ops"] > 0
    assert all(b["reason"] and b["count"] >= 1 for b in report["breaks"])
    assert report["graph_breaks"] == 0 or report["breaks"]  # every break is explained
