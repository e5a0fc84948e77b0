"""Test accuracy, with the test-time augmentation a stage asks for.

* ``flip`` (post 8 step 9): the mean of the logits of each image and its mirror.
* ``multiview`` (airbench94): weights 1/2 for that flip pair, and 1/4 for each flip pair of the
  image translated by one pixel up-left and down-right (reflect padding): 6 views.
* ``multiview_mean`` (hiverge): the same 6 views, each weighted 1/6.

``tta_fraction`` below 1 makes either selective (hiverge's record): one plain pass over the whole
test set, then the views only for that share of the images, the least confident (lowest softmax
maximum) after the plain pass; the others keep their plain logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# each TTA mode and the forward passes it makes per test image
TTA_VIEWS = {"none": 1, "flip": 2, "multiview": 6, "multiview_mean": 6}
TTA_MODES = tuple(TTA_VIEWS)


def flip_mean(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (net(x).float() + net(x.flip(3)).float())


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift content by (dy, dx) pixels, filling the border by reflection."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[2:]
    return padded[:, :, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def tta_logits(net: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    if tta == "none":
        return net(x).float()
    if tta == "flip":
        return flip_mean(net, x)
    if tta in ("multiview", "multiview_mean"):
        shifted = 0.5 * (flip_mean(net, translate(x, -1, -1)) + flip_mean(net, translate(x, 1, 1)))
        plain_weight = 0.5 if tta == "multiview" else 1 / 3
        return plain_weight * flip_mean(net, x) + (1 - plain_weight) * shifted
    raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")


def selective_tta_logits(net: nn.Module, batches, *, to_device, autocast, tta: str, fraction: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the whole test set: plain logits, and ``tta``'s for the
    ``int(fraction * n)`` images the plain pass was least confident about, in batches of the
    test batches' size."""
    images, labels, logits = [], [], []
    for x, y in batches:
        x, y = to_device(x, y)
        with autocast():
            logits.append(net(x).float())
        images.append(x)
        labels.append(y)
    size, images, logits = len(labels[0]), torch.cat(images), torch.cat(logits)
    confidence = logits.softmax(1).amax(1)
    unsure = confidence.topk(int(fraction * len(logits)), largest=False).indices
    for start in range(0, len(unsure), size):
        chosen = unsure[start:start + size]
        with autocast():
            logits[chosen] = tta_logits(net, images[chosen], tta)
    return logits, torch.cat(labels)


def _batch_logits(net: nn.Module, batches, to_device, autocast, tta: str, tta_fraction: float):
    """(logits, labels) per test batch; for selective TTA, one pair for the whole set."""
    if tta != "none" and tta_fraction < 1:
        yield selective_tta_logits(net, batches, to_device=to_device, autocast=autocast, tta=tta,
                                   fraction=tta_fraction)
        return
    for x, y in batches:
        x, y = to_device(x, y)
        with autocast():
            logits = tta_logits(net, x, tta)
        yield logits, y


@torch.no_grad()
def evaluate(net: nn.Module, batches, *, to_device, autocast, tta: str = "none", tta_fraction: float = 1.0
             ) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``batches``; ``to_device`` moves one (x, y) batch.
    ``tta_fraction`` < 1: selective TTA (``selective_tta_logits``)."""
    was_training = net.training
    net.eval()
    loss_sum, correct, count = 0.0, 0, 0  # tensors after the first batch: one host read at the end
    for logits, y in _batch_logits(net, batches, to_device, autocast, tta, tta_fraction):
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum")
        correct = correct + (logits.argmax(1) == y).sum()
        count += len(y)
    net.train(was_training)
    loss_sum, correct = torch.stack([torch.as_tensor(loss_sum, dtype=torch.float64),
                                     torch.as_tensor(correct, dtype=torch.float64)]).tolist()
    return loss_sum / count, correct / count
