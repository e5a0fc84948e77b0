"""Closed-form theory of the l2-regularised two-layer linear autoencoder (float64 numpy).

Conventions: X is m x n with data points as columns (already centred), the encoder W1 is
k x m, the decoder W2 is m x k, and

    L_lam(W1, W2) = (1/n) ||X - W2 W1 X||_F^2 + lam ||W1||_F^2 + lam ||W2||_F^2.

With C = X X^T / n = U diag(s) U^T (s descending), the global minimisers are
W2 = U_k D O, W1 = W2^T, D = diag(sqrt(max(0, 1 - lam/s_i))), O any orthogonal k x k.
Nothing here trains anything; the experiment and the claims audit both call these.
"""

from __future__ import annotations

import numpy as np


def _as64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def spectrum(X) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of C = X X^T / n in descending order and the eigenvectors as columns."""
    X = _as64(X)
    C = X @ X.T / X.shape[1]
    s, U = np.linalg.eigh(C)
    order = np.argsort(s)[::-1]
    return s[order], U[:, order]


def dead_directions(s, k: int, lam: float) -> list[int]:
    """Indices i < k whose optimal gain is zero because s_i <= lam."""
    s = _as64(s)
    return [i for i in range(k) if s[i] <= lam]


def predicted_singular_values(s, k: int, lam: float) -> np.ndarray:
    """sigma_i(W2) = sigma_i(W1) = sqrt(max(0, 1 - lam/s_i)) at every global minimiser."""
    s = _as64(s)[:k]
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(s > lam, 1.0 - lam / np.where(s > 0, s, 1.0), 0.0)
    return np.sqrt(np.maximum(gain, 0.0))


def closed_form(s, U, k: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The global minimiser with O = I; dead directions (s_i <= lam) get zero columns."""
    d = predicted_singular_values(s, k, lam)
    W2 = _as64(U)[:, :k] * d[None, :]
    return W2.T.copy(), W2


def optimal_loss(s, k: int, lam: float) -> float:
    """L* = tr C - sum_{i<=k} max(0, s_i - lam)^2 / s_i."""
    s = _as64(s)
    top = s[:k]
    live = top > lam
    return float(s.sum() - np.sum((top[live] - lam) ** 2 / top[live]))


def loss(X, W1, W2, lam: float = 0.0, normalise: bool = True) -> float:
    """L_lam; normalise=False drops the 1/n (the homework's ||X - W2 W1 X||_F^2 + lam(...))."""
    X, W1, W2 = _as64(X), _as64(W1), _as64(W2)
    residual = X - W2 @ (W1 @ X)
    data = np.sum(residual**2)
    if normalise:
        data /= X.shape[1]
    return float(data + lam * (np.sum(W1**2) + np.sum(W2**2)))


def gradients(X, W1, W2, lam: float = 0.0, normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Analytic gradients of ``loss``: -2 W2^T R X^T + 2 lam W1 and -2 R (W1 X)^T + 2 lam W2."""
    X, W1, W2 = _as64(X), _as64(W1), _as64(W2)
    code = W1 @ X
    residual = X - W2 @ code
    scale = 1.0 / X.shape[1] if normalise else 1.0
    g1 = -2.0 * scale * (W2.T @ residual) @ X.T + 2.0 * lam * W1
    g2 = -2.0 * scale * residual @ code.T + 2.0 * lam * W2
    return g1, g2


def weight_decay_for(lam: float, m: int) -> float:
    """SGD weight_decay that makes MSELoss(mean) + weight decay equal L_lam / m: wd = 2 lam / m."""
    return 2.0 * lam / m


def lam_for(weight_decay: float, m: int) -> float:
    """Inverse of ``weight_decay_for``: lam = m wd / 2."""
    return m * weight_decay / 2.0


def principal_angles(A, B) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of A and B."""
    qa, _ = np.linalg.qr(_as64(A))
    qb, _ = np.linalg.qr(_as64(B))
    cosines = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0.0, 1.0)  # descending
    if qa.shape[1] != qb.shape[1]:
        return np.sort(np.arccos(cosines))
    # arccos cannot resolve angles below ~1e-8; the sines from the complement can.
    sines = np.clip(np.linalg.svd(qb - qa @ (qa.T @ qb), compute_uv=False), 0.0, 1.0)
    return np.sort(np.arctan2(np.sort(sines), cosines))


def balance_eigenvalues_at_zero_lam(W1_init, W2_init, frozen=None) -> np.ndarray:
    """Predicted eig(W2^T W2) after lam = 0 training from this init (descending).

    Gradient flow conserves D = W1 W1^T - W2^T W2; on the data-fit manifold W2 = U_k G and
    D = (G^T G)^-1 - G^T G, so each eigenvalue delta of D(0) gives gamma = (-delta + sqrt(delta^2+4))/2.
    ``frozen`` (m x r, orthonormal columns): directions in the null space of C. The encoder's
    components there get no gradient at lam = 0 and keep their init values, so their share
    W1 F F^T W1^T of D is not on the fit manifold and is taken out first.
    """
    W1, W2 = _as64(W1_init), _as64(W2_init)
    D = W1 @ W1.T - W2.T @ W2
    if frozen is not None and np.size(frozen):
        stuck = W1 @ _as64(frozen)
        D = D - stuck @ stuck.T
    delta = np.linalg.eigvalsh(D)
    gamma = (-delta + np.sqrt(delta**2 + 4.0)) / 2.0
    return np.sort(gamma)[::-1]


def _frame_numbers(X, W1, W2, scale: float) -> dict:
    g1, g2 = gradients(X, W1, W2, lam=0.0, normalise=False)
    n1, n2 = float(np.linalg.norm(g1)), float(np.linalg.norm(g2))
    return {
        "grad_norm_W1": n1,
        "grad_norm_W2": n2,
        "rel_grad_W1": n1 / scale,
        "rel_grad_W2": n2 / scale,
        "loss": loss(X, W1, W2, lam=0.0, normalise=False),
    }


def critical_point_report(X, k: int, seed: int = 0) -> dict:
    """Claim A numbers for the unregularised L = ||X - W2 W1 X||_F^2 (float64).

    Three frames W2 = Q, W1 = Q^T: the top-k eigenvectors (PCA), a random orthonormal frame
    (negative control: the W1 gradient vanishes for ANY orthonormal frame, only the W2 block
    tests anything), and a non-top-k eigenvector set (a saddle: zero gradient, higher loss).
    Gradient norms are also given relative to 2 ||X||_2^2, the natural scale of the gradient.
    """
    X = _as64(X)
    m, n = X.shape
    if not 0 < k < m:
        raise ValueError(f"need 0 < k < m, got k={k}, m={m}")
    s, U = spectrum(X)
    scale = 2.0 * float(np.linalg.norm(X, 2)) ** 2
    rng = np.random.default_rng(seed)

    pca = U[:, :k]
    random_frame, _ = np.linalg.qr(rng.standard_normal((m, k)))
    # Swap the k-th eigenvector for a lower one (the (k+3)-th when it exists).
    swapped_in = min(k + 2, m - 1)
    saddle_indices = list(range(k - 1)) + [swapped_in]
    saddle = U[:, saddle_indices]

    report = {
        "k": k,
        "m": m,
        "n": n,
        "gradient_scale": scale,
        "pca": _frame_numbers(X, pca.T, pca, scale),
        "random": _frame_numbers(X, random_frame.T, random_frame, scale),
        "saddle": _frame_numbers(X, saddle.T, saddle, scale),
        "saddle_indices": saddle_indices,
    }
    report["pca"]["predicted_loss"] = float(n * s[k:].sum())  # Eckart-Young
    outside = np.ones(m, dtype=bool)
    outside[saddle_indices] = False
    report["saddle"]["predicted_loss"] = float(n * s[outside].sum())
    return report



def smallest_curvature(s, k: int, lam: float) -> float:
    """The smallest non-zero eigenvalue of the Hessian of L_lam at its global minimisers (lam > 0,
    every direction alive): the rate-limiting mode for gradient methods.

    In the eigenbasis of C, with d_i^2 = 1 - lam/s_i, the Hessian splits into blocks: per code
    i <= k the pair (W1_ii, W2_ii) gives 4(s_i - lam) (gain) and 4 lam (the balance mode
    W1 - W2^T); the k(k-1)/2 rotations are flat (zero); and for every i <= k < j the pair
    (W1_ij, W2_ji) has the 2 x 2 block 2 [[d_i^2 s_j + lam, -s_j], [-s_j, s_i]], whose smaller
    eigenvalue is ~2 lam for a direction with s_j ~ 0 and shrinks with the eigengap s_k - s_{k+1}.
    So the minimum is 4 lam, 4 (s_k - lam) (lam close to s_k) or a tail block.
    """
    s = _as64(s)
    top, tail = s[:k], s[k:]
    a = (1.0 - lam / top)[:, None] * tail[None, :] + lam
    c = top[:, None]
    block_min = (a + c) - np.sqrt((a - c) ** 2 + 4 * tail[None, :] ** 2)  # = 2 (mean - radius)
    return float(min(4.0 * lam, 4.0 * (top[-1] - lam), block_min.min(initial=np.inf)))
