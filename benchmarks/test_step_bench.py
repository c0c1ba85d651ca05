"""pytest-benchmark versions of `zsqbench bench` (small batch): `pytest benchmarks/ --benchmark-only`.

Not collected by the default `pytest` run (testpaths = tests). Each case times the trainer's
training step, the bare FP network passes of the same iteration, and one evaluation pass of
student and teacher, on a randomly initialized ResNet-20 (no data needed). Compare ``step``
with ``bare`` within a group for the overhead; see benchmarks/README.md.

Environment variables: ZSQBENCH_BENCH_BATCH (default 16), ZSQBENCH_BENCH_DEVICE (default
cpu), ZSQBENCH_BENCH_THREADS (default: PyTorch's choice), ZSQBENCH_BENCH_ROUNDS (default 5).
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from zsqbench.bits import bits_label
from zsqbench.perf.bench import BenchConfig, BenchSession

#: The papers train at batch 16 (AdaDFQ, HAST's calibration, AKT on CIFAR-100, ImageNet), where per-op
#: costs, not FLOPs, decide the step time; `zsqbench bench --batch-size 200` covers the large batch.
CASES = [("adadfq", "akt"), ("adadfq", "kd"), ("gdfq", "kd"), ("hast", "kd")]
BATCH = int(os.environ.get("ZSQBENCH_BENCH_BATCH", "16"))
DEVICE = os.environ.get("ZSQBENCH_BENCH_DEVICE", "cpu")
THREADS = int(os.environ["ZSQBENCH_BENCH_THREADS"]) if os.environ.get("ZSQBENCH_BENCH_THREADS") else None
ROUNDS = int(os.environ.get("ZSQBENCH_BENCH_ROUNDS", "5"))
EVAL_IMAGES = 1000


@pytest.fixture(scope="module", params=CASES, ids=[f"{g}+{l}" for g, l in CASES])
def session(request) -> Iterator[BenchSession]:
    generator, loss = request.param
    config = BenchConfig(generator=generator, loss=loss, batch_size=BATCH, device=DEVICE, threads=THREADS,
                         eval_images=EVAL_IMAGES)
    with BenchSession(config) as s:
        yield s


def _measure(benchmark, session: BenchSession, name: str, fn) -> None:
    c = session.config
    benchmark.group = f"{c.generator}+{c.loss} {bits_label(c.bits, c.bits)} batch {c.batch_size} {session.device.type}"
    benchmark.extra_info.update(generator=c.generator, loss=c.loss, bits=c.bits, batch_size=c.batch_size,
                                device=session.device.type, kind=name)

    def run() -> None:
        fn()
        session.sync()  # include the GPU work, not just its launch

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)


def test_step(benchmark, session: BenchSession) -> None:
    """One training iteration after warm-up, as the trainer runs it (in the training epoch's setting)."""
    with session.training():
        _measure(benchmark, session, "step", session.step)


def test_bare(benchmark, session: BenchSession) -> None:
    """The same iteration's network passes with plain FP modules (the floor)."""
    _measure(benchmark, session, "bare", session.bare)


def test_eval_student(benchmark, session: BenchSession) -> None:
    _measure(benchmark, session, "eval_student", session.eval_student)


def test_eval_teacher(benchmark, session: BenchSession) -> None:
    _measure(benchmark, session, "eval_teacher", session.eval_teacher)
