"""The gate and the measurements of an integer export (a deployable profile; docs/deployment.md).

**The rounding bound.** ONNX Runtime's integer kernels compute the student's integer arithmetic exactly
(the same codes, the same int32 accumulators) except in three float roundings: the requantization
multiplier fl(s_x·s_w/s_y) against the student's chain of float products, the float32 conversion of
accumulators, and QuantizeLinear's fl(x/s) against the student's fl(S·x) − Z. Each is a few ulps, so an
output code can differ only where the exact value lies within a few ulps of a rounding tie, and then by
one step. Images without such a code get the student's logits to float rounding (the classifier's
accumulator times one float scale): ``rounding_tol`` = 1e-4 × (1 + max |logit|), as for the float graphs
(:mod:`zsqbench.export.runtime`). So the export fails when

- the median image's largest |logit difference| exceeds ``rounding_tol`` (every image moved: a wrong
  scale, zero point, bias or layer, never a tie);
- predictions differ on a clear margin (beyond a logit tie) on more than ``100 − min_agreement`` % of
  the images (the probe of activation ties in :mod:`zsqbench.export.ties` reads float QuantizeLinear
  inputs, which integer operators do not have, so no disagreement is put down to a code tie here);
- ONNX Runtime's top-1 is more than ``INTEGER_MAX_TOP1_DIFF`` points from the student's.

Latency: every pair of batch size (1, 100) and ONNX Runtime threads (1, 2), the integer model and the FP32
teacher's graph interleaved in one process (:func:`zsqbench.export.runtime.latency`).
"""

from __future__ import annotations

from typing import Any

from zsqbench.export.runtime import Agreement, latency, session
from zsqbench.runs.result_file import LATENCY_HEADLINE

INTEGER_MAX_TOP1_DIFF = 0.1
LATENCY_BATCHES = (1, 100)
LATENCY_THREADS = (1, 2)


def integer_failures(a: Agreement, min_agreement: float) -> list[str]:
    """Why the integer model does not reproduce the student within the rounding bound (empty: it does)."""
    problems = []
    if a.systematic:
        problems.append(f"the median image's logits differ by {a.median_abs_logit_diff:.3g} (> rounding bound "
                        f"{a.rounding_tol:.3g}): a systematic difference, not rounding")
    if a.agreement_beyond_rounding < min_agreement:
        problems.append(f"predictions differ on a clear margin on {a.unexplained_disagreements} of {a.images} images "
                        f"(agreement {a.agreement_beyond_rounding:.3f} % < {min_agreement} %)")
    if abs(a.onnx_top1 - a.student_top1) > INTEGER_MAX_TOP1_DIFF:
        problems.append(f"ONNX Runtime's top-1 {a.onnx_top1:.2f} % is {a.onnx_top1 - a.student_top1:+.2f} points "
                        f"from the student's (more than {INTEGER_MAX_TOP1_DIFF})")
    return problems


def latency_grid(model: bytes, fp_model: bytes, images: Any, runs: int) -> list[dict[str, Any]]:
    """Milliseconds per batch of the integer model and the FP32 teacher at each batch size and thread
    count (medians of interleaved runs; batch 1 gets ten times the runs, each being short)."""
    rows = []
    for threads in LATENCY_THREADS:
        sessions = {"student": session(model, threads), "fp32_teacher": session(fp_model, threads)}
        for batch in LATENCY_BATCHES:
            sample = images[: min(batch, len(images))].numpy()
            ms = latency(sessions, sample, runs * (10 if batch == 1 else 1))
            rows.append({"batch": len(sample), "threads": threads, "student_ms": ms["student"],
                         "fp32_teacher_ms": ms["fp32_teacher"],
                         "student_over_fp32": round(ms["student"] / ms["fp32_teacher"], 3)})
    return rows


def headline(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The grid's row at batch 100 and 2 threads (None when the test set has fewer than 100 images:
    then the largest batch at 2 threads)."""
    wanted = [r for r in rows if r["threads"] == LATENCY_HEADLINE["threads"]]
    return max(wanted, key=lambda r: r["batch"]) if wanted else None
