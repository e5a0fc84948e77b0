"""Muon for conv filters (airbench94_muon, 2024; hiverge's record, 2025): the filters take
orthogonalised momentum steps.

Two ways to orthogonalise, one update rule around them:

* ``batched = False`` (airbench94_muon): ``torch.optim.Muon``, which steps 2-D parameters only,
  so each filter bank (out, in, k, k) is stepped as its (out, in*k*k) matrix: before the step
  the filters' weights and gradients are copied into those matrices, after it the matrices are
  copied back (a view cannot be shared: channels_last filters are not contiguous as NCHW).
  torch runs its Newton-Schulz iteration in bf16 whatever the run's precision.
* ``batched = True`` (hiverge): every bank's Nesterov momentum, flattened, is zero-padded to the
  largest bank's shape and the stack goes through one batched Newton-Schulz iteration
  (``newton_schulz``), in ``ns_dtype`` (the run's compute precision: fp32 on a CPU without fast
  bf16, where torch's bf16 iteration is the slowest part of a Muon step). Zero padding commutes
  with the iteration (X X^T and its powers keep the padding zero), so each bank gets the step it
  would get alone, up to rounding.

torch's Muon keeps momentum as an average, buf <- m buf + (1 - m) g, where the records sum,
buf <- m buf + g; the two differ by the factor 1 - m, which the Newton-Schulz iteration divides
out (it starts by normalising its input), so the steps are the same. Its learning-rate
adjustment sqrt(max(1, out / (in*k*k))) is 1 for every filter of these nets.

Around either: each bank is re-normalised to Frobenius norm sqrt(out) before the step (so only
a bank's direction is learnt): every step in airbench94_muon, every ``renorm_every`` steps in
hiverge's, where the interval grows linearly over the run (from 2 to 17); and after the step a
decoupled weight decay, w <- w (1 - lr x weight_decay) (hiverge).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

OPTIMIZER_KINDS = ("sgd", "muon")  # [optimizer] kind
# torch.optim.Muon's quintic coefficients, which airbench94_muon uses
TORCH_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def muon_available() -> bool:
    return hasattr(torch.optim, "Muon")


def require_muon() -> None:
    if not muon_available():
        raise UserError(f'optimizer.kind = "muon" needs torch.optim.Muon (torch 2.9 or later), which torch '
                        f"{torch.__version__} lacks; install a newer torch")


def newton_schulz(stack: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float = 1e-7) -> torch.Tensor:
    """The quintic Newton-Schulz iteration on a batch of matrices (B, rows, cols), each first
    divided by its Frobenius norm: X <- aX + (bA + cA^2)X with A = X X^T, on the wide orientation."""
    a, b, c = coefficients
    x = stack / stack.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    tall = x.shape[1] > x.shape[2]
    if tall:
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + torch.baddbmm(gram, gram, gram, beta=b, alpha=c) @ x
    return x.mT if tall else x


def renorm_interval(first: int, last: int, progress: float) -> int:
    """Steps between two re-normalisations at ``progress`` (0..1) of the run: ``first`` growing
    linearly to ``last`` (hiverge: 2 + int(15 x progress))."""
    return first + int((last - first) * progress)


class FilterMuon:
    """Muon over conv filter banks, each stepped as its flattened matrix (see the module's notes)."""

    def __init__(self, filters: list[torch.nn.Parameter], *, lr: float, momentum: float, ns_steps: int,
                 lr_scale: float, ns_coefficients: tuple[float, float, float] = TORCH_NS_COEFFICIENTS,
                 weight_decay: float = 0.0, renorm_every: tuple[int, int] = (1, 1), total_steps: int = 1,
                 batched: bool = False, ns_dtype: torch.dtype = torch.float32):
        self.filters = list(filters)
        self.momentum, self.ns_steps, self.ns_coefficients = momentum, ns_steps, tuple(ns_coefficients)
        self.weight_decay, self.renorm_every, self.total_steps = weight_decay, tuple(renorm_every), total_steps
        self.batched, self.ns_dtype = batched, ns_dtype
        self.steps = self.last_renorm = 0
        if batched:
            self.buffers = [torch.zeros_like(f, memory_format=torch.contiguous_format) for f in self.filters]
            self.param_groups = [{"lr": lr, "lr_scale": lr_scale}]
            return
        require_muon()
        self.matrices = [f.detach().reshape(f.shape[0], -1).clone() for f in self.filters]
        self.muon = torch.optim.Muon(self.matrices, lr=lr, momentum=momentum, nesterov=True, ns_steps=ns_steps,
                                     ns_coefficients=self.ns_coefficients, weight_decay=0.0)
        self.param_groups = self.muon.param_groups
        for group in self.param_groups:
            group["lr_scale"] = lr_scale

    def _renormalises_now(self) -> bool:
        interval = renorm_interval(*self.renorm_every, self.steps / max(self.total_steps, 1))
        if self.steps - self.last_renorm < interval:
            return False
        self.last_renorm = self.steps
        return True

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        banks = [bank for bank in self.filters if bank.grad is not None]
        if not banks:
            return
        if self._renormalises_now():
            for bank in banks:
                bank.mul_(math.sqrt(bank.shape[0]) / bank.norm())
        lr = self.param_groups[0]["lr"]
        if self.batched:
            self._batched_step(banks, lr)
        else:
            self._torch_step()
        if self.weight_decay:
            torch._foreach_mul_(banks, 1.0 - lr * self.weight_decay)

    def _torch_step(self) -> None:
        stepped = []
        for bank, matrix in zip(self.filters, self.matrices):
            if bank.grad is None:
                matrix.grad = None
                continue
            matrix.copy_(bank.reshape(matrix.shape))
            matrix.grad = bank.grad.reshape(matrix.shape)
            stepped.append((bank, matrix))
        self.muon.step()
        for bank, matrix in stepped:
            bank.copy_(matrix.view(bank.shape))

    def _batched_step(self, banks: list[torch.nn.Parameter], lr: float) -> None:
        buffers = [buf for bank, buf in zip(self.filters, self.buffers) if bank.grad is not None]
        directions = []
        for bank, buf in zip(banks, buffers):  # summed momentum, then Nesterov's look-ahead
            buf.mul_(self.momentum).add_(bank.grad)
            directions.append((bank.grad + self.momentum * buf).reshape(bank.shape[0], -1))
        rows, cols = max(d.shape[0] for d in directions), max(d.shape[1] for d in directions)
        stack = directions[0].new_zeros((len(directions), rows, cols), dtype=self.ns_dtype)
        for padded, d in zip(stack, directions):
            padded[:d.shape[0], :d.shape[1]] = d
        stack = newton_schulz(stack, self.ns_coefficients, self.ns_steps)
        for bank, padded, d in zip(banks, stack, directions):
            bank.sub_(padded[:d.shape[0], :d.shape[1]].reshape(bank.shape).to(bank.dtype), alpha=lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for bank in self.filters:
            bank.grad = None
        if not self.batched:
            self.muon.zero_grad(set_to_none=set_to_none)
