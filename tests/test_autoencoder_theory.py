"""Closed-form theory of the l2-regularised linear autoencoder (no training)."""

import numpy as np
import pytest

from repro.autoencoder import theory
from repro.autoencoder.data import synthetic


@pytest.fixture(scope="module")
def data():
    return synthetic(m=10, n=300, k=3, seed=1).X


def test_spectrum_is_the_designed_one(data):
    s, U = theory.spectrum(data)
    expected = np.concatenate([np.linspace(1.5, 1.0, 3), np.linspace(0.5, 0.2, 7)])
    np.testing.assert_allclose(s, expected, rtol=1e-12)
    np.testing.assert_allclose(U.T @ U, np.eye(10), atol=1e-12)


def test_closed_form_attains_optimal_loss_and_is_stationary(data):
    s, U = theory.spectrum(data)
    lam = 0.05
    W1, W2 = theory.closed_form(s, U, 3, lam)
    assert theory.loss(data, W1, W2, lam) == pytest.approx(theory.optimal_loss(s, 3, lam), rel=1e-13)
    g1, g2 = theory.gradients(data, W1, W2, lam)
    assert np.linalg.norm(g1) < 1e-13 and np.linalg.norm(g2) < 1e-13
    np.testing.assert_allclose(np.linalg.svd(W2, compute_uv=False), np.sqrt(1 - lam / s[:3]), rtol=1e-14)
    np.testing.assert_allclose(np.linalg.eigvalsh(W2.T @ W2).max(), 1 - lam / s[0], rtol=1e-14)
    assert np.linalg.norm(W2.T @ W2 - np.eye(3), 2) == pytest.approx(lam / s[2], rel=1e-12)
    # A rotation O leaves the loss unchanged (the O(k) freedom).
    O, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    assert theory.loss(data, O.T @ W1, W2 @ O, lam) == pytest.approx(theory.optimal_loss(s, 3, lam), rel=1e-13)


def test_optimal_loss_beats_perturbations(data):
    s, U = theory.spectrum(data)
    W1, W2 = theory.closed_form(s, U, 3, 0.1)
    rng = np.random.default_rng(2)
    best = theory.optimal_loss(s, 3, 0.1)
    for _ in range(20):
        assert theory.loss(data, W1 + 1e-3 * rng.standard_normal(W1.shape),
                           W2 + 1e-3 * rng.standard_normal(W2.shape), 0.1) > best


def test_gradients_match_finite_differences(data):
    rng = np.random.default_rng(3)
    W1, W2 = rng.standard_normal((3, 10)), rng.standard_normal((10, 3))
    for normalise in (True, False):
        g1, g2 = theory.gradients(data, W1, W2, lam=0.2, normalise=normalise)
        E = rng.standard_normal(W1.shape)
        h = 1e-6
        fd = (theory.loss(data, W1 + h * E, W2, 0.2, normalise) - theory.loss(data, W1 - h * E, W2, 0.2, normalise)) / (2 * h)
        assert fd == pytest.approx(np.sum(g1 * E), rel=1e-6)
        E = rng.standard_normal(W2.shape)
        fd = (theory.loss(data, W1, W2 + h * E, 0.2, normalise) - theory.loss(data, W1, W2 - h * E, 0.2, normalise)) / (2 * h)
        assert fd == pytest.approx(np.sum(g2 * E), rel=1e-6)
    # normalise=False is the homework's unnormalised data term.
    assert theory.loss(data, W1, W2, 0.0, False) == pytest.approx(300 * theory.loss(data, W1, W2, 0.0, True))


def test_dead_directions_get_zero_columns(data):
    s, U = theory.spectrum(data)
    lam = 1.2  # between s_3 = 1.0, s_2 = 1.25
    assert theory.dead_directions(s, 3, lam) == [2]
    W1, W2 = theory.closed_form(s, U, 3, lam)
    assert np.all(W2[:, 2] == 0) and np.all(W1[2] == 0)
    assert theory.loss(data, W1, W2, lam) == pytest.approx(theory.optimal_loss(s, 3, lam), rel=1e-13)
    # lam >= s_1: everything dead, W = 0, L* = tr C.
    W1, W2 = theory.closed_form(s, U, 3, 2.0)
    assert not W1.any() and not W2.any()
    assert theory.optimal_loss(s, 3, 2.0) == pytest.approx(s.sum())
    assert theory.dead_directions(s, 3, 2.0) == [0, 1, 2]


def test_weight_decay_mapping_round_trip():
    assert theory.weight_decay_for(0.05, 20) == pytest.approx(0.005)
    assert theory.lam_for(theory.weight_decay_for(0.3, 64), 64) == pytest.approx(0.3)


def test_principal_angles_known_and_tiny():
    e = np.eye(4)
    A = e[:, :2]
    theta = 0.3
    B = np.stack([e[:, 0], np.cos(theta) * e[:, 1] + np.sin(theta) * e[:, 2]], axis=1)
    np.testing.assert_allclose(theory.principal_angles(A, B), [0.0, theta], atol=1e-15)
    # Angles far below sqrt(eps) are still resolved (arccos alone would give ~1e-8).
    B = np.stack([e[:, 0], e[:, 1] + 1e-12 * e[:, 3]], axis=1)
    assert theory.principal_angles(A, B).max() == pytest.approx(1e-12, rel=1e-3)


def test_critical_point_report_claim_a(data):
    rep = theory.critical_point_report(data, 3, seed=0)
    s, _ = theory.spectrum(data)
    assert rep["pca"]["rel_grad_W1"] < 1e-13 and rep["pca"]["rel_grad_W2"] < 1e-13
    assert rep["pca"]["loss"] == pytest.approx(300 * s[3:].sum(), rel=1e-12)
    # Random orthonormal frame: the W1 block is vacuously zero, the W2 block is not.
    assert rep["random"]["rel_grad_W1"] < 1e-13
    assert rep["random"]["rel_grad_W2"] > 1e-2
    # The saddle {1, 2, 6}: first-order critical, but its loss exceeds the PCA loss by n (s_3 - s_6).
    assert rep["saddle_indices"] == [0, 1, 5]
    assert max(rep["saddle"]["rel_grad_W1"], rep["saddle"]["rel_grad_W2"]) < 1e-13
    gap = rep["saddle"]["loss"] - rep["pca"]["loss"]
    assert gap == pytest.approx(300 * (s[2] - s[5]), rel=1e-10) and gap > 0
    assert rep["gradient_scale"] == pytest.approx(2 * 300 * s[0], rel=1e-12)


def test_zero_lam_balance_prediction_is_exact_on_the_fit_manifold(data):
    s, U = theory.spectrum(data)
    G = np.random.default_rng(4).standard_normal((3, 3))
    W2, W1 = U[:, :3] @ G, np.linalg.solve(G, U[:, :3].T)
    np.testing.assert_allclose(theory.balance_eigenvalues_at_zero_lam(W1, W2),
                               np.sort(np.linalg.eigvalsh(G.T @ G))[::-1], rtol=1e-10)
