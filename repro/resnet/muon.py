"""Muon for conv filters (airbench94_muon, 2024): the filters take orthogonalised momentum steps.

``torch.optim.Muon`` steps 2-D parameters only, so each filter bank (out, in, k, k) is stepped
as its (out, in*k*k) matrix: before the step the filters' weights and gradients are copied into
those matrices, after it the matrices are copied back (a view cannot be shared: channels_last
filters are not contiguous as NCHW). As in the record, every bank is first re-normalised to
Frobenius norm sqrt(out), so only the direction of a filter bank is learnt.

torch's Muon keeps momentum as an average, buf <- m buf + (1 - m) g, where the record sums,
buf <- m buf + g; the two differ by the factor 1 - m, which the Newton-Schulz iteration divides
out (it starts by normalising its input), so the steps are the same. Its learning-rate
adjustment sqrt(max(1, out / (in*k*k))) is 1 for every filter of these nets.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

OPTIMIZER_KINDS = ("sgd", "muon")  # [optimizer] kind


def muon_available() -> bool:
    return hasattr(torch.optim, "Muon")


def require_muon() -> None:
    if not muon_available():
        raise UserError(f'optimizer.kind = "muon" needs torch.optim.Muon (torch 2.9 or later), which torch '
                        f"{torch.__version__} lacks; install a newer torch")


class FilterMuon:
    """``torch.optim.Muon`` over conv filter banks, each stepped as its flattened matrix."""

    def __init__(self, filters: list[torch.nn.Parameter], *, lr: float, momentum: float, ns_steps: int,
                 lr_scale: float, renormalise: bool = True):
        require_muon()
        self.filters, self.renormalise = list(filters), renormalise
        self.matrices = [f.detach().reshape(f.shape[0], -1).clone() for f in self.filters]
        self.muon = torch.optim.Muon(self.matrices, lr=lr, momentum=momentum, nesterov=True, ns_steps=ns_steps,
                                     weight_decay=0.0)
        for group in self.muon.param_groups:
            group["lr_scale"] = lr_scale

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups

    @torch.no_grad()
    def step(self) -> None:
        stepped = []
        for bank, matrix in zip(self.filters, self.matrices):
            if bank.grad is None:
                matrix.grad = None
                continue
            if self.renormalise:
                bank.mul_(math.sqrt(bank.shape[0]) / bank.norm())
            matrix.copy_(bank.reshape(matrix.shape))
            matrix.grad = bank.grad.reshape(matrix.shape)
            stepped.append((bank, matrix))
        self.muon.step()
        for bank, matrix in stepped:
            bank.copy_(matrix.view(bank.shape))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for bank in self.filters:
            bank.grad = None
        self.muon.zero_grad(set_to_none=set_to_none)
