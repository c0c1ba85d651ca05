"""`zsqbench bench`'s operator profile: calls counted once each, the share outside convolutions."""

from __future__ import annotations

import torch

from zsqbench.trial.bench import JSON_KEYS, BenchConfig, run_bench
from zsqbench.trial.op_profile import profile_step

CPU = torch.device("cpu")


def test_each_operator_call_counts_once_however_it_dispatches():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)

    def step():
        y = conv(x)  # conv2d -> convolution -> _convolution -> a backend: one call
        return (y + 1) * 2

    profile = profile_step(step, CPU)
    assert profile["ops_per_step"] == 3
    assert profile["kernels_per_step"] is None
    assert 0.0 <= profile["outside_conv_share"] < 0.5  # the convolution dominates three tiny ops


def test_a_step_without_convolutions_is_all_outside_them():
    a = torch.randn(64, 64)
    profile = profile_step(lambda: torch.tanh(a @ a).sum(), CPU)
    assert profile["ops_per_step"] == 3 and profile["outside_conv_share"] == 1.0


def test_profiling_prints_nothing(capfd):
    profile_step(lambda: torch.ones(4) + 1, CPU)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_bench_reports_the_profile(plugins, one_thread):
    config = BenchConfig(generator="gdfq", loss="kd", batch_size=2, device="cpu", iters=1, warmup_iters=1,
                         eval_images=4, eval_batch_size=4)
    result = run_bench(config, plugins)
    assert tuple(result) == JSON_KEYS
    assert result["ops_per_step"] > 100  # fake quantization, BN statistics, two optimizers, ...
    assert 0.0 < result["outside_conv_share"] < 1.0 and result["kernels_per_step"] is None


def test_bench_counts_the_student_passes_a_method_adds(plugins, one_thread):
    """AdaDFQ's generator loss backpropagates through the student too (PassCounts 9T against GDFQ's
    6T): its method-aware bare iteration has one more student forward and backward."""
    from zsqbench.trial.bench import BenchSession

    small = dict(batch_size=2, device="cpu", iters=1, warmup_iters=1, eval_images=4, eval_batch_size=4)
    gdfq = run_bench(BenchConfig(generator="gdfq", loss="kd", **small), plugins)
    assert gdfq["bare_method_s"] == gdfq["bare_s"] and gdfq["overhead_method"] == gdfq["overhead"]
    with BenchSession(BenchConfig(generator="adadfq", loss="kd", **small), plugins) as session:
        assert session.extra_student_passes == 1
        calls = []
        session.bare_student.register_forward_hook(lambda *a: calls.append(1))
        session.bare()
        session.bare_method()
        assert len(calls) == 1 + 2
    adadfq = run_bench(BenchConfig(generator="adadfq", loss="kd", **small), plugins)
    assert adadfq["overhead_method"] == adadfq["step_s"] / adadfq["bare_method_s"]
