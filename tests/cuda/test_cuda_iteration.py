"""Every generator × loss trains one iteration on the GPU, and the iteration the trainer times
waits for the GPU nowhere: no implicit host-device copy or synchronization inside it.

The CPU suite runs the same code, but only a GPU shows what a CPU-only assumption costs there:
a tensor made on the host inside the step (an error when it meets device tensors, or a copy the
host waits for), a ``.item()`` or Python ``if`` on a device value (a synchronization per step)."""

from __future__ import annotations

import pytest
import torch
from cuda_setup import DEVICE, NEEDS_DEVICE, ON_CUDA, off_device, parts_on_device

from zsqbench.api.plugins import build_plugins
from zsqbench.grid.budgets import smoke_generator_options
from zsqbench.testing import make_spec
from zsqbench.trial.monitor import EpochStats
from zsqbench.trial.step import epoch_context, iterate

pytestmark = NEEDS_DEVICE

PLUGINS = build_plugins()
PAIRS = [(g, loss) for g in PLUGINS.generators.names() for loss in PLUGINS.losses.names()]
#: The synchronization check: every generator with kd, and every loss with AdaDFQ (the paper cell's
#: generator): each plugin's step code is covered once without building all pairs twice.
SYNC_PAIRS = sorted({(g, "kd") for g in PLUGINS.generators.names()} | {("adadfq", loss) for loss in PLUGINS.losses.names()})


def _calibrated(generator: str, loss: str, cache_dir):
    """Parts on the device at the generator's smoke options (batch 4: one calibration epoch, then
    training), prepared and through one calibration iteration; with the training phase."""
    spec = make_spec(generator, loss, batch_size=4, generator_options=smoke_generator_options(PLUGINS, generator, loss))
    parts = parts_on_device(PLUGINS, spec, cache_dir)
    parts.generator.prepare()
    calibration = spec.budget.phase(0)
    with epoch_context(parts, calibration):
        iterate(parts, calibration)
    return parts, spec.budget.first_training_phase


@pytest.mark.parametrize("generator, loss", PAIRS, ids=[f"{g}+{loss}" for g, loss in PAIRS])
def test_one_training_iteration_of_every_generator_and_loss(tmp_path, generator, loss):
    parts, training = _calibrated(generator, loss, tmp_path / "cache")
    student = parts.ctx.student
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    stats = EpochStats(student)
    with epoch_context(parts, training):
        terms = iterate(parts, training, stats)
    assert "total" in terms
    assert all(v.device.type == DEVICE.type for v in terms.values()), {k: v.device for k, v in terms.items()}
    assert all(torch.isfinite(v).item() for v in terms.values()), terms
    assert any(not torch.equal(before[n], p.detach()) for n, p in student.named_parameters())
    assert not off_device(parts)
    losses = stats.losses(1)  # the epoch's read of the device: once, at its end
    assert set(losses) == set(terms)


@pytest.mark.skipif(not ON_CUDA, reason="synchronization is a CUDA question")
@pytest.mark.parametrize("generator, loss", SYNC_PAIRS, ids=[f"{g}+{loss}" for g, loss in SYNC_PAIRS])
def test_the_training_iteration_never_makes_the_host_wait(tmp_path, generator, loss):
    """The second training iteration (lazily built state exists by then, as in every timed step)
    under ``set_sync_debug_mode("error")``: a synchronizing call inside it (a ``.item()``, a blocking
    copy to or from the GPU, ``nonzero``) raises, naming where."""
    parts, training = _calibrated(generator, loss, tmp_path / "cache")
    stats = EpochStats(parts.ctx.student)
    with epoch_context(parts, training):
        iterate(parts, training, stats)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            iterate(parts, training, stats)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert "total" in stats.losses(2)
