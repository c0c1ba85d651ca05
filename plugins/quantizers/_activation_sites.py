"""Where a model applies its ReLUs, from its torch.fx graph: the uniform quantizer puts one activation
quantizer in place of every ``nn.ReLU``/``nn.ReLU6`` *module*, which is only right when each module is
called at one place of the forward.

Two common ways to write a network break that silently: torchvision's BasicBlock calls one ``relu``
module after ``bn1`` and again after the residual sum (one quantizer would track one range for two
different tensors), and a forward calling ``F.relu``/``torch.relu`` has activations no module stands for
(they would stay in float, so the student would not be the W/A-bit network it is reported as). Both are
refused in one line, naming the place and the fix; a model torch.fx cannot trace is not checked (its
modules are quantized as they are).
"""

from __future__ import annotations

import re
from collections import Counter

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from zsqbench.errors import UserError

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
#: ReLUs written as functions or tensor methods: activations without a module to quantize
ACTIVATION_FUNCTIONS = (F.relu, F.relu_, F.relu6, torch.relu, torch.relu_)
ACTIVATION_METHODS = ("relu", "relu_")


def check_activation_sites(model: nn.Module) -> None:
    """Raises a one-line :class:`UserError` when an activation module is called at several places of
    the forward or a ReLU is applied as a function; returns quietly when the model cannot be traced."""
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True  # each node's source line, for the message
    try:
        graph = tracer.trace(model)
    except Exception:  # dynamic control flow, custom tracing errors: nothing to check against
        return
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes
                    if node.op == "call_module" and isinstance(modules.get(str(node.target)), ACTIVATION_MODULES))
    shared = sorted(name for name, count in calls.items() if count > 1)
    if shared:
        raise UserError(f"{type(model).__name__} calls its activation module '{shared[0]}' at {calls[shared[0]]} "
                        f"places of its forward ({len(shared)} such module(s)); one quantizer would track one range "
                        "for all of them: give each place its own nn.ReLU (as plugins/models/torchvision_resnet.py "
                        "does for torchvision's BasicBlock)")
    functional = [node for node in graph.nodes
                  if (node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS)
                  or (node.op == "call_method" and node.target in ACTIVATION_METHODS)]
    if functional:
        where = _place(functional[0])
        raise UserError(f"{type(model).__name__} applies ReLU as a function at {len(functional)} place(s) of its "
                        f"forward (first: {where}), which the uniform quantizer cannot quantize (it replaces nn.ReLU "
                        "and nn.ReLU6 modules): use an nn.ReLU module at each place")


def _place(node: torch.fx.Node) -> str:
    """The source line of the call ("net.py:12, in forward"), from the node's recorded stack."""
    found = [frame for frame in re.findall(r'File "([^"]+)", line (\d+), in (\w+)', node.stack_trace or "")
             if "/torch/" not in frame[0]]  # the model's own frames, not the tracer's
    if not found:
        return f"node '{node.name}'"
    path, line, function = found[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line}, in {function}"
