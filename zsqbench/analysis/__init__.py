"""Diagnostics that read a trial's state without changing it (curvature, ...).

Nothing here trains: every analysis leaves parameters, buffers, quantizer ranges, gradients
and the global RNG streams exactly as it found them, so it can run between epochs of a
real trial without altering its numbers.
"""

from zsqbench.analysis.hessian import (
    GroupTrace,
    TraceEstimate,
    fixed_generator_batch,
    hutchinson_trace,
    model_state_fingerprint,
    parameter_groups,
    rademacher_probe,
    state_differences,
    student_loss_closure,
    trial_hessian_trace,
)

__all__ = [
    "GroupTrace",
    "TraceEstimate",
    "fixed_generator_batch",
    "hutchinson_trace",
    "model_state_fingerprint",
    "parameter_groups",
    "rademacher_probe",
    "state_differences",
    "student_loss_closure",
    "trial_hessian_trace",
]
