"""The contracts, checked on every registered plugin: a third-party plugin installed next to the
bundled ones is held to the same bar (these tests parametrize over whatever is registered)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_parts, make_spec
from torch import nn

from zsqbench.api import Batch, Generator, NativeLosses, Phase, StudentObjective, WeightCodeQuantizer
from zsqbench.api.plugins import build_plugins
from zsqbench.grid.budgets import smoke_generator_options
from zsqbench.runs import checkpoint
from zsqbench.trial.step import epoch_context, iterate

PLUGINS = build_plugins()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def plugins():
    return PLUGINS


#: One epoch of each phase, in the trainer's order. The frozen one is the warm-up after calibration
#: of the ImageNet budgets; a generator that refuses such budgets (it calibrates through its whole
#: warm-up: HAST, IntraQ, ZeroQ) is run through it too, since what holds it there is the core's step.
PHASES = (Phase(0, calibrating=True), Phase(1, calibrating=False, frozen=True), Phase(2, calibrating=False))


def _three_epoch_spec(plugins, name):
    """A spec of the three PHASES, one iteration each: with the frozen epoch in its budget where the
    generator accepts one, else with a warm-up of calibration alone. The generator's options are its
    own smoke ones (a short preparation; the contract does not depend on its size), so a generator
    installed from elsewhere is checked as small as it runs under ``smoke``."""
    cls = plugins.generators.get(name)
    options = smoke_generator_options(plugins, name, "kd")
    common = dict(batch_size=2, generator_options=options, epochs=3, iters_per_epoch=1)
    spec = make_spec(name, "kd", warmup_epochs=2, calibration_epochs=1, **common)
    if cls.budget_problem(cls.Options(**spec.generator.options), spec):
        spec = make_spec(name, "kd", warmup_epochs=1, **common)
    return spec


@pytest.mark.parametrize("name", PLUGINS.generators.names())
def test_generator_contract(plugins, tmp_path, name):
    spec = _three_epoch_spec(plugins, name)
    parts = make_parts(plugins, spec, tmp_path / "cache")
    gen = parts.generator
    assert isinstance(gen.native_losses(), NativeLosses)
    assert isinstance(gen.native_losses().objective, StudentObjective)
    assert all(isinstance(n, nn.Module) for n in gen.networks().values())
    declared = {id(p) for net in gen.networks().values() for p in net.parameters()}
    for opt in gen.optimizers().values():  # optimizers train the declared networks (so both are checkpointed)
        assert all(id(p) in declared for group in opt.param_groups for p in group["params"])
    gen.prepare()
    student = parts.ctx.student
    weights = {n for n, _ in student.named_parameters()}
    for phase in PHASES:
        before = copy.deepcopy(student.state_dict())
        with epoch_context(parts, phase):
            terms = iterate(parts, phase)
        changed = {k for k, v in student.state_dict().items() if not torch.equal(before[k], v)}
        if phase.training:
            assert "total" in terms and all(not v.requires_grad and torch.isfinite(v) for v in terms.values())
            assert changed & weights, f"{name} did not update the student in a training epoch"
        else:  # calibration moves the ranges, never the weights; a frozen epoch moves nothing
            assert terms == {}, f"{name} returned loss terms in a {phase.kind} epoch"
            moved = changed if phase.frozen else changed & weights
            assert not moved, f"{name} changed {sorted(moved)} in a {phase.kind} epoch"
    # a checkpoint round trip through the file format, read with weights_only=True: a generator state
    # holding arbitrary objects would make every resume of its trials fail
    (tmp_path / "checkpoint.pt").write_bytes(checkpoint.encode({"epoch": 0, "generator": gen.state_dict()}))
    gen.load_state_dict(checkpoint.decode(tmp_path / "checkpoint.pt")["generator"])
    sampled = gen.sample(3, torch.Generator().manual_seed(0))
    assert sampled is None or (isinstance(sampled, Batch) and sampled.x.shape == (3, *parts.ctx.teacher_entry.input_size))


@pytest.mark.parametrize("name", PLUGINS.losses.names())
def test_loss_contract(plugins, tmp_path, name):
    parts = make_parts(plugins, make_spec("gdfq", name, batch_size=2), tmp_path / "cache")
    objective = parts.objective
    modules = dict(parts.ctx.teacher.named_modules())
    assert all(p in modules for p in objective.feature_taps)
    assert objective.feature_weight >= 0
    phase = parts.ctx.spec.budget.first_training_phase
    with parts.quantizer.calibrating(parts.ctx.student, True), torch.no_grad():
        parts.ctx.student(torch.randn(2, *parts.ctx.teacher_entry.input_size))
    with epoch_context(parts, phase):
        terms = iterate(parts, phase)
    assert "total" in terms and torch.isfinite(terms["total"])
    if objective.feature_weight > 0:
        assert terms.get("feature", torch.tensor(1.0)).item() != 0.0


@pytest.mark.parametrize("name", PLUGINS.models.names())
def test_model_contract(plugins, name):
    entry = plugins.models.get(name)
    model = entry.build().eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        logits = model(torch.randn(2, *entry.input_size))
    assert logits.shape == (2, entry.num_classes)
    assert entry.classifier is None or entry.classifier in modules
    assert "default" in entry.feature_taps
    assert all(p in modules for paths in entry.feature_taps.values() for p in paths)
    assert entry.weights and all(w.digest for w in entry.weights)


@pytest.mark.parametrize("name", PLUGINS.quantizers.names())
def test_quantizer_contract(plugins, name):
    cls = plugins.quantizers.get(name)
    quantizer = cls(cls.Options())
    teacher = plugins.models.get("resnet20_cifar10").build().eval()
    names = {n for n, _ in teacher.named_modules()}
    student = quantizer.quantize(copy.deepcopy(teacher), 4, 4)
    assert names <= {n for n, _ in student.named_modules()}  # FP module names kept: taps address both
    for state in (True, False):
        quantizer.set_calibrating(student, state)
        assert quantizer.is_calibrating(student) is state
        with quantizer.calibrating(student, not state):
            assert quantizer.is_calibrating(student) is (not state)
        assert quantizer.is_calibrating(student) is state
    if isinstance(quantizer, WeightCodeQuantizer):  # integer codes declared (AIT needs them)
        params = {id(p): n for n, p in student.named_parameters()}
        listed = quantizer.quantized_weights(student)
        assert listed and all(params.get(id(q.weight)) == q.name and q.bits == 4 for q in listed)
        w = listed[0].weight
        codes = quantizer.weight_codes(w, 4)
        assert codes.shape == w.shape and torch.equal(codes, codes.round()) and -8 <= codes.min() <= codes.max() <= 7
        stacked = quantizer.weight_codes(torch.stack([w.detach(), 2 * w.detach()]), 4, stacked=True)
        assert torch.equal(stacked[0], codes) and stacked.shape == (2, *w.shape)


def test_generators_implement_the_parts_and_the_bundled_ones_leave_the_step_to_the_core():
    for entry in PLUGINS.generators:
        cls = entry.obj
        assert cls.step is not Generator.step or cls.next_batch is not Generator.next_batch, entry.name
        if entry.source == "bundled":  # the phase branching is the core's (zsqbench/api/generator.py)
            assert cls.step is Generator.step and cls.next_batch is not Generator.next_batch, entry.name
