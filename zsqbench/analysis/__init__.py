"""Diagnostics that read a trial's state without changing it (curvature, ...).

Nothing here trains: every analysis leaves parameters, buffers, quantizer ranges, gradients
and the global RNG streams exactly as it found them, so it can run between epochs of a
real trial without altering its numbers. :mod:`~zsqbench.analysis.hutchinson` is the generic
estimator; :mod:`~zsqbench.analysis.hessian` applies it to a trial's student loss;
:mod:`~zsqbench.analysis.trials` runs it over saved trial folders.
"""
