"""``--compile`` on the GPU: the whole iteration through ``torch.compile(mode="reduce-overhead")``, its
graphs captured and replayed as CUDA graphs, trains as the eager trial does (tests/trial/test_compile.py
holds the CPU's version of both checks and why values agree to rounding only).

The toy teacher keeps compilation short; the smoke budget's shape (batch 16) with 4 iterations per
epoch, so that a graph is warmed up, recorded and then replayed inside each epoch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from cuda_setup import DEVICE, NEEDS_DEVICE, ON_CUDA, toy, toy_plugins
from support.data import write_random_weights, write_test_set

from zsqbench.api.spec import Budget, PluginChoice, TrialSpec
from zsqbench.files import file_digest
from zsqbench.perf.compute import ComputeSettings, apply_compute_settings
from zsqbench.runs.environment import Environment
from zsqbench.trial.build import build_trial_parts
from zsqbench.trial.step import compile_iteration, epoch_context, iterate
from zsqbench.trial.trainer import run_trial, seed_everything

pytestmark = [*NEEDS_DEVICE, pytest.mark.slow]

#: As in tests/trial/test_compile.py: a compiled iteration may stray from eager by this many times the
#: spread that merely reordering eager's float32 sums (NHWC convolutions) gives, plus a floor.
REORDER_FACTOR = 10.0
ROUNDING_FLOOR = 1e-6


@pytest.fixture
def deterministic(monkeypatch):
    """cuDNN's deterministic kernels: two eager builds from one seed are then bit-identical."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.fixture
def toy_data(tmp_path):
    root = tmp_path / "data"
    write_test_set(root, "cifar10", n=24)
    weights = write_random_weights(root / "weights" / "toy.pth", toy())
    return root, toy_plugins(file_digest(weights))


def _spec() -> TrialSpec:
    return TrialSpec(model="toy_cifar10", dataset="cifar10", w_bits=4, a_bits=4, seed=0,
                     generator=PluginChoice(name="adadfq"), loss=PluginChoice(name="akt"),
                     budget=Budget(epochs=2, iters_per_epoch=4, batch_size=16, warmup_epochs=1))


def _rng() -> list[torch.Tensor]:
    return [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if ON_CUDA else [])


def test_a_compiled_trial_on_the_device_trains_like_the_eager_one(toy_data, tmp_path, deterministic):
    root, plugins = toy_data

    def trial(name: str, compile: bool):
        env = Environment(data_root=root, device=DEVICE, cache_dir=tmp_path / name / "cache", offline=True,
                          compile=compile)
        return run_trial(_spec(), plugins, env), _rng()

    eager, eager_rng = trial("eager", False)
    compiled, compiled_rng = trial("compiled", True)
    assert compiled.compute["compile"] is True
    assert all(torch.equal(a, b) for a, b in zip(compiled_rng, eager_rng))  # the same draws, CPU and device
    assert compiled.ptq_top1 == eager.ptq_top1
    assert [e.epoch for e in compiled.epochs] == [e.epoch for e in eager.epochs]
    last_e, last_c = eager.epochs[-1], compiled.epochs[-1]
    assert set(last_c.losses) == set(last_e.losses) and {"logit", "feature"} <= set(last_e.losses)
    assert all(math.isfinite(v) for v in last_c.losses.values())


#: The device's memory format for networks (the trainer's default); the reordered run uses the other.
CHANNELS_LAST = ComputeSettings().resolved(DEVICE).channels_last


def _calibrated(plugins, cache_dir, spec, channels_last: bool = CHANNELS_LAST):
    seed_everything(spec.seed)
    entry = plugins.models.get(spec.model)
    teacher = entry.build().to(DEVICE).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    parts = build_trial_parts(spec, plugins, entry, teacher, DEVICE, cache_dir)
    apply_compute_settings(parts.networks(), ComputeSettings(channels_last=channels_last))
    calibration = spec.budget.phase(0)
    with epoch_context(parts, calibration):
        for _ in range(spec.budget.iters_per_epoch):
            iterate(parts, calibration)
    return parts


def _state(parts) -> dict:
    """Everything a resume restores (trial/trainer.py resume), copied: nothing shared between parts."""
    return copy.deepcopy({"student": parts.ctx.student.state_dict(), "optimizer": parts.optimizer.state_dict(),
                          "generator": parts.generator.state_dict()})


def _load(parts, state: dict) -> None:
    state = copy.deepcopy(state)
    parts.ctx.student.load_state_dict(state["student"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.generator.load_state_dict(state["generator"])
    parts.quantizer.weights_updated(parts.ctx.student)


def _iteration(parts, spec) -> dict[str, float]:
    """One training iteration from the seed 1 streams: its loss terms and the student's weights after it."""
    training = spec.budget.phase(spec.budget.warmup_epochs)
    torch.manual_seed(1)
    with epoch_context(parts, training):
        terms = {k: float(v) for k, v in iterate(parts, training).items()}
    weights = {f"w:{n}": float(p.detach().double().norm()) for n, p in parts.ctx.student.named_parameters()}
    return {**terms, **weights}


def _deviation(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in b)


def test_a_replayed_compiled_iteration_computes_what_eager_computes(toy_data, tmp_path, deterministic):
    """The compiled iteration is warmed up, recorded and replayed (three training iterations); then
    from its state one more compiled iteration (a replay), one eager and one eager in NHWC (the
    spread of reordered sums) are compared term by term and weight by weight."""
    _, plugins = toy_data
    spec = _spec()
    compiled = _calibrated(plugins, tmp_path / "c", spec)
    compile_iteration(compiled, DEVICE)
    for _ in range(3):
        _iteration(compiled, spec)
    state = _state(compiled)
    eager = _calibrated(plugins, tmp_path / "e", spec)
    reordered = _calibrated(plugins, tmp_path / "r", spec, channels_last=not CHANNELS_LAST)
    _load(eager, state)
    _load(reordered, state)
    replayed, eager_values, reordered_values = (_iteration(p, spec) for p in (compiled, eager, reordered))
    assert {"logit", "feature", "spatial", "channel"} <= set(eager_values) and set(replayed) == set(eager_values)
    spread, drift = _deviation(reordered_values, eager_values), _deviation(replayed, eager_values)
    assert drift <= REORDER_FACTOR * spread + ROUNDING_FLOOR, (drift, spread)
