"""`zsqbench bench`'s operator profile: calls counted once each, the share outside convolutions."""

from __future__ import annotations

import torch

from zsqbench.perf.bench import JSON_KEYS, BenchConfig, run_bench
from zsqbench.perf.op_profile import profile_step

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


def _passes(session, run) -> tuple[int, int, int]:
    """(student forwards, teacher forwards, convolution backwards) of one call of ``run``."""
    from torch.profiler import ProfilerActivity, profile

    student, teacher = [], []
    handles = [session.bare_student.register_forward_hook(lambda *a: student.append(1)),
               session.bare_teacher.register_forward_hook(lambda *a: teacher.append(1))]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    for h in handles:
        h.remove()
    conv_backwards = sum(e.count for e in prof.key_averages() if e.key == "aten::convolution_backward")
    return len(student), len(teacher), conv_backwards


SMALL = dict(batch_size=2, device="cpu", iters=1, warmup_iters=1, eval_images=4, eval_batch_size=4)


def test_bench_counts_exactly_the_passes_a_method_adds(plugins, one_thread):
    """The method-aware bare iteration runs the method's own passes (PassCounts' pass fields):
    AdaDFQ one more backward through the student for the images' gradient (on the shared forward, or
    on a forward of its own in the reference order), HAST a teacher forward and a student forward +
    backward more (its perturbed pass), a method fine-tuning on a fixed set no teacher backward; GDFQ none, so its bare_method is its bare iteration."""
    from zsqbench.perf.bench import BenchSession

    gdfq = run_bench(BenchConfig(generator="gdfq", loss="kd", **SMALL), plugins)
    assert gdfq["bare_method_s"] == gdfq["bare_s"] and gdfq["overhead_method"] == gdfq["overhead"]
    convs = 21  # ResNet-20's convolutions, each backpropagated once per network backward
    with BenchSession(BenchConfig(generator="adadfq", loss="kd", **SMALL), plugins) as session:
        s, t, bare_backwards = _passes(session, session.bare)
        assert (s, t) == (1, 1)
        assert _passes(session, session.bare_method) == (1, 1, bare_backwards + convs)
    with BenchSession(BenchConfig(generator="adadfq", loss="kd", options={"adadfq": {"share_student_forward": False}},
                                  **SMALL), plugins) as session:
        assert _passes(session, session.bare_method) == (2, 1, bare_backwards + convs)
    with BenchSession(BenchConfig(generator="hast", loss="kd", **SMALL), plugins) as session:
        s, t, hast_bare = _passes(session, session.bare)
        assert _passes(session, session.bare_method) == (2, 2, hast_bare + convs)
    with BenchSession(BenchConfig(generator="intraq", loss="kd", **SMALL), plugins) as session:
        s, t, fixed_set_bare = _passes(session, session.bare)  # a fixed set: no input gradient anywhere
        assert _passes(session, session.bare_method) == (1, 1, fixed_set_bare - convs)
    adadfq = run_bench(BenchConfig(generator="adadfq", loss="kd", **SMALL), plugins)
    assert adadfq["overhead_method"] == adadfq["step_s"] / adadfq["bare_method_s"]
