"""`zsqbench bench`: how fast is one training iteration, and how far from the bare minimum?

A trial's wall time is ~all training iterations, and these networks are small
(docs/methods/common.md#compute-per-iteration), so the harness's own overhead (fake quantization,
hooks, losses, Python) can dominate. This module measures it directly, in one process and interleaved:

* ``step_s``: one full training iteration after warm-up, exactly as the trainer runs it:
  :func:`zsqbench.trial.step.iterate` (the generator's step, with the student update) inside the
  training epoch's :func:`~zsqbench.trial.step.epoch_context`, feature taps active, gradient
  monitor and loss accumulation included.
* ``bare_s``: the irreducible network passes of that iteration with plain FP modules and
  nothing else (no quantizers, hooks or losses; ``sum()`` as the loss): generator forward
  and backward (from :meth:`Generator.sample` on an eager copy of the generator; a random batch
  for generators without a network), teacher forward and an input-gradient backward, and an FP
  student (an unquantized copy of the teacher) forward and backward for input and weight gradients,
  all in one backward, on the same batch size, memory format, precision and threads.
  The bare passes always run eagerly (never compiled), so ``--compile`` shows up as a
  lower overhead.
* ``overhead = step_s / bare_s``: how many bare iterations one real iteration costs.
* ``bare_method_s``, ``overhead_method``: the same against exactly the network passes the *method*
  declares (the pass fields of :class:`~zsqbench.api.generator.PassCounts`): AdaDFQ adds one
  backward through the student for the images' gradient (its generator loss passes through the
  student); HAST a teacher forward and a student forward + backward (its perturbed pass); methods
  training on a fixed set drop the teacher's input-gradient backward. What is left above 1 is the
  harness's own cost.
* ``ops_per_step``, ``kernels_per_step`` (CUDA), ``outside_conv_share``: one more training step,
  profiled (:mod:`zsqbench.perf.op_profile`): where the overhead comes from at small batches.
* ``eval_s`` / ``fp_eval_s``: one evaluation pass (``zsqbench.trial.evaluate.top1``, inference
  mode) over ``eval_images`` random test-sized images for the quantized student and the FP
  teacher; ``eval_ratio = eval_s / fp_eval_s``.
* ``peak_mem_mb``: CPU: the process's peak resident set (ru_maxrss); CUDA: the peak
  memory allocated by PyTorch.

step and bare alternate, repetition by repetition, and the medians are reported, so a
background load that drifts affects both alike. The teacher is randomly initialized:
the speed of these networks does not depend on their weights, and no data is needed.
"""

from __future__ import annotations

import copy
import resource
import statistics
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zsqbench.api.generator import PassCounts
from zsqbench.api.models import TeacherModel
from zsqbench.api.options import fill_options, speed_switches
from zsqbench.api.plugins import Plugins, get_plugins
from zsqbench.api.spec import Budget, PluginChoice, TrialSpec
from zsqbench.errors import UserError
from zsqbench.grid.budgets import smoke_generator_options
from zsqbench.perf.compute import ComputeSettings, apply_compute_settings, tune_cpu_allocator
from zsqbench.perf.op_profile import profile_step
from zsqbench.runs.environment import resolve_device
from zsqbench.trial.build import build_trial_parts
from zsqbench.trial.evaluate import top1
from zsqbench.trial.monitor import EpochStats
from zsqbench.trial.step import compile_iteration, epoch_context, explain_iteration, iterate
from zsqbench.trial.trainer import seed_everything

#: The keys of the ``--json`` object, in order.
JSON_KEYS = (
    "step_s", "bare_s", "overhead", "bare_method_s", "overhead_method", "ops_per_step", "kernels_per_step", "outside_conv_share", "eval_s", "fp_eval_s", "eval_ratio", "peak_mem_mb",
    "generator", "loss", "bits", "batch_size", "device", "device_name", "threads",
    "precision", "channels_last", "compile", "tf32", "iters", "options", "torch",
)


@dataclass
class BenchConfig:
    generator: str = "adadfq"
    loss: str = "akt"
    bits: int = 4
    batch_size: int = 200
    device: str = "auto"
    threads: int | None = None
    iters: int = 10
    warmup_iters: int = 3
    eval_images: int = 10000
    eval_batch_size: int = 200
    calibration_iters: int = 2
    model: str = "resnet20_cifar10"
    seed: int = 0
    compute: ComputeSettings = field(default_factory=ComputeSettings)
    quantizer: str = "uniform"
    #: Plugin options by plugin name, e.g. {"adadfq": {"share_student_forward": False}} or
    #: {"uniform": {"ste": "reference"}} (the straightforward ``x + (q − x).detach()`` STE).
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


def setup_options(plugins: Plugins, config: BenchConfig) -> dict[str, Any]:
    """The benchmarked generator's options: its own smoke ones, which keep the setup short (an
    offline method's synthesis: the set's content does not change the speed of a training step),
    and the user's ``-o`` on top."""
    options = smoke_generator_options(plugins, config.generator, config.loss)
    if isinstance(options.get("num_images"), int):
        # A synthetic set (zsqbench.toolkit.offline) of at least one batch: each timed step then
        # draws its batch from one shuffled pass, as a trial's steps do. Smoke's 16 images against
        # the bench's batch 200 would be cycled inside every step (a dozen reshuffles stitched
        # together), work no trial's step does.
        options["num_images"] = max(options["num_images"], config.batch_size)
    return {**options, **config.options.get(config.generator, {})}


class BenchSession:
    """The objects of one benchmark, ready to time: :meth:`step`, :meth:`bare`,
    :meth:`eval_student`, :meth:`eval_teacher`. Call :meth:`close` when done (or use it as
    a context manager); :meth:`step` needs :meth:`training` around it, as in the trainer."""

    def __init__(self, config: BenchConfig, plugins: Plugins | None = None) -> None:
        self.config = c = config
        self.device = resolve_device(c.device)
        tune_cpu_allocator()  # as run_trial does
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        plugins = plugins or get_plugins()
        entry = plugins.models.get(c.model)
        gen_cls = plugins.generators.get(c.generator)  # unknown names: one-line errors before any work
        loss_cls = plugins.losses.get(c.loss)
        quant_cls = plugins.quantizers.get(c.quantizer)
        unknown = sorted(set(c.options) - {c.generator, c.loss, c.quantizer})
        if unknown:
            raise UserError(f"options given for {unknown}, which this benchmark does not use "
                            f"(generator '{c.generator}', loss '{c.loss}', quantizer '{c.quantizer}')")
        gen_options = setup_options(plugins, c)
        self.spec = TrialSpec(
            model=c.model, dataset=entry.dataset, w_bits=c.bits, a_bits=c.bits, seed=c.seed,
            generator=PluginChoice(name=c.generator,
                                   options=fill_options(gen_cls, gen_options, "generator", c.generator)),
            loss=PluginChoice(name=c.loss,
                              options=fill_options(loss_cls, c.options.get(c.loss, {}), "loss", c.loss)),
            quantizer=PluginChoice(name=c.quantizer, options=fill_options(
                quant_cls, c.options.get(c.quantizer, {}), "quantizer", c.quantizer)),
            budget=Budget(epochs=2, iters_per_epoch=max(1, c.iters), batch_size=c.batch_size, warmup_epochs=1),
        )
        # speed-only options given with -o (e.g. uniform.ste) are compute settings, as in a trial
        given = ((c.generator, gen_cls), (c.loss, loss_cls), (c.quantizer, quant_cls))
        self.switches = {**c.compute.switches, **{name: values for name, cls in given
                                                  if (values := speed_switches(cls, c.options.get(name, {})))}}
        self._tmp = tempfile.TemporaryDirectory(prefix="zsqbench-bench-")  # e.g. HAST's synthetic-set cache
        try:
            self._setup(plugins, entry)
        except BaseException:
            self._tmp.cleanup()
            raise

    def _setup(self, plugins: Plugins, entry: TeacherModel) -> None:
        c = self.config
        seed_everything(c.seed)
        teacher = entry.build().to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.parts = parts = build_trial_parts(self.spec, plugins, entry, teacher, self.device, Path(self._tmp.name),
                                               switches=self.switches)
        gen = parts.generator
        self.num_classes = entry.num_classes
        self.input_size = tuple(entry.input_size)

        # The bare FP networks, copied before any compilation (they always run eagerly).
        self.bare_generator = copy.deepcopy(gen) if gen.networks() else None
        self.passes = type(gen).pass_counts(gen.options, entry)
        self.bare_teacher = copy.deepcopy(teacher)
        self.bare_student = copy.deepcopy(teacher)
        for p in self.bare_student.parameters():
            p.requires_grad_(True)
        bare_gen_nets = list(self.bare_generator.networks().values()) if self.bare_generator else []
        self.compute = compute = c.compute.resolved(self.device)
        apply_compute_settings([*bare_gen_nets, self.bare_teacher, self.bare_student], replace(compute, compile=False))
        self._bare_params = [p for n in (*bare_gen_nets, self.bare_student) for p in n.parameters()]
        apply_compute_settings(parts.networks(), compute)

        # Prepare and calibrate as in the warm-up epochs, then freeze the ranges
        # (docs/methods/uniform.md#calibration-and-freezing).
        gen.prepare()
        if compute.compile:
            compile_iteration(parts, self.device)
        calibration = self.spec.budget.phase(0)
        with epoch_context(parts, calibration):
            for _ in range(c.calibration_iters):
                iterate(parts, calibration)
        self.phase = self.spec.budget.first_training_phase
        self.stats = EpochStats(parts.ctx.student)

        g = torch.Generator().manual_seed(c.seed)
        self.eval_inputs = torch.randn(c.eval_images, *self.input_size, generator=g)
        self.eval_labels = torch.randint(0, entry.num_classes, (c.eval_images,), generator=g)

    # -- what is timed
    def training(self) -> AbstractContextManager[float]:
        """The training epoch's setting (frozen ranges, feature taps installed), as in the trainer."""
        return epoch_context(self.parts, self.phase)

    def step(self) -> None:
        """One training iteration after warm-up, as the trainer runs it (inside :meth:`training`)."""
        iterate(self.parts, self.phase, self.stats)

    def bare(self, passes: PassCounts | None = None) -> None:
        """The same iteration's network passes alone, with plain FP modules (see the module doc);
        with ``passes``, exactly those the method declares instead (:meth:`bare_method`)."""
        p = passes or PassCounts()
        b, dev = self.config.batch_size, self.device
        for prm in self._bare_params:
            prm.grad = None
        batch = self.bare_generator.sample(b) if self.bare_generator is not None else None
        x = batch.x if batch is not None else torch.randn(
            b, *self.input_size, device=dev, requires_grad=p.teacher_input_backward or p.student_input_backwards > 0)
        if p.teacher_input_backward:
            t = self.bare_teacher(x)
        else:
            with torch.no_grad():
                t = self.bare_teacher(x)
        s = source = self.bare_student(x)
        for _ in range(p.extra_student_forwards):  # a forward of its own for the input backwards
            source = self.bare_student(x)
        for _ in range(p.student_input_backwards):
            torch.autograd.grad(source.sum(), x, retain_graph=True)
        loss = t.sum() + s.sum() if p.teacher_input_backward else s.sum()
        loss.backward()
        x_other = x.detach()
        with torch.no_grad():
            for _ in range(p.extra_teacher_forwards):
                self.bare_teacher(x_other)
        for _ in range(p.extra_student_steps):
            self.bare_student(x_other).sum().backward()

    def bare_method(self) -> None:
        """The bare passes the method itself runs (``bare_method_s``; :class:`PassCounts`' pass fields)."""
        self.bare(self.passes)

    def eval_student(self, images: int | None = None) -> float:
        return self._eval(self.parts.ctx.student, images)

    def eval_teacher(self, images: int | None = None) -> float:
        return self._eval(self.parts.ctx.teacher, images)

    def _eval(self, model: nn.Module, images: int | None) -> float:
        n = self.config.eval_images if images is None else images
        return top1(model, self.eval_inputs[:n], self.eval_labels[:n], self.device, self.config.eval_batch_size)

    # -- timing
    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def peak_mem_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> "BenchSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def explain_bench(config: BenchConfig, plugins: Plugins | None = None) -> dict[str, Any]:
    """`bench --explain`: the graphs and graph breaks of one training iteration under
    ``torch.compile`` (traced eagerly after the same setup and calibration as a benchmark)."""
    config = replace(config, compute=replace(config.compute, compile=False), iters=1)
    with BenchSession(config, plugins) as session, session.training():
        session.step()  # optimizer state and lazily built buffers exist, as in a compiled trial's steps
        report = explain_iteration(session.parts, session.phase)
    return {"generator": config.generator, "loss": config.loss, "batch_size": config.batch_size, **report}


def run_bench(config: BenchConfig, plugins: Plugins | None = None) -> dict[str, Any]:
    """Build, warm up, and measure; returns the ``--json`` object (keys :data:`JSON_KEYS`)."""
    from zsqbench.runs.provenance import device_name

    if config.iters < 1 or config.eval_images < 1 or config.batch_size < 1:
        raise ValueError("iters, eval_images and batch_size must be at least 1")
    with BenchSession(config, plugins) as session:
        kinds = {"step": session.step, "bare": session.bare}
        if session.passes.adds_passes:
            kinds["bare_method"] = session.bare_method
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        with session.training():
            for _ in range(config.warmup_iters):
                for run in kinds.values():
                    run()
            session.sync()
            for i in range(config.iters):
                # Alternate the order, so no kind always follows another.
                for kind in (list(kinds) if i % 2 == 0 else list(kinds)[::-1]):
                    times[kind].append(session.timed(kinds[kind]))
            ops = profile_step(session.step, session.device, session.sync)  # one more step, profiled
        warm = min(config.eval_batch_size, config.eval_images)
        session.eval_student(warm)  # first-call costs (allocator, cuDNN, compilation) out of the timing
        session.eval_teacher(warm)
        eval_s = session.timed(session.eval_student)
        fp_eval_s = session.timed(session.eval_teacher)
        step_s, bare_s = statistics.median(times["step"]), statistics.median(times["bare"])
        bare_method_s = statistics.median(times["bare_method"]) if "bare_method" in times else bare_s
        c = session.compute
        result = {
            "step_s": step_s,
            "bare_s": bare_s,
            "overhead": step_s / bare_s,
            "bare_method_s": bare_method_s,
            "overhead_method": step_s / bare_method_s,
            **ops,
            "eval_s": eval_s,
            "fp_eval_s": fp_eval_s,
            "eval_ratio": eval_s / fp_eval_s,
            "peak_mem_mb": session.peak_mem_mb(),
            "generator": config.generator,
            "loss": config.loss,
            "bits": config.bits,
            "batch_size": config.batch_size,
            "device": session.device.type,
            "device_name": device_name(session.device),
            "threads": torch.get_num_threads(),
            "precision": c.precision,
            "channels_last": c.channels_last,
            "compile": c.compile,
            "tf32": c.tf32,
            "iters": config.iters,
            "options": config.options,
            "torch": torch.__version__,
        }
    assert tuple(result) == JSON_KEYS
    return result


__all__ = ["BenchConfig", "BenchSession", "JSON_KEYS", "run_bench"]
