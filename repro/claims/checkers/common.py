"""What every checker shares: the run context, the finding it returns, and the statistics.

Verdicts on Monte Carlo numbers are decided in units of the standard error: a claim is
accepted when the estimate lies within ``Z_ACCEPT`` standard errors of the claimed value.

Every finding names its ``basis``, what the verdict rests on:

- ``computed``: a number this program produced (Monte Carlo, autograd, a counted model, a
  FLOP count, a training run, arithmetic on the blog's own figures);
- ``text``: what a text says: the blog (a figure from the stage configs, a search of the
  post's sentences), a paper (a table entry, a figure's axes) or the answer itself;
- ``judgement``: a reading of the answer that no program here computes (an answer that
  addresses a different question, a vague mechanism, a right statement later contradicted).

When a verdict needs more than one kind, the basis is the least mechanical one it needs
(judgement over text over computed), so ``computed`` means computed throughout.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

YES, NO, PARTLY, NA = "✓", "✗", "~", "n.a."
ERROR = "error"  # the checker raised: no verdict, counted apart from n.a.
VERDICTS = (YES, NO, PARTLY, NA, ERROR)
COMPUTED, TEXT, JUDGEMENT = "computed", "text", "judgement"
BASES = (COMPUTED, TEXT, JUDGEMENT)
Z_ACCEPT = 4.0


@dataclass
class Finding:
    """What a checker found for one claim."""

    measured: str
    verdict: str
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)
    basis: str | None = None  # one of BASES; a checker that leaves it out is reported as an error


@dataclass
class Context:
    """Options of one run plus a memo, so claims that share a simulation compute it once."""

    seed: int = 0
    quick: bool = False
    log_dir: str = "logs"
    records: list[dict] | None = None  # run records already read (several logs together); None: read log_dir
    blog_text: str | None = None  # a file with the full post-1 text (e.g. transcript 004); None: the bundled quotes
    _memo: dict = field(default_factory=dict, repr=False)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def rng(self, tag: str) -> np.random.Generator:
        """A generator per simulation, so results do not depend on which claims ran before."""
        return np.random.default_rng([self.seed, zlib.crc32(tag.encode())])

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


@dataclass(frozen=True)
class Estimate:
    mean: float
    se: float
    n: int

    def z(self, claimed: float) -> float:
        """Distance from the claimed value in standard errors (inf when SE is 0 and they differ)."""
        gap = self.mean - claimed
        if self.se == 0:
            return 0.0 if gap == 0 else math.copysign(math.inf, gap)
        return gap / self.se

    def __str__(self) -> str:
        return f"{fmt(self.mean)} ± {fmt(self.se)}"


def mc_mean(samples) -> Estimate:
    """Sample mean and its standard error (samples along the first axis)."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    n = x.size
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Estimate(float(x.mean()), se, n)


def difference(a: Estimate, b: Estimate) -> Estimate:
    return Estimate(a.mean - b.mean, math.hypot(a.se, b.se), min(a.n, b.n))


def loglog_slope(xs: Sequence[float], estimates: Sequence[Estimate]) -> Estimate:
    """Weighted least-squares slope of log(mean) against log(x), with its standard error.

    The SE of log(mean) is se/mean (delta method); points are weighted by its inverse square.
    """
    lx = np.log(np.asarray(xs, dtype=np.float64))
    ly = np.array([math.log(e.mean) for e in estimates])
    sy = np.array([max(e.se / e.mean, 1e-15) for e in estimates])
    w = 1.0 / sy**2
    xbar = np.sum(w * lx) / np.sum(w)
    sxx = np.sum(w * (lx - xbar) ** 2)
    slope = float(np.sum(w * (lx - xbar) * ly) / sxx)
    return Estimate(slope, float(math.sqrt(1.0 / sxx)), len(xs))


def exact_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x for deterministic values."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def accept(z: float, k: float = Z_ACCEPT) -> bool:
    return abs(z) < k


def verdict_by_z(zs: Sequence[float], k: float = Z_ACCEPT) -> str:
    """✓ when every comparison lies within k SE of the claim, ✗ otherwise."""
    return YES if all(accept(z, k) for z in zs) else NO


def fmt(x: float, digits: int = 4) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if x is None or not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_z(z: float) -> str:
    return "z=inf" if math.isinf(z) else f"z={z:+.1f}"


def worst_z(zs: Sequence[float]) -> float:
    return max(zs, key=abs)


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
