"""Top-1 accuracy on a test set held in memory."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.inference_mode()
def top1(model: nn.Module, inputs: Tensor, labels: Tensor, device: torch.device, batch_size: int = 500) -> float:
    """Top-1 in percent. The model is put in eval mode (quantizer ranges are not touched)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device, non_blocking=True)
        correct += (model(x).argmax(dim=1) == y).sum()
    return 100.0 * correct.item() / len(inputs)
