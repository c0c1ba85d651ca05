"""Every hook zsqbench offers to plugins.

Each hook is a *registration* hook: the plugin receives a ``register`` callback and
calls it once per thing it provides. Adding a new kind of plugin means adding one
function here and one registry in :mod:`zsqbench.api.plugins`.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("zsqbench")
hookimpl = pluggy.HookimplMarker("zsqbench")


@hookspec
def register_models(register: Callable) -> None:
    """Register pretrained FP teachers (:class:`zsqbench.api.interfaces.TeacherModel`)."""


@hookspec
def register_quantizers(register: Callable) -> None:
    """Register quantizer classes (:class:`zsqbench.api.interfaces.Quantizer` subclasses)."""


@hookspec
def register_generators(register: Callable) -> None:
    """Register data-source classes (:class:`zsqbench.api.interfaces.Generator` subclasses)."""


@hookspec
def register_losses(register: Callable) -> None:
    """Register student-loss classes (:class:`zsqbench.api.interfaces.DistillationLoss` subclasses)."""


@hookspec
def register_executors(register: Callable) -> None:
    """Register executor classes (:class:`zsqbench.api.interfaces.Executor` subclasses) that run trials."""
