"""Where an iteration's time goes besides the network passes: operator calls and the share of time
spent outside convolutions, from ``torch.profiler``.

At the papers' small batches (16) an iteration is dominated by per-op costs — fake quantization, the
BN-statistics loss over 21 layers, attention losses, optimizer steps, Python — and on a GPU by
kernel launches, not by FLOPs. ``zsqbench bench`` therefore reports, for one profiled iteration:

* ``ops_per_step``: the operator calls the iteration makes, counted once each: ``aten::`` events with
  no ``aten::`` ancestor (a ``conv2d`` that dispatches to ``convolution`` and then to a backend kernel
  counts once; an autograd node's ops count once each). Under ``--compile`` only the ATen calls are
  counted (the eager remainder, and the library kernels a compiled graph calls, such as convolutions):
  the kernels inductor generated are not operators, so the count drops by more than the work does;
* ``kernels_per_step``: on CUDA, the device kernels launched (None on CPU);
* ``outside_conv_share``: the fraction of the profiled time outside convolutions, from *self* times
  (so nothing is counted twice): CPU self time of every event on CPU, kernel time on CUDA, with every
  event whose name mentions a convolution (forward, backward, transposed) counted as convolution.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

CONV_MARKERS = ("conv",)


def _is_conv(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in CONV_MARKERS)


def _top_level_aten(event: Any) -> bool:
    if not event.name.startswith("aten::"):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's native backend logs start/stop lines (and, without a GPU, a device-count error)
    straight to file descriptor 2; a benchmark's output must not carry them. Python's own
    ``sys.stderr`` is flushed first and restored after, so errors raised inside still show."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profile_step(step: Callable[[], Any], device: torch.device, sync: Callable[[], None] = lambda: None
                 ) -> dict[str, Any]:
    """Run ``step`` once under the profiler; its op count, kernel count and outside-convolution share."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _native_stderr_silenced(), profile(activities=activities) as prof:
        step()
        sync()
    events = list(prof.events())
    ops = sum(1 for e in events if _top_level_aten(e))
    if cuda:
        timed = [e for e in events if e.device_type == DeviceType.CUDA]
        kernels: int | None = len(timed)
        total = sum(e.self_device_time_total for e in timed)
        conv = sum(e.self_device_time_total for e in timed if _is_conv(e.name))
    else:
        timed = [e for e in events if e.device_type == DeviceType.CPU]
        kernels = None
        total = sum(e.self_cpu_time_total for e in timed)
        conv = sum(e.self_cpu_time_total for e in timed if _is_conv(e.name))
    share = 1.0 - conv / total if total > 0 else None
    return {"ops_per_step": ops, "kernels_per_step": kernels, "outside_conv_share": share}


__all__ = ["profile_step"]
