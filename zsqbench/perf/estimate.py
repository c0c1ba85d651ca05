"""A compute estimate for a grid before it starts, from its budgets, networks and methods.

Multiply-accumulates (MACs) per trial, IMAGENET.md §7.2's model: every iteration's samples times
the method's network passes (:meth:`zsqbench.api.generator.Generator.pass_counts`; a backward is
two forwards) times each network's MACs per image (the teacher's declared ``macs``, ResNet-20's
when undeclared; the generator network's as the method declares it, GDFQ's CIFAR network's
when undeclared), plus an offline
synthesis, plus evaluation (evaluated epochs × test images × teacher MACs). Throughputs turn MACs
into hours: on a GPU (H100/H200 class, FP32 with TF32 convolutions) 10 TMAC/s for training steps
at batch ≥ 16, slower below (×sqrt(B/16): 5 TMAC/s at batch 4, §7.2's 3-5 for tiny-batch QAT),
20 TMAC/s for evaluation and batch-256 synthesis; on the project's 2-core CPU 118 GMAC/s for
training (`zsqbench bench`: GDFQ + kd on ResNet-20 at batch 200, 1.00 s per iteration of
200 × 592 MMAC) and twice that for evaluation. The ResNet-20 GPU figure agrees with a measured
H100 iteration (15 ms at batch 200, 7.9 TMAC/s). It is an order-of-magnitude guide (±2×) for
deciding whether to start, not a prediction: `zsqbench bench` measures the real figure.
`zsqbench run` states it for the device the run trains on only, in minutes, hours or days, and
asks before a grid estimated at more than CONFIRM_SECONDS there.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from zsqbench.api.models import TeacherModel
from zsqbench.api.plugins import Plugins
from zsqbench.api.spec import Budget, TrialSpec
from zsqbench.assets.datasets import DATASETS

#: ResNet-20's forward (Conv2d + Linear, hooks): the teacher cost when a model declares none.
RESNET20_MACS = 40_813_184
#: GDFQ's CIFAR generator network (zsqbench.toolkit.imagenet_generator.CIFAR_GENERATOR_MACS): the
#: generator cost when a method declares none.
DEFAULT_GENERATOR_MACS = 115_834_880
#: GPU throughputs (MAC/s): training steps at batch >= TRAIN_FULL_BATCH, evaluation and synthesis.
GPU_TRAIN_MACS_PER_S = 10e12
GPU_EVAL_MACS_PER_S = 20e12
TRAIN_FULL_BATCH = 16
#: 2-core CPU throughputs (MAC/s), measured on ResNet-20 training steps; evaluation assumed 2x.
CPU_TRAIN_MACS_PER_S = 118e9
CPU_EVAL_MACS_PER_S = 2 * CPU_TRAIN_MACS_PER_S
#: Test images per evaluation of a dataset zsqbench does not know (known ones: DatasetInfo.num_test_images).
TEST_IMAGES_DEFAULT = 10_000
#: `zsqbench run` asks before starting a grid estimated to take longer than this on its device.
CONFIRM_SECONDS = 3600.0
#: Above this on its device, the estimate says so plainly (and how to make it shorter).
LONG_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class TrialCompute:
    """One trial's MACs by kind: training iterations (at their batch), synthesis, evaluation."""

    train_macs: float
    train_batch: int
    synthesis_macs: float
    eval_macs: float

    def gpu_seconds(self) -> float:
        rate = GPU_TRAIN_MACS_PER_S * min(1.0, self.train_batch / TRAIN_FULL_BATCH) ** 0.5
        return self.train_macs / rate + (self.synthesis_macs + self.eval_macs) / GPU_EVAL_MACS_PER_S

    def cpu_seconds(self) -> float:
        return (self.train_macs + self.synthesis_macs) / CPU_TRAIN_MACS_PER_S + self.eval_macs / CPU_EVAL_MACS_PER_S


def duration(seconds: float) -> str:
    """Seconds in the unit a person plans with: "40 seconds", "25 minutes", "3.2 hours", "2.2 days"."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} seconds"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def device_label(device_type: str) -> str:
    """The device an estimate is for: the GPU figure for CUDA, the CPU's for anything else."""
    return "one GPU" if device_type == "cuda" else "the CPU"


def _reference(device_type: str) -> str:
    """The machine the throughput was measured on, which the user's may differ from (±2×)."""
    return "scaled from an H100" if device_type == "cuda" else "scaled from a 2-core CPU"


@dataclass(frozen=True)
class ComputeEstimate:
    trials: int
    iterations: int
    student_iterations: int
    samples: int
    cpu_hours: float
    gpu_hours: float
    #: mean GPU-hours of one trial, by generator (the figure to compare with IMAGENET.md §7.2)
    gpu_hours_per_trial: dict[str, float] = field(default_factory=dict)
    #: mean CPU-hours of one trial, by generator
    cpu_hours_per_trial: dict[str, float] = field(default_factory=dict)

    def seconds(self, device_type: str) -> float:
        """The grid's estimated time on the device a run trains on ("cuda": the GPU figure;
        any other device: the CPU's, the only other one measured)."""
        return 3600 * (self.gpu_hours if device_type == "cuda" else self.cpu_hours)

    def describe(self, device_type: str) -> str:
        """The estimate for the device in use only, in readable units: the user plans with the
        machine they have, not with CPU-hours of a reference machine and GPU-hours of another."""
        per_trial = self.gpu_hours_per_trial if device_type == "cuda" else self.cpu_hours_per_trial
        total = self.seconds(device_type)
        notes = [_reference(device_type)]
        if self.trials > 1:
            notes.insert(0, "per trial: " + ", ".join(f"{g} {duration(3600 * h)}" for g, h in per_trial.items()))
        text = (f"{self.iterations:,} iterations ({self.samples:,} samples); "
                f"≈ {duration(total)} on {device_label(device_type)} ({'; '.join(notes)})")
        if total > LONG_SECONDS:
            faster = ("several GPUs (--executor multi-gpu or slurm)" if device_type == "cuda"
                      else "a GPU (--device cuda)")
            text += f". That is more than a day; {faster}, a smaller --budget or fewer trials make it shorter"
        return text


def test_images(dataset: str, budget: Budget) -> int:
    info = DATASETS.get(dataset)
    n = info.num_test_images if info is not None else TEST_IMAGES_DEFAULT
    return n if budget.eval_images is None else min(n, budget.eval_images)


#: Passes per image of a shared calibration source's iteration (zsqbench.toolkit.online.SharedCalibration):
#: its GDFQ generator's step through the teacher (3 generator, 3 teacher) and the student's calibration
#: forward on its batch (1 teacher-sized), GDFQ's own warm-up passes.
SHARED_SOURCE_TEACHER, SHARED_SOURCE_GENERATOR = 4.0, 3.0


def _shared_source_macs(b: Budget, entry: TeacherModel, teacher_macs: int) -> float:
    """A budget's ``shared_calibration`` source runs on top of the method in every calibration iteration,
    at its own batch (each trial builds it: trials share its images, not its compute)."""
    from zsqbench.toolkit.online import network_macs

    generator = network_macs(entry) or DEFAULT_GENERATOR_MACS
    images = b.warmup_epochs * b.iters_per_epoch * (b.shared_calibration or 0)
    return images * (SHARED_SOURCE_TEACHER * teacher_macs + SHARED_SOURCE_GENERATOR * generator)


def trial_compute(spec: TrialSpec, plugins: Plugins) -> TrialCompute:
    """The MACs of one trial (module docstring)."""
    entry = plugins.models.get(spec.model)
    teacher = entry.macs or RESNET20_MACS
    gen_cls = plugins.generators.get(spec.generator.name)
    passes = gen_cls.pass_counts(gen_cls.Options(**spec.generator.options), entry)
    gen_net = passes.generator_macs or DEFAULT_GENERATOR_MACS
    b = spec.budget
    warm_samples = b.warmup_epochs * b.iters_per_epoch * (passes.warmup_batch or b.batch_size)
    train_samples = (b.epochs - b.warmup_epochs) * b.iters_per_epoch * b.batch_size
    train = (warm_samples * (passes.warmup_teacher * teacher + passes.warmup_generator * gen_net)
             + train_samples * (passes.train_teacher * teacher + passes.train_generator * gen_net))
    if b.shared_calibration is not None:
        train += _shared_source_macs(b, entry, teacher)
    return TrialCompute(train_macs=train, train_batch=b.batch_size, synthesis_macs=passes.synthesis_teacher * teacher,
                        eval_macs=float(b.evaluated_epochs * test_images(spec.dataset, b) * teacher))


def estimate_compute(specs: list[TrialSpec], plugins: Plugins) -> ComputeEstimate:
    """The grid's iterations, samples and hours; GPU-hours per trial by generator."""
    iterations = student = samples = 0
    cpu_s = gpu_s = 0.0
    per_generator: dict[str, list[TrialCompute]] = defaultdict(list)
    for spec in specs:
        b = spec.budget
        it = b.epochs * b.iters_per_epoch
        iterations += it
        student += (b.epochs - b.warmup_epochs) * b.iters_per_epoch
        samples += it * b.batch_size
        cost = trial_compute(spec, plugins)
        cpu_s += cost.cpu_seconds()
        gpu_s += cost.gpu_seconds()
        per_generator[spec.generator.name].append(cost)
    return ComputeEstimate(
        trials=len(specs), iterations=iterations, student_iterations=student, samples=samples,
        cpu_hours=cpu_s / 3600, gpu_hours=gpu_s / 3600,
        gpu_hours_per_trial={g: sum(c.gpu_seconds() for c in cs) / len(cs) / 3600 for g, cs in per_generator.items()},
        cpu_hours_per_trial={g: sum(c.cpu_seconds() for c in cs) / len(cs) / 3600 for g, cs in per_generator.items()},
    )
