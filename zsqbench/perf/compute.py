"""Compute settings: memory format, conv precision, TF32, torch.compile.

Each changes the floating-point results (at the rounding level for channels-last and
compile, more for TF32 and bf16). Only the memory format has a measured default: the
others are opt-in, and a trial records the settings it ran with. They are shared by the
trainer (:class:`zsqbench.runs.environment.Environment`) and ``zsqbench bench`` so that a benchmark
measures exactly what a trial would run.

* ``channels_last``: NHWC convolutions. ``None`` (the default) resolves by device, from
  measurement: on CPU on (an AdaDFQ + AKT iteration at batch 200, 2 threads, measured
  ~20 % faster; benchmarks/README.md), on CUDA off (not measured here). The FP networks
  differ from NCHW by the convolutions' rounding only (tested); in the quantized student
  such a difference can move an activation across a grid boundary at an exact tie, so a
  trajectory differs as it would on another machine (statistically, not systematically).
* ``precision="bf16"``: convolutions run under autocast in bfloat16 and their outputs are
  cast back to float32, so everything else (BN, fake quantization, losses, the FC layer)
  stays float32. The fake-quantization function casts its input to float32 too, so
  quantizer arithmetic never happens in bf16 (the bf16 conv then sees the float32 grid
  values rounded to bf16). Its effect on accuracy must be measured before use.
* ``tf32``: ``None`` leaves PyTorch's defaults (cuDNN convolutions may use TF32 on Ampere
  or newer GPUs, matmuls not); ``True`` allows TF32 for both; ``False`` forbids it (strict
  FP32, as the reference code's older GPUs computed).
* ``compile``: the whole training iteration through ``torch.compile``
  (:func:`zsqbench.trial.step.compile_iteration`; the networks stay eager modules, so names,
  hooks and state_dict keys stay). Fused kernels may contract multiply-adds, so results are
  not bit-identical to eager mode.
* ``switches``: the plugins' speed-only options (declared ``SpeedOnly``, :mod:`zsqbench.api.options`),
  by plugin name, e.g. ``{"adadfq": {"share_student_forward": False}, "uniform": {"ste": "reference"}}``:
  another way to compute the same numbers, for comparisons. Set with ``-o`` like any option, but
  carried here, outside the trial id; a trial records them with its other settings.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"bf16": torch.bfloat16}


#: Device types on which channels-last is the default (measured; see the module docstring).
CHANNELS_LAST_BY_DEFAULT = frozenset({"cpu"})


@dataclass(frozen=True)
class ComputeSettings:
    """The compute settings; ``channels_last=None`` means "the measured default for the device"
    (:meth:`resolved`), everything else defaults to plain eager float32."""

    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False
    tf32: bool | None = None
    switches: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def resolved(self, device: torch.device | str) -> "ComputeSettings":
        """The same settings with the memory format decided for ``device``."""
        if self.channels_last is not None:
            return self
        kind = torch.device(device).type
        return replace(self, channels_last=kind in CHANNELS_LAST_BY_DEFAULT)

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (``switches`` only when some are set, so the record of a
        trial at the defaults is what it always was)."""
        described: dict[str, Any] = {"precision": self.precision, "channels_last": self.channels_last,
                                     "compile": self.compile, "tf32": self.tf32}
        if any(self.switches.values()):
            described["switches"] = {name: dict(values) for name, values in self.switches.items() if values}
        return described


# ------------------------------------------------------------------ allocator

#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed CPU memory in the process for reuse instead of returning it to the OS.

    glibc serves every allocation above its mmap threshold (≥ 128 KiB, adapting up to 32 MiB)
    with a fresh ``mmap`` and unmaps it on free, so each training iteration, which allocates
    and frees gigabytes of activations in tensors of 1–50 MB, page-faults all of them in again:
    2.5 M minor page faults in a 20-iteration benchmark, ~15 % of an AdaDFQ + AKT step on the
    2-core CPU (benchmarks/README.md). With mmap off and trimming deferred, the heap grows to
    the peak once and is reused. Arithmetic is untouched, so results are bit-identical; the
    resident memory stays at its peak instead of shrinking between iterations.

    Process-wide and idempotent; a no-op (False) where the C library is not glibc, or when
    ``ZSQBENCH_MALLOC_TUNING=0`` asks for the C library's defaults.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("ZSQBENCH_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _ALLOCATOR_TUNED = ok
    return ok


# ------------------------------------------------------------------ conv precision

_AUTOCAST_CLASSES: dict[type, type] = {}


def _autocast_class(base: type) -> type:
    """A subclass of ``base`` (a Conv2d class) whose forward runs under autocast.

    Swapping an instance's class (instead of wrapping its forward) survives deepcopy and
    leaves module paths, hooks and state_dict untouched.
    """
    if base not in _AUTOCAST_CLASSES:

        def forward(self: nn.Conv2d, x: Tensor) -> Tensor:
            with torch.autocast(x.device.type, dtype=self.compute_dtype):
                out = base.forward(self, x)
            return out.to(torch.float32)

        _AUTOCAST_CLASSES[base] = type(
            f"Autocast{base.__name__}", (base,),
            {"forward": forward, "__module__": __name__, "_autocast_base": base,
             "__doc__": f"{base.__name__} computed in reduced precision, output cast to float32."},
        )
    return _AUTOCAST_CLASSES[base]


def set_conv_precision(module: nn.Module, precision: str) -> None:
    """Make every Conv2d in ``module`` compute in ``precision`` ("fp32" undoes it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for m in module.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        base = getattr(type(m), "_autocast_base", type(m))
        if precision == "fp32":
            m.__class__ = base
            m.__dict__.pop("compute_dtype", None)
        else:
            m.__class__ = _autocast_class(base)
            m.compute_dtype = _DTYPES[precision]


# ------------------------------------------------------------------- everything


def set_tf32(enabled: bool | None) -> None:
    """Allow (True) or forbid (False) TF32 in CUDA matmuls and cuDNN convs; None: leave as is."""
    if enabled is None:
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def allow_compiled_backward_twice() -> None:
    """AdaDFQ's shared student forward backpropagates the same graph twice (generator step
    with ``retain_graph``, then the student step). A compiled backward that donates its
    saved buffers refuses that, so buffer donation (a memory optimization) is turned off."""
    try:
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
    except (ImportError, AttributeError):  # pragma: no cover - older/newer PyTorch without it
        pass


def separate_inductor_cache() -> None:
    """Under a pinned ``ATEN_CPU_CAPABILITY`` (as the regression test pins AVX2), compiled kernels go to a
    cache folder of their own, ``<inductor's default>-<capability>``. Inductor's FX graph cache does not
    tell those settings apart: on 2026-12-05 (PyTorch 2.14.1, Intel Xeon) a kernel that a process with
    ``ATEN_CPU_CAPABILITY=avx2`` had cached corrupted the heap of a default process that loaded it ("double
    free or corruption"; benchmarks/README.md). A cache folder the user chose is left alone."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if not capability:
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{os.path.abspath(default_cache_dir())}-{capability}"


#: Log lines torch prints under ``--compile`` that say nothing about the run: logger -> message starts.
#: The CUDA wheel's C++-extension helper warns at import that there is no CUDA runtime, also on a
#: CPU-only run that never asked for one; dynamo warns that ``record_function`` ranges inside a
#: compiled region are dropped, which is what ``zsqbench bench``'s one profiled step is told to expect.
IRRELEVANT_COMPILE_LOGS: dict[str, tuple[str, ...]] = {
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
    "torch._dynamo.variables.ctx_manager": ("Profiler record function",),
    "torch._dynamo.variables.torch": ("Profiler function",),
}


class _DropMessages(logging.Filter):
    """Drops records whose unformatted message starts with one of ``starts``; passes every other one."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_compile_logs() -> None:
    """Installs, once, filters for :data:`IRRELEVANT_COMPILE_LOGS` on their loggers: a user reading a
    compiled run's output sees torch's warnings that concern the run, not these."""
    for name, starts in IRRELEVANT_COMPILE_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))


def apply_compute_settings(networks: Iterable[nn.Module], settings: ComputeSettings) -> None:
    """Apply ``settings`` to the networks in place (call once, after they are built).
    ``channels_last=None`` must have been :meth:`~ComputeSettings.resolved` first."""
    if settings.channels_last is None:
        raise ValueError("resolve the memory format for the device first: ComputeSettings.resolved(device)")
    set_tf32(settings.tf32)
    for net in networks:
        if settings.channels_last:
            net.to(memory_format=torch.channels_last)
        if settings.precision != "fp32":
            set_conv_precision(net, settings.precision)


__all__ = [
    "CHANNELS_LAST_BY_DEFAULT", "ComputeSettings", "IRRELEVANT_COMPILE_LOGS", "quiet_compile_logs", "tune_cpu_allocator", "PRECISIONS", "apply_compute_settings", "set_conv_precision", "set_tf32",
]
