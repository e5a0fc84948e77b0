"""Training: the lam <-> weight_decay mapping, convergence to the closed form, the lam = 0
control, the two trainers agreeing, and the minibatch noise floor."""

import numpy as np
import pytest
import torch

from repro.autoencoder import checks, theory
from repro.autoencoder.data import synthetic
from repro.autoencoder.train import TrainConfig, build_model, make_optimizer, torch_objective, train

M, N, K = 8, 200, 3


@pytest.fixture(scope="module")
def data():
    return synthetic(m=M, n=N, k=K, seed=2).X


@pytest.fixture(scope="module")
def spectrum(data):
    return theory.spectrum(data)


def test_weight_decay_mapping_by_autograd(data):
    """MSELoss(mean) + (wd/2)||W||^2 with wd = 2 lam/m has gradient (1/m) grad L_lam, and one
    torch SGD step with lr equals one GD step of lr/m on L_lam."""
    lam = 0.07
    wd = theory.weight_decay_for(lam, M)
    model = build_model(M, K, seed=0)
    rows = torch.from_numpy(data.T.copy())
    params = list(model.parameters())

    torch_obj = torch_objective(model, rows) + wd / 2 * sum((p**2).sum() for p in params)
    torch_grads = torch.autograd.grad(torch_obj, params)

    W1, W2 = model.encoder.weight, model.decoder.weight
    X = rows.T
    l_lam = ((X - W2 @ W1 @ X) ** 2).sum() / N + lam * ((W1**2).sum() + (W2**2).sum())
    lam_grads = torch.autograd.grad(l_lam, params)
    for g_torch, g_lam in zip(torch_grads, lam_grads):
        torch.testing.assert_close(g_torch, g_lam / M, rtol=1e-12, atol=1e-15)
    # the analytic gradients of theory.py agree too
    g1, g2 = theory.gradients(data, *model.weights(), lam=lam)
    np.testing.assert_allclose(lam_grads[0].numpy(), g1, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(lam_grads[1].numpy(), g2, rtol=1e-10, atol=1e-14)
    # A wrong mapping (wd = 2 lam, forgetting MSELoss's 1/m) is caught by the same comparison.
    wrong = torch_objective(model, rows) + lam * sum((p**2).sum() for p in params)
    assert not torch.allclose(torch.autograd.grad(wrong, params)[0], lam_grads[0] / M)

    lr = 0.3
    optimizer = make_optimizer(model, lr, wd)
    before = [p.detach().clone() for p in params]
    optimizer.zero_grad()
    torch_objective(model, rows).backward()
    optimizer.step()
    for p, p0, g in zip(params, before, lam_grads):
        torch.testing.assert_close(p.detach(), p0 - (lr / M) * g, rtol=1e-12, atol=1e-14)


def test_training_reaches_the_closed_form(data, spectrum):
    s, U = spectrum
    lam = 0.02 * s[K - 1]
    lr, _ = checks.default_lr(s, M, K, seed=0, lams=[lam])
    steps = checks.balance_steps(lr, theory.weight_decay_for(lam, M), efolds=20, singular_C=False)
    result = train(data, TrainConfig(k=K, lam=lam, lr=lr, steps=steps, seed=0))
    sigma = np.linalg.svd(result.W2, compute_uv=False)
    np.testing.assert_allclose(sigma, theory.predicted_singular_values(s, K, lam), atol=1e-6)
    assert np.linalg.norm(result.W2.T @ result.W2 - np.eye(K), 2) == pytest.approx(lam / s[K - 1], rel=1e-3)
    assert np.linalg.norm(result.W1 - result.W2.T) < 1e-5
    assert theory.principal_angles(result.W2, U[:, :K]).max() < 1e-8
    assert abs(theory.loss(data, result.W1, result.W2, lam) - theory.optimal_loss(s, K, lam)) < 1e-10
    # the product is the shrunk projector, independent of the rotation O
    W1c, W2c = theory.closed_form(s, U, K, lam)
    np.testing.assert_allclose(result.W2 @ result.W1, W2c @ W1c, atol=1e-5)


def test_zero_lam_control_is_decided_by_the_init(data, spectrum):
    s, U = spectrum
    lr = checks.default_lr(s, M, K, seed=0, lams=[0.0])[0] / 5
    steps = checks.subspace_steps(data, s, K, lr, 60_000)
    result = train(data, TrainConfig(k=K, lam=0.0, lr=lr, steps=steps, seed=0))
    gram = np.sort(np.linalg.eigvalsh(result.W2.T @ result.W2))[::-1]
    gamma = theory.balance_eigenvalues_at_zero_lam(result.W1_init, result.W2_init)
    np.testing.assert_allclose(gram, gamma, rtol=0.05)
    assert np.abs(gram - 1).max() > 0.2  # default init does not fake orthonormality
    # it still finds the PCA subspace and (nearly) the optimal unregularised loss; the encoder's
    # components on the low-variance tail relax at a rate ~ s_m, so the loss is the fair test
    assert theory.principal_angles(result.W2, U[:, :K]).max() < 1e-6
    assert theory.loss(data, result.W1, result.W2) - theory.optimal_loss(s, K, 0.0) < 1e-6

    small = train(data, TrainConfig(k=K, lam=0.0, lr=lr, steps=steps, seed=0, init_scale=1e-3))
    assert np.linalg.norm(small.W2.T @ small.W2 - np.eye(K), 2) < 1e-2  # the small-init confound


def test_default_init_gram_scale():
    """PyTorch's default init gives W2^T W2 ~ (m / 3k) I, W1 W1^T ~ I/3 (averaged over seeds)."""
    m, k = 60, 4
    grams = [build_model(m, k, seed).weights() for seed in range(20)]
    dec = np.mean([np.trace(W2.T @ W2) / k for _, W2 in grams])
    enc = np.mean([np.trace(W1 @ W1.T) / k for W1, _ in grams])
    assert dec == pytest.approx(m / (3 * k), rel=0.1)
    assert enc == pytest.approx(1 / 3, rel=0.1)


def test_plain_and_lightning_trainers_agree(data, tmp_path):
    pytest.importorskip("pytorch_lightning")
    cfg = TrainConfig(k=K, lam=0.05, lr=0.5, steps=25, batch_size=40, seed=3)
    plain = train(data, cfg, "plain")
    lightning = train(data, cfg, "lightning", log_dir=tmp_path)
    np.testing.assert_array_equal(plain.W1_init, lightning.W1_init)
    np.testing.assert_allclose(lightning.W1, plain.W1, rtol=0, atol=1e-13)
    np.testing.assert_allclose(lightning.W2, plain.W2, rtol=0, atol=1e-13)
    assert not np.allclose(plain.W1, plain.W1_init)  # it did train
    assert list(tmp_path.rglob("metrics.csv")), "Lightning metrics go to a CSVLogger in the log dir"


def test_minibatch_noise_floor_matches_prediction(data, spectrum):
    s, _ = spectrum
    lam = 0.1 * s[K - 1]
    lr, _ = checks.default_lr(s, M, K, seed=0, lams=[lam])
    wd = theory.weight_decay_for(lam, M)
    relax = checks.balance_steps(lr, wd, 1.0, False)
    result = train(data, TrainConfig(k=K, lam=lam, lr=lr, steps=15 * relax, batch_size=20, seed=0,
                                     average_last=5 * relax))
    floor = checks.sgd_noise_floor(data, result.W1, result.W2, 20, lr, wd, seed=0)
    ratio = np.linalg.norm(result.balance_mean) / np.linalg.norm(floor)
    assert 0.5 < ratio < 2.0
    # and the floor is what spoils the minibatch orthonormality check at this lr
    assert np.linalg.norm(floor) > 10 * lam / s[K - 1] * 1e-2
