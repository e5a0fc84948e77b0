"""The experiment: claim A from theory alone, claim B from training, with controls.

Every check is a row (name, measured, predicted, tolerance, verdict, why). Verdicts are
PASS/FAIL against the stated tolerance; INFO rows report a number that is not a test.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from . import theory
from .train import TrainConfig, TrainResult, build_model, seconds_per_step, train

SMALL_INIT = 1e-3  # Bao et al. use N(0, 1e-4^2); anything this small makes D(0) ~ 0
DEFAULT_RATIOS = (1e-3, 1e-2, 1e-1)  # lam / s_k
# The sweep's optimiser: "momentum" = SGD heavy ball tuned to the curvature, adaptive restart, stop
# on convergence, full batch through C; "gd" = plain GD (no momentum, a fixed step count from the
# balance mode's decay rate, nn.MSELoss over the rows).
OPTIMIZERS = ("momentum", "gd")
LR_FRACTION = 0.5  # momentum: lr = LR_FRACTION / (curvature bound); 1.0 diverged on power-law spectra
SWEEP_MAX_STEPS = 100_000  # default caps (steps) per run; the sweep stops on convergence far earlier
# lam = 0 controls: plain GD (no momentum: it would break the conservation of D), so slow directions
# may need more than this; the cap scales with the O(m^2 k) cost of a step, 10k-30k steps.
CONTROL_MAX_STEPS = (10_000, 30_000)
MINIBATCH_MAX_STEPS = 20_000


@dataclass
class Check:
    name: str
    measured: float
    predicted: float | str
    tolerance: str
    verdict: str  # PASS, FAIL or INFO
    why: str

    def as_record(self) -> dict:
        return asdict(self)


@dataclass
class Settings:
    k: int = 5
    lams: tuple = ()  # absolute lam values; empty: DEFAULT_RATIOS * s_k
    default_sweep: bool = True  # lams came from ratios, not from the user: points may be skipped
    lr: float | None = None  # torch lr of the sweep; None: from the curvature (see sweep_optimizer)
    steps: int | None = None  # per lam > 0 run, fixed; None: stop on convergence
    max_steps: int | None = None  # cap on every run; None: the defaults below
    optimizer: str = "momentum"  # the sweep's: see OPTIMIZERS
    batch_size: int = 50  # of the minibatch (noise-floor) run; the sweep is full batch
    seed: int = 0
    dtype: torch.dtype = torch.float64
    trainer: str = "plain"
    log_dir: str = "logs"


@dataclass
class SweepPoint:
    lam: float
    weight_decay: float
    steps: int
    result: TrainResult
    singular_values: np.ndarray
    predicted_singular_values: np.ndarray


@dataclass
class Report:
    checks: list = field(default_factory=list)
    sweep: list = field(default_factory=list)  # SweepPoint
    lr: float = float("nan")
    notes: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # one dict per training run: what ran, how, how long

    def add_run(self, label: str, result: TrainResult, estimate: int | None = None) -> None:
        self.runs.append({"run": label, "steps": result.steps, "estimated_steps": estimate,
                          "seconds": round(result.seconds, 3), "stop": result.stop_reason,
                          "restarts": result.restarts, "grad_norm": result.grad_norm,
                          "balance_norm": result.balance_norm, **result.optimizer})


def _no_bar(label: str, total: int):
    return contextlib.nullcontext(lambda step: None)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _within(measured: float, predicted: float, tol: float) -> bool:
    return bool(np.isfinite(measured) and abs(measured - predicted) <= tol)


# --------------------------------------------------------------------------- claim A


def claim_a_checks(X: np.ndarray, k: int, seed: int) -> list[Check]:
    rep = theory.critical_point_report(X, k, seed=seed)
    pca, rnd, sad = rep["pca"], rep["random"], rep["saddle"]
    tol = 1e-12
    round_why = "float64 rounding of the gradient is ~1e3 eps relative to 2||X||_2^2"
    sad_label = "{" + ",".join(str(i + 1) for i in rep["saddle_indices"]) + "}"
    loss_tol = 1e-10
    gap = sad["loss"] - pca["loss"]
    predicted_gap = sad["predicted_loss"] - pca["predicted_loss"]
    return [
        Check("A: PCA frame |grad W1| / 2||X||^2", pca["rel_grad_W1"], 0.0, f"<= {tol:g}",
              _verdict(pca["rel_grad_W1"] <= tol), round_why),
        Check("A: PCA frame |grad W2| / 2||X||^2", pca["rel_grad_W2"], 0.0, f"<= {tol:g}",
              _verdict(pca["rel_grad_W2"] <= tol), round_why),
        Check("A: PCA loss vs n*sum_{i>k} s_i", pca["loss"], pca["predicted_loss"], f"rel {loss_tol:g}",
              _verdict(_within(pca["loss"], pca["predicted_loss"], loss_tol * pca["predicted_loss"])),
              "Eckart-Young; float64 sums"),
        Check("A: random frame |grad W1| (vacuous)", rnd["rel_grad_W1"], 0.0, f"<= {tol:g}",
              _verdict(rnd["rel_grad_W1"] <= tol),
              "zero for ANY orthonormal frame, so the W1 block proves nothing"),
        Check("A: random frame |grad W2| (neg. control)", rnd["rel_grad_W2"], "> 1e-3", "> 1e-3",
              _verdict(rnd["rel_grad_W2"] > 1e-3),
              "the W2 block must reject a frame that is not C-invariant"),
        Check(f"A: saddle {sad_label} max rel |grad|", max(sad["rel_grad_W1"], sad["rel_grad_W2"]), 0.0,
              f"<= {tol:g}", _verdict(max(sad["rel_grad_W1"], sad["rel_grad_W2"]) <= tol),
              "any eigenvector subset is first-order critical"),
        Check("A: saddle loss - PCA loss", gap, predicted_gap, f"rel {loss_tol:g}, > 0",
              _verdict(gap > 0 and _within(gap, predicted_gap, loss_tol * sad["loss"])),
              "first order cannot single out PCA; the loss does"),
    ]


# --------------------------------------------------------------------------- step sizes


def curvature_factor(W1: np.ndarray, W2: np.ndarray) -> float:
    """B with Hessian top <= 2 s_1 B along the run: the init's ||W1||^2+||W2||^2, what lam = 0
    would converge to (gamma from D(0)), and 2 for the balanced optimum."""
    gamma = theory.balance_eigenvalues_at_zero_lam(W1, W2)
    at_init = np.linalg.norm(W1, 2) ** 2 + np.linalg.norm(W2, 2) ** 2
    return float(max(2.0, at_init, gamma.max() + 1.0 / gamma.min()))


def default_lr(s: np.ndarray, m: int, k: int, seed: int, lams) -> tuple[float, float]:
    """Torch lr = m * eta_L with eta_L = 0.9 / (s_1 B + max lam): GD on L_lam is stable below
    2 / (2 s_1 B + 2 lam). Returns (lr, B)."""
    W1, W2 = build_model(m, k, seed).weights()
    B = curvature_factor(W1, W2)
    return m * 0.9 / (s[0] * B + max(lams, default=0.0)), B


def subspace_steps(X: np.ndarray, s: np.ndarray, k: int, lr: float, max_steps: int, efolds: float = 30) -> int:
    """Steps for the data modes: the eigengap s_k - s_{k+1} sets the subspace rate, and the
    encoder's components on low-variance directions j relax at ~2 (lr/m) s_j (directions with
    s_j < 1e-3 s_1 are ignored: they barely touch the fit)."""
    observable = s[s > 1e-3 * s[0]]
    rate = 2 * lr / X.shape[0] * min(s[k - 1] - s[k], observable.min())
    return min(max_steps, max(500, math.ceil(efolds / rate)))


def balance_steps(lr: float, wd: float, efolds: float, singular_C: bool) -> int:
    """D = W1W1^T - W2^T W2 shrinks by (1 - lr wd)^2 per torch step (rate ~2 lr wd); the
    components of W1 on zero-variance directions only by (1 - lr wd)."""
    rate = lr * wd if singular_C else 2.0 * lr * wd
    return max(1, math.ceil(efolds / rate))


def sweep_optimizer(s: np.ndarray, k: int, lam: float, m: int, B: float, lr: float | None = None):
    """(torch lr, momentum) for a full-batch lam > 0 run: heavy ball on L_lam with step
    alpha = LR_FRACTION / h_max, h_max = 2 (s_1 B + lam) the curvature bound of ``default_lr``, and
    momentum beta = (1 - sqrt(alpha h_min))^2, h_min the smallest non-zero curvature at the optimum
    (theory.smallest_curvature; ~2-4 lam): that mode is then critically damped and contracts by
    ~sqrt(beta) per step, i.e. ~sqrt(h_max/h_min) times faster than plain GD's 1 - alpha h_min.
    The minimiser is unchanged (weight decay enters the gradient before the momentum)."""
    h_min = theory.smallest_curvature(s, k, lam)
    alpha = LR_FRACTION / (2.0 * (s[0] * B + lam)) if lr is None else lr / m
    return m * alpha, max(0.0, 1.0 - math.sqrt(alpha * h_min)) ** 2


def stop_tolerances(s: np.ndarray, k: int, lam: float, dtype) -> tuple[float, float]:
    """(grad_tol in L_lam units, balance_tol) for stopping a sweep run: the weight error is at most
    ||grad|| / h_min, held 100x under the tightest check (1e-3 of the effect lam/s_k, angles 1e-8);
    ||W1W1^T - W2^TW2||_F likewise. In float32 the gradient's rounding floor stops the run first."""
    effect = min(1.0, lam / s[k - 1])
    weight_tol = min(1e-5 * effect, 1e-10) if dtype == torch.float64 else 1e-7
    return theory.smallest_curvature(s, k, lam) * weight_tol, max(1e-5 * effect, _dtype_floor(dtype, s, k, lam))


@dataclass
class SweepPlan:
    lam: float
    config: TrainConfig
    estimate: int  # steps the run needs

    @property
    def steps(self) -> int:
        """What will run: all of a fixed step count, else up to convergence within the cap."""
        return self.config.steps if self.config.grad_tol is None else min(self.estimate, self.config.steps)


def plan_sweep_point(X, s, k, lam, settings: Settings, B: float, lr_gd: float, D0: float) -> SweepPlan:
    """The training run for one lam > 0: momentum (default) or plain GD ("gd", and any lam that
    kills a direction, where the curvature model above does not apply)."""
    m = X.shape[0]
    wd = theory.weight_decay_for(lam, m)
    cap = settings.max_steps or SWEEP_MAX_STEPS
    common = dict(k=k, lam=lam, batch_size=0, seed=settings.seed, dtype=settings.dtype)
    if settings.optimizer == "gd" or theory.dead_directions(s, k, lam):
        lr = settings.lr or lr_gd
        efolds = max(5.0, math.log(D0 / (1e-4 * min(1.0, lam / s[k - 1]))))
        singular_C = bool(s[-1] <= 1e-12 * s[0])
        needed = max(balance_steps(lr, wd, efolds, singular_C), subspace_steps(X, s, k, lr, 10**12))
        steps = settings.steps or min(needed, cap)
        objective = "rows" if settings.optimizer == "gd" else "auto"
        return SweepPlan(lam, TrainConfig(lr=lr, steps=steps, objective=objective, **common), needed)
    lr, beta = sweep_optimizer(s, k, lam, m, B, settings.lr)
    grad_tol, balance_tol = stop_tolerances(s, k, lam, settings.dtype)
    rate = 1.0 - math.sqrt(beta) if beta > 0 else lr / m * theory.smallest_curvature(s, k, lam)
    estimate = math.ceil(math.log(max(D0, 1.0) / balance_tol) / rate)
    fixed = settings.steps is not None
    cfg = TrainConfig(lr=lr, steps=settings.steps or cap, momentum=beta, restart=True,
                      grad_tol=None if fixed else grad_tol, balance_tol=balance_tol,
                      patience=math.ceil(10 * math.log(10) / rate), **common)
    return SweepPlan(lam, cfg, estimate)


def _train(X, cfg: TrainConfig, settings: Settings, s, label: str, estimate: int, report: Report, bars) -> TrainResult:
    """One training run with a progress bar, logged in the report's run list."""
    with bars(label, estimate) as update:
        result = train(X, cfg, settings.trainer, s1=s[0], log_dir=settings.log_dir,
                       on_check=lambda step, model: update(step))
        update(result.steps)
    report.add_run(label, result, estimate)
    return result


# --------------------------------------------------------------------------- claim B


def _dtype_floor(dtype, s: np.ndarray | None = None, k: int = 0, lam: float = 0.0) -> float:
    """The weights' rounding floor below float64: 3e-5, or the float32 gradient's rounding eps * s_1
    divided by the smallest curvature (~4 lam), which is larger for small lam: ~8e-5 on digits at
    lam/s_k = 1e-3, where float32 runs stall at sigma errors of ~4e-5."""
    if dtype == torch.float64:
        return 0.0
    curvature = theory.smallest_curvature(s, k, lam) if s is not None and 0 < lam < s[k - 1] else np.inf
    return max(3e-5, float(torch.finfo(dtype).eps) * s[0] / curvature if s is not None else 0.0)


def claim_b_checks(point: SweepPoint, s: np.ndarray, U: np.ndarray, k: int, X: np.ndarray,
                   dtype) -> list[Check]:
    return closed_form_checks(point.lam, point.result.W1, point.result.W2, s, U, k, X, dtype)


def closed_form_checks(lam: float, W1: np.ndarray, W2: np.ndarray, s: np.ndarray, U: np.ndarray, k: int,
                       X: np.ndarray, dtype) -> list[Check]:
    """Claim B for trained weights against the closed form at this lam; ``dtype`` (a torch dtype)
    is what they were trained in and sets the rounding floors."""
    if not isinstance(dtype, torch.dtype):  # np.float64 would fall through to the float32 tolerances
        raise TypeError(f"dtype must be a torch dtype, got {dtype!r}")
    effect = min(1.0, lam / s[k - 1])  # = ||W2^T W2 - I||_2 at the optimum
    floor = _dtype_floor(dtype, s, k, lam)
    tag = f"B lam/s_k={lam / s[k - 1]:.3g}:"
    checks = []

    sigma_err = float(np.max(np.abs(np.linalg.svd(W2, compute_uv=False) - theory.predicted_singular_values(s, k, lam))))
    sigma_tol = max(1e-3 * effect, floor)
    checks.append(Check(f"{tag} max|sigma(W2) - sqrt(1-lam/s_i)|", sigma_err, "-", f"<= {sigma_tol:.2g}",
                        _verdict(sigma_err <= sigma_tol),
                        "0.1% of the effect lam/s_k: the converged, not the approximate, optimum"))

    gram_dev = float(np.linalg.norm(W2.T @ W2 - np.eye(k), 2))
    gram_tol = max(1e-2 * effect, 10 * floor)
    checks.append(Check(f"{tag} ||W2^T W2 - I||_2", gram_dev, effect, f"+-{gram_tol:.2g}",
                        _verdict(_within(gram_dev, effect, gram_tol)),
                        "1% of lam/s_k: rules out lam/(2s_k) (50% off) and a wrong wd mapping (20x)"))

    live = k - len(theory.dead_directions(s, k, lam))
    if live > 0:
        left, _, _ = np.linalg.svd(W2, full_matrices=False)
        angle = float(theory.principal_angles(left[:, :live], U[:, :live]).max())
        angle_tol = 1e-8 if dtype == torch.float64 else 1e-4
        checks.append(Check(f"{tag} max angle span(W2), span(U_k)", angle, "-", f"<= {angle_tol:g} rad",
                            _verdict(angle <= angle_tol),
                            "subspace converges at the eigengap rate, far faster than balance"))

    transpose_gap = float(np.linalg.norm(W1 - W2.T))
    transpose_tol = max(1e-3 * effect, 10 * floor)
    checks.append(Check(f"{tag} ||W1 - W2^T||_F", transpose_gap, "-", f"<= {transpose_tol:.2g}",
                        _verdict(transpose_gap <= transpose_tol),
                        "W1 = W2^T at every critical point; set by the balance mode's decay"))

    excess = theory.loss(X, W1, W2, lam) - theory.optimal_loss(s, k, lam)
    loss_tol = (1e-9 if dtype == torch.float64 else 1e-5) * float(s.sum())
    checks.append(Check(f"{tag} L - L*", excess, "-", f"+-{loss_tol:.2g}", _verdict(abs(excess) <= loss_tol),
                        "quadratic in the weight error; float rounding of tr C"))
    return checks


def run_sweep_point(X, s, k, plan: SweepPlan, settings: Settings, report: Report, bars=_no_bar) -> SweepPoint:
    lam, cfg = plan.lam, plan.config
    label = f"lam/s_k={lam / s[k - 1]:.3g}"
    result = _train(X, cfg, settings, s, label, plan.steps, report, bars)
    if cfg.grad_tol is not None and not result.converged:
        report.notes.append(
            f"{label}: not converged within the {cfg.steps}-step cap (||grad L|| = {result.grad_norm:.3g} vs "
            f"{cfg.grad_tol:.3g}, ||D|| = {result.balance_norm:.3g} vs {cfg.balance_tol:.3g}); raise --max-steps")
    elif cfg.grad_tol is None and plan.estimate > cfg.steps:
        report.notes.append(f"{label}: needs ~{plan.estimate} steps at lr={cfg.lr:.3g}, momentum {cfg.momentum:.3g}; "
                            f"ran {cfg.steps} (--steps/--max-steps), so the tight checks may FAIL")
    return SweepPoint(lam, cfg.weight_decay(X.shape[0]), result.steps, result,
                      np.linalg.svd(result.W2, compute_uv=False), theory.predicted_singular_values(s, k, lam))


# --------------------------------------------------------------------------- controls


# gamma(D0) is exact for gradient flow run to convergence; the control's job is the next check
# (W2^T W2 far from I), so this one only needs to show the init decides the outcome.
ZERO_LAM_TOLERANCE = 0.1


def _capped(needed: int, steps: int, what: str, lr: float) -> str:
    return (f"not decidable in the step budget: {what} needs ~{needed} steps at lr={lr:.3g}, ran {steps} "
            f"(raise --max-steps to decide it)")


NULL_VARIANCE = 1e-12  # s_j <= this * s_1: a null direction of C (e.g. a constant pixel)
UNRELAXED_SHARE = 0.05  # of D left on slow directions: shifts gamma by <~ half that, under the 10% tolerance


def zero_lam_steps(s: np.ndarray, k: int, lr: float, m: int, init_var: float, init_scale: float | None) -> int:
    """Plain-GD steps after which gamma(D0) applies at lam = 0 (within its 10% tolerance).

    gamma(D0) needs W2 W1 on the fit manifold (a projector on SOME k-frame: the frame's slow
    rotation towards U_k, at the eigengap rate, leaves D's form unchanged), i.e. 15 e-folds of the
    gain modes at rate 2 (lr/m) s_k (from a small init, plus the escape from it); and the encoder's
    components on tail directions j > k, relaxing at 2 (lr/m) s_j (1 - s_j/s_k) and holding
    ~init_var (1 - s_j^2/s_k^2) of D each at the start, must be down to UNRELAXED_SHARE of D.
    Null directions of C never relax; theory.balance_eigenvalues_at_zero_lam takes them out."""
    eta = lr / m
    efolds = 15 + (math.log(1 / init_scale) if init_scale else 0.0)
    gain_steps = efolds / (2 * eta * s[k - 1])
    tail = s[k:][s[k:] > NULL_VARIANCE * s[0]]
    ratio = tail / s[k - 1]
    rates, weights = 2 * eta * tail * (1 - ratio), init_var * (1 - ratio**2)

    def share(steps):  # what is left of the tail's part of D after `steps` (amplitudes squared)
        return float((weights * np.exp(-2 * rates * steps)).sum())

    lo, hi = 0.0, 1.0
    while share(hi) > UNRELAXED_SHARE and hi < 1e15:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if share(mid) > UNRELAXED_SHARE else (lo, mid)
    return max(100, math.ceil(max(gain_steps, hi)))


def control_cap(m: int, k: int, max_steps: int | None) -> int:
    """Steps allowed per lam = 0 control: --max-steps, else 4e9 / (m^2 k) within CONTROL_MAX_STEPS."""
    low, high = CONTROL_MAX_STEPS
    return max_steps or int(np.clip(4e9 / (m * m * k), low, high))


def control_steps(s: np.ndarray, k: int, lr: float, m: int, init_scale: float | None) -> int:
    """``zero_lam_steps`` for PyTorch's default init (encoder entries U(+-1/sqrt(m)): variance 1/(3m)
    per entry) or N(0, init_scale^2)."""
    init_var = init_scale**2 if init_scale else 1.0 / (3 * m)
    return zero_lam_steps(s, k, lr, m, init_var, init_scale)


def zero_lam_checks(X, s, k, settings: Settings, lr: float, largest_effect: float, report: Report,
                    bars=_no_bar) -> list[Check]:
    """lam = 0 from the default init and from a small init: the init, not lam, decides.

    Plain full-batch GD without momentum: D = W1W1^T - W2^TW2 is conserved by gradient flow (and
    drifts O(lr^2) per GD step), not by momentum methods. Where the slow data directions cannot
    relax within the step cap, the checks that need them are INFO with the reason.
    """
    # A fifth of the GD lr: GD's O(lr^2) per-step drift, summed over the transient, would
    # otherwise blur the gamma(D0) prediction by ~8%.
    lr = lr / 5
    m = X.shape[0]
    _, U = theory.spectrum(X)
    null = U[:, s <= NULL_VARIANCE * s[0]]
    checks = []
    for label, init_scale in (("default init", None), (f"init N(0,{SMALL_INIT:g}^2)", SMALL_INIT)):
        needed = control_steps(s, k, lr, m, init_scale)
        steps = min(needed, control_cap(m, k, settings.max_steps))
        capped = _capped(needed, steps, "relaxing the data directions (plain GD)", lr) if needed > steps else ""
        cfg = TrainConfig(k=k, lam=0.0, lr=lr, steps=steps, seed=settings.seed, dtype=settings.dtype,
                          init_scale=init_scale)
        result = _train(X, cfg, settings, s, f"lam=0, {label}", steps, report, bars)
        gamma = theory.balance_eigenvalues_at_zero_lam(result.W1_init, result.W2_init, frozen=null)
        measured = np.sort(np.linalg.eigvalsh(result.W2.T @ result.W2))[::-1]
        gram_dev = float(np.max(np.abs(measured - 1.0)))
        predicted_dev = float(np.max(np.abs(gamma - 1.0)))
        rel_err = float(np.max(np.abs(measured - gamma) / gamma))
        checks.append(Check(f"lam=0, {label}: eig(W2^T W2) vs gamma(D0), max rel err", rel_err, "-",
                            f"<= {ZERO_LAM_TOLERANCE:g}",
                            "INFO" if capped else _verdict(rel_err <= ZERO_LAM_TOLERANCE),
                            capped or "D=W1W1^T-W2^TW2 is conserved by gradient flow (less the encoder's part on "
                            "null directions of C, which never moves); finite-lr GD drifts O(lr^2) per step, and "
                            f"the slowest tail directions may hold up to {UNRELAXED_SHARE:g} of D"))
        if init_scale is None:
            checks.append(Check(f"lam=0, {label}: ||W2^T W2 - I||_2", gram_dev, predicted_dev,
                                f"> {largest_effect:.2g}", _verdict(gram_dev > largest_effect),
                                f"further from I than any lam>0 run: lam, not init, must explain (B) "
                                f"(init gives W2^TW2 ~ m/3k = {X.shape[0] / (3 * k):.2f}; D is conserved, so "
                                f"more steps cannot bring it to I)"))
        else:
            checks.append(Check(f"lam=0, {label}: ||W2^T W2 - I||_2 (confound)", gram_dev, predicted_dev,
                                f"< {largest_effect:.2g}",
                                "INFO" if capped and gram_dev >= largest_effect else _verdict(gram_dev < largest_effect),
                                (capped + "; ") * bool(capped) +
                                "small init alone is as orthonormal as lam>0 makes it: compare like with like"))
    return checks


def sgd_noise_floor(X: np.ndarray, W1: np.ndarray, W2: np.ndarray, batch_size: int, lr: float, wd: float,
                    seed: int, epochs: int = 40) -> np.ndarray:
    """D* ~ lr (Cov[g1] - Cov[g2]) / (2 wd): the stationary imbalance that minibatch noise
    sustains, from the per-batch MSELoss gradients (torch units) at the given weights."""
    m, n = X.shape
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    g1s, g2s = [], []
    for _ in range(epochs):
        order = rng.permutation(n)
        for b in range(per_epoch):
            xb = X[:, order[b * batch_size:(b + 1) * batch_size]]
            code = W1 @ xb
            residual = xb - W2 @ code
            scale = 2.0 / (batch_size * m)
            g1s.append(-scale * (W2.T @ residual) @ xb.T)
            g2s.append(-scale * residual @ code.T)
    g1, g2 = np.array(g1s), np.array(g2s)
    d1, d2 = g1 - g1.mean(axis=0), g2 - g2.mean(axis=0)
    cov1 = np.einsum("bij,blj->il", d1, d1) / len(d1)
    cov2 = np.einsum("bji,bjl->il", d2, d2) / len(d2)
    return lr * (cov1 - cov2) / (2.0 * wd)


def minibatch_checks(X, s, k, lam, settings: Settings, lr: float, full_batch: SweepPoint, report: Report,
                     bars=_no_bar) -> list[Check]:
    """Plain SGD (no momentum: the floor formula is for plain SGD), batch b, the GD lr, 15 e-folds
    of the balance mode, D averaged over the last 5."""
    m, n = X.shape
    b = settings.batch_size
    if not 0 < b < n:
        return []
    wd = theory.weight_decay_for(lam, m)
    relax = balance_steps(lr, wd, 1.0, False)  # steps per e-fold of the balance mode
    steps = min(settings.max_steps or MINIBATCH_MAX_STEPS, 15 * relax)
    capped = _capped(15 * relax, steps, "15 e-folds of the balance mode (plain SGD)", lr) if steps < 15 * relax else ""
    average_last = min(steps // 2, 5 * relax)
    cfg = TrainConfig(k=k, lam=lam, lr=lr, steps=steps, batch_size=b, seed=settings.seed,
                      dtype=settings.dtype, average_last=average_last)
    result = _train(X, cfg, settings, s, f"minibatch b={b}", steps, report, bars)
    floor = sgd_noise_floor(X, result.W1, result.W2, b, lr, wd, settings.seed)
    measured = float(np.linalg.norm(result.balance_mean))
    predicted = float(np.linalg.norm(floor))
    ratio = measured / predicted if predicted > 0 else float("inf")
    effect = lam / s[k - 1]
    sigma = np.linalg.svd(result.W2, compute_uv=False)
    pred_sigma = theory.predicted_singular_values(s, k, lam)
    tag = f"minibatch b={b}, lam/s_k={effect:.3g}:"
    return [
        Check(f"{tag} time-avg ||D||_F vs SGD floor", measured, predicted, "ratio in [0.5, 2]",
              "INFO" if capped else _verdict(0.5 <= ratio <= 2.0),
              capped or "floor = lr(Cov g1 - Cov g2)/(2wd) is first order in lr; D=W1W1^T-W2^TW2"),
        Check(f"{tag} ||W2^T W2 - I||_2 (full batch: {np.linalg.norm(full_batch.result.W2.T @ full_batch.result.W2 - np.eye(k), 2):.3g})",
              float(np.linalg.norm(result.W2.T @ result.W2 - np.eye(k), 2)), effect, "-", "INFO",
              "the noise floor adds to lam/s_k: minibatch runs measure the floor too"),
        Check(f"{tag} max|sigma(W2) - sqrt(1-lam/s_i)|", float(np.max(np.abs(sigma - pred_sigma))),
              float(np.max(np.abs(full_batch.singular_values - full_batch.predicted_singular_values))),
              "-", "INFO", "predicted column = the full-batch error at the same lam"),
    ]


# --------------------------------------------------------------------------- the whole run


def plan_message(plans, s, k, zero_lam_steps: int, minibatch_steps: int, sweep_cost: float, sgd_cost: float) -> str:
    """What is about to run and about how long it takes, from a measured cost per step."""
    parts = [f"lam/s_k={p.lam / s[k - 1]:.3g}: ~{p.steps} steps"
             + (f" of ~{p.estimate} needed" if p.config.steps < p.estimate else "")
             + f" (lr {p.config.lr:.3g}, momentum {p.config.momentum:.4g})" for p in plans]
    total = sum(p.steps for p in plans) * sweep_cost
    total += zero_lam_steps * sweep_cost + minibatch_steps * sgd_cost
    return (f"plan: {'; '.join(parts)}; lam=0 controls {zero_lam_steps} steps; minibatch {minibatch_steps} "
            f"steps. Estimated {total:.0f} s ({1e3 * sweep_cost:.2f} ms/full-batch step, "
            f"{1e3 * sgd_cost:.2f} ms/minibatch step)")


def run(X: np.ndarray, settings: Settings, progress: Callable[[str], None] = lambda msg: None,
        partial: Report | None = None, bars=_no_bar) -> Report:
    """Claim A, the lam sweep (full batch), the lam = 0 controls and the minibatch run.

    ``partial`` (if given) is filled in as the run goes, so an interrupted run can report it.
    ``bars(label, estimated_steps)`` is a context manager giving ``update(step)`` (a progress bar).
    """
    report = partial if partial is not None else Report()
    m, n = X.shape
    k = settings.k
    s, U = theory.spectrum(X)
    lams = sorted(settings.lams) or [r * s[k - 1] for r in DEFAULT_RATIOS]
    if settings.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {settings.optimizer!r}")

    report.checks.extend(claim_a_checks(X, k, settings.seed))

    lr_gd, B = default_lr(s, m, k, settings.seed, lams)
    if settings.lr is not None and settings.lr > m / (2 * s[0]):
        report.notes.append(f"--lr {settings.lr:g} is above the GD stability bound m/(2 s_1) = {m / (2 * s[0]):.3g}")
    W1_0, W2_0 = build_model(m, k, settings.seed).weights()
    D0 = float(np.linalg.norm(W1_0 @ W1_0.T - W2_0.T @ W2_0))
    plans = [plan_sweep_point(X, s, k, lam, settings, B, lr_gd, D0) for lam in lams]
    report.lr = plans[-1].config.lr

    live = [lam for lam in lams if 0 < lam < s[k - 1]]  # every direction alive: (B) applies
    b = settings.batch_size
    cap = control_cap(m, k, settings.max_steps)
    zero_lam = sum(min(control_steps(s, k, lr_gd / 5, m, scale), cap) for scale in (None, SMALL_INIT)) if live else 0
    minibatch_steps = 0
    if live and 0 < b < n:
        relax = balance_steps(lr_gd, theory.weight_decay_for(max(live), m), 1.0, False)
        minibatch_steps = min(15 * relax, settings.max_steps or MINIBATCH_MAX_STEPS)
    sweep_cost = seconds_per_step(X, plans[0].config)
    sgd_cost = seconds_per_step(X, TrainConfig(k=k, lam=lams[0], lr=lr_gd, steps=1, batch_size=b)) if minibatch_steps else 0.0
    progress(plan_message(plans, s, k, zero_lam, minibatch_steps, sweep_cost, sgd_cost))

    for plan in plans:
        point = run_sweep_point(X, s, k, plan, settings, report, bars)
        report.sweep.append(point)
        report.checks.extend(claim_b_checks(point, s, U, k, X, settings.dtype))

    if not live:
        report.notes.append("no lam < s_k in the sweep: the lam=0 and minibatch controls are skipped")
    else:
        report.checks.extend(zero_lam_checks(X, s, k, settings, lr_gd, max(live) / s[k - 1], report, bars))
        lam_mb = max(live)
        point = next(p for p in report.sweep if p.lam == lam_mb)
        report.checks.extend(minibatch_checks(X, s, k, lam_mb, settings, lr_gd, point, report, bars))
    return report
