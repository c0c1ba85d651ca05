"""A compute estimate for a grid before it starts, from its budgets.

Measured on the project's 2-core CPU machine (PyTorch 2.14): one ResNet-20 iteration costs
roughly ``CPU_SECONDS_PER_SAMPLE`` per sample per generator-and-student pass; GPUs are about
two orders of magnitude faster. It is an order-of-magnitude guide for deciding whether to
start, not a prediction: `zsqbench bench` measures the real figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from zsqbench.api.plugins import Plugins
from zsqbench.trial.spec import TrialSpec

# seconds per generated sample per iteration on 2 CPU cores (`zsqbench bench`, 2026-11-27:
# GDFQ + kd at batch 200 1.00 s/iteration; AdaDFQ + AKT 1.13-1.17 s)
CPU_SECONDS_PER_SAMPLE = 0.005
# a single H100 at batch 200, AKT: about 15 ms per iteration
GPU_SECONDS_PER_SAMPLE = 0.015 / 200
# ask before starting more than this many student iterations in one grid
LARGE_GRID_ITERATIONS = 200_000


@dataclass(frozen=True)
class ComputeEstimate:
    trials: int
    iterations: int
    student_iterations: int
    samples: int
    cpu_hours: float
    gpu_hours: float

    def describe(self) -> str:
        return (f"{self.iterations:,} iterations ({self.samples:,} samples); "
                f"≈ {self.cpu_hours:.1f} CPU-hours on 2 cores or ≈ {self.gpu_hours:.2f} GPU-hours")


def estimate_compute(specs: list[TrialSpec], plugins: Plugins) -> ComputeEstimate:
    """Each generator declares its iteration's cost relative to GDFQ's (``Generator.cost_factor``)."""
    iterations = student = samples = 0
    weighted = 0.0
    for spec in specs:
        b = spec.budget
        it = b.epochs * b.iters_per_epoch
        iterations += it
        student += (b.epochs - b.warmup_epochs) * b.iters_per_epoch
        samples += it * b.batch_size
        weighted += it * b.batch_size * plugins.generators.get(spec.generator.name).cost_factor
    return ComputeEstimate(
        trials=len(specs), iterations=iterations, student_iterations=student, samples=samples,
        cpu_hours=weighted * CPU_SECONDS_PER_SAMPLE / 3600, gpu_hours=weighted * GPU_SECONDS_PER_SAMPLE / 3600,
    )
