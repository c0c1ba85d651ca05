"""ONNX Runtime (CPU): the exported model against the student, its kernels, and its latency.

**Tolerance, and why.** ONNX Runtime and PyTorch agree only to float rounding: convolutions sum in
another order, BN is evaluated by another formula, weights are dequantized as (c − zp)·fl(1/S) instead
of (q + Z)/S, and QuantizeLinear rounds fl(x/scale) where the student rounds fl(fl(S·x) − Z) (see
:mod:`zsqbench.export.mapping`). Each of these is about one ulp; an activation that close to a rounding
boundary (m + ½) takes the neighbouring code, one grid step away, and that step propagates to the
logits of its image. Measured on ResNet-20 W4A4 over the CIFAR-10 test set: 27 of 10,000 images had
logits more than 1e-3 apart and 1 prediction differed; at W8A8 (finer grid, more boundaries) 4,037 and
8; a CPU-preset AdaDFQ+AKT W4A4 student, 17 predictions. PyTorch against itself (channels-last vs NCHW)
showed 5 and 1, 898 and 1. So the export fails when:

- fewer than ``MIN_AGREEMENT`` % of the predictions agree (a wrong scale, zero point, range or layer
  changes far more than 0.5 % of them), or
- the median image's largest |logit difference| exceeds ``TYPICAL_LOGIT_TOL`` × (1 + max |logit|):
  a systematic error moves every image, rounding moves a few.

A model with BN folded (``--fold-bn``) is checked twice: its graph with ONNX Runtime's optimizations
off (float kernels: both criteria, as above), and as ONNX Runtime runs it by default, with integer
kernels that round the bias to int32 and requantize in fixed point: that run's numbers are the
export's, and only its agreement is checked, since those kernels change every image's logits a
little by design (measured: 99.37 % agreement at W8A8, 92.14 % at W4A4; README, "Deployment").

The largest |logit difference| over all images is reported, not bounded: one flipped code moves the
logits of its image by up to a grid step's effect, which is what a flip is.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from zsqbench.export.graph import INPUT

#: Percent of images whose predicted class must be the same. 99.5, not 99.9: a CPU-preset AdaDFQ+AKT W4A4
#: student agreed on 99.83 % of CIFAR-10 (17 of 10,000 images, top-1 87.74 vs 87.77) and a W8A8 one on
#: 99.90 %, all from rounding ties; a wrong scale, zero point or layer changes far more (and moves the
#: median image's logits, the second criterion).
MIN_AGREEMENT = 99.5
TYPICAL_LOGIT_TOL = 1e-4  # times (1 + max |student logit|), for the median image


def session(model: bytes | Path, threads: int, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (one inter-op thread), quiet."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_logits(sess: ort.InferenceSession, inputs: Tensor, batch_size: int) -> np.ndarray:
    return np.concatenate([sess.run(None, {INPUT: inputs[i : i + batch_size].numpy()})[0]
                           for i in range(0, len(inputs), batch_size)])


@torch.inference_mode()
def torch_logits(model: nn.Module, inputs: Tensor, batch_size: int) -> np.ndarray:
    model.eval()
    return torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]).numpy()


@dataclass(frozen=True)
class Agreement:
    """The exported model's logits against the student's, on one test set."""

    images: int
    onnx_top1: float
    student_top1: float
    agreement: float  # percent of images with the same predicted class
    disagreements: int
    max_abs_logit_diff: float
    median_abs_logit_diff: float  # the median image's largest |difference|
    inexact_images: int  # images with some |difference| above 1e-3
    logit_scale: float  # max |student logit|

    def failures(self, min_agreement: float = MIN_AGREEMENT, systematic: bool = True) -> list[str]:
        """Why the export does not reproduce the student (empty: it does). ``systematic=False`` skips
        the median check: integer kernels round every image's arithmetic a little (see graph.py)."""
        problems = []
        if self.agreement < min_agreement:
            problems.append(f"predictions agree on {self.agreement:.3f} % of the images (< {min_agreement} %)")
        typical = TYPICAL_LOGIT_TOL * (1 + self.logit_scale)
        if systematic and self.median_abs_logit_diff > typical:
            problems.append(f"the median image's logits differ by {self.median_abs_logit_diff:.3g} "
                            f"(> {typical:.3g}): a systematic difference, not rounding")
        return problems

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compare(onnx_out: np.ndarray, student_out: np.ndarray, labels: Tensor) -> Agreement:
    y = labels.numpy()
    diff = np.abs(onnx_out.astype(np.float64) - student_out.astype(np.float64)).max(axis=1)
    same = onnx_out.argmax(1) == student_out.argmax(1)
    return Agreement(
        images=len(y), onnx_top1=100.0 * float((onnx_out.argmax(1) == y).mean()),
        student_top1=100.0 * float((student_out.argmax(1) == y).mean()), agreement=100.0 * float(same.mean()),
        disagreements=int((~same).sum()), max_abs_logit_diff=float(diff.max()),
        median_abs_logit_diff=float(np.median(diff)), inexact_images=int((diff > 1e-3).sum()),
        logit_scale=float(np.abs(student_out).max()),
    )


def runtime_kernels(model: bytes, threads: int) -> dict[str, int]:
    """Node counts of the graph ONNX Runtime actually runs (after its optimizations, e.g. QDQ ->
    QLinearConv): which layers got integer kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def latency(sessions: dict[str, ort.InferenceSession], batch: np.ndarray, runs: int, warmup: int = 3
            ) -> dict[str, float]:
    """Median milliseconds per batch of each session, the runs interleaved (a busy machine slows
    all of them alike)."""
    feed = {INPUT: batch}
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feed)
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: round(statistics.median(t), 3) for name, t in times.items()}
