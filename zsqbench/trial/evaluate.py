"""Top-1 accuracy, batch by batch: memory stays bounded by the batch size whatever the set's size."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zsqbench.assets.test_set import NormalizedImages
from zsqbench.progress import ProgressSink


def _batch(inputs: Tensor | NormalizedImages, start: int, stop: int, device: torch.device) -> Tensor:
    if isinstance(inputs, NormalizedImages):
        return inputs.batch(start, stop, device)  # uint8 to the device, normalized there
    return inputs[start:stop].to(device, non_blocking=True)


@torch.inference_mode()
def top1(model: nn.Module, inputs: Tensor | NormalizedImages, labels: Tensor, device: torch.device,
         batch_size: int = 500, progress: ProgressSink | None = None, what: str = "evaluating",
         images: int | None = None) -> float:
    """Top-1 in percent over ``inputs`` (float tensors, or a test set's uint8 images normalized per
    batch), or over their first ``images`` (a budget's ``eval_images``). The model is put in eval
    mode (quantizer ranges are not touched). With ``progress``, a bar advances per batch
    (``teacher-eval`` on 50,000 ImageNet images)."""
    model.eval()
    n = len(inputs) if images is None else min(images, len(inputs))
    if progress is not None:
        progress.start(what, n)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x = _batch(inputs, start, stop, device)
        y = labels[start:stop].to(device, non_blocking=True)
        correct += (model(x).argmax(dim=1) == y).sum()
        if progress is not None:
            progress.advance(stop)
    return 100.0 * correct.item() / n
