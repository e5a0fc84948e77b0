"""The fast default: the full-batch objective through C = XX^T/n, heavy-ball momentum with
adaptive restart, stop on convergence -- same iterates / same minimiser as the plain path."""

import re

import numpy as np
import pytest
import torch

from repro.autoencoder import __main__ as cli
from repro.autoencoder import checks, theory
from repro.autoencoder.data import named_spectrum, synthetic
from repro.autoencoder.table import fmt_value, markdown_sections
from repro.autoencoder.train import TrainConfig, covariance_objective, build_model, train
from repro.errors import UserError
from repro.runlog import read_records


@pytest.fixture(scope="module")
def wide():
    """m = 64, k = 8, a geometric spectrum over two decades."""
    return synthetic(m=64, n=1000, k=8, seed=5, eigenvalues=np.geomspace(1.0, 1e-2, 64)).X


def test_covariance_objective_is_the_full_batch_mseloss(wide):
    model = build_model(64, 8, seed=1)
    rows = torch.from_numpy(wide.T.copy())
    C = torch.from_numpy(wide @ wide.T / wide.shape[1])
    plain = torch.nn.MSELoss()(model(rows), rows)
    fast = covariance_objective(model, C)
    assert fast.item() == pytest.approx(plain.item(), rel=1e-12)
    g_plain = torch.autograd.grad(plain, list(model.parameters()))
    g_fast = torch.autograd.grad(covariance_objective(model, C), list(model.parameters()))
    for a, b in zip(g_plain, g_fast):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("momentum", [0.0, 0.95])
def test_fast_path_iterates_equal_the_mseloss_path(wide, momentum):
    """300 float64 steps: the objective written through C gives the nn.MSELoss iterates to ~1e-12."""
    s, _ = theory.spectrum(wide)
    lam = 1e-3 * s[7]
    lr, _ = checks.default_lr(s, 64, 8, seed=0, lams=[lam])
    cfg = dict(k=8, lam=lam, lr=lr / 2, steps=300, momentum=momentum, restart=momentum > 0)
    rows = train(wide, TrainConfig(**cfg, objective="rows"))
    fast = train(wide, TrainConfig(**cfg, objective="covariance"))
    assert np.abs(rows.W1 - rows.W1_init).max() > 0.05  # it moved
    assert np.abs(fast.W1 - rows.W1).max() < 1e-12 and np.abs(fast.W2 - rows.W2).max() < 1e-12
    assert fast.optimizer["objective"] == "covariance" and rows.optimizer["objective"] == "rows"
    assert fast.restarts == rows.restarts and (fast.restarts > 0) == (momentum > 0)
    # the minibatch run cannot use C
    with pytest.raises(UserError, match="needs batch_size 0"):
        train(wide, TrainConfig(**{**cfg, "batch_size": 50}, objective="covariance"))


def test_momentum_reaches_the_closed_form_far_sooner_than_plain_gd(wide):
    s, U = theory.spectrum(wide)
    k, lam = 8, 1e-3 * s[7]
    W1_0, W2_0 = build_model(64, k, 0).weights()
    D0 = float(np.linalg.norm(W1_0 @ W1_0.T - W2_0.T @ W2_0))
    lr_gd, B = checks.default_lr(s, 64, k, 0, [lam])
    plan = checks.plan_sweep_point(wide, s, k, lam, checks.Settings(k=k), B, lr_gd, D0)
    assert 0.9 < plan.config.momentum < 1 and plan.config.restart
    result = train(wide, plan.config)
    assert result.stop_reason == "converged"
    W1c, W2c = theory.closed_form(s, U, k, lam)
    np.testing.assert_allclose(np.linalg.svd(result.W2, compute_uv=False), np.sqrt(1 - lam / s[:k]), atol=1e-9)
    np.testing.assert_allclose(result.W2 @ result.W1, W2c @ W1c, atol=1e-8)  # O(k)-invariant product
    assert np.linalg.norm(result.W1 - result.W2.T) < 1e-8
    assert np.linalg.norm(result.W2.T @ result.W2 - np.eye(k), 2) == pytest.approx(1e-3, rel=1e-4)
    assert theory.loss(wide, result.W1, result.W2, lam) - theory.optimal_loss(s, k, lam) < 1e-12
    # Plain GD at its own (larger, 0.9-of-stable) lr needs ~1/(2 lr wd) steps per e-fold of the balance
    # mode; critically damped heavy ball ~sqrt(h_max/h_min) times fewer (~50 here).
    passed = checks.closed_form_checks(lam, result.W1, result.W2, s, U, k, wide, torch.float64)
    assert [c.verdict for c in passed] == ["PASS"] * 5
    with pytest.raises(TypeError, match="torch dtype"):  # not silently the float32 tolerances
        checks.closed_form_checks(lam, result.W1, result.W2, s, U, k, wide, np.float64)
    gd_steps = checks.balance_steps(lr_gd, theory.weight_decay_for(lam, 64), np.log(D0 / 1e-8), singular_C=False)
    assert result.steps * 10 < gd_steps


def test_lightning_gives_the_same_numbers_with_momentum_and_stop(wide, tmp_path):
    pytest.importorskip("pytorch_lightning")
    s, _ = theory.spectrum(wide)
    cfg = TrainConfig(k=8, lam=0.1 * s[7], lr=2.0, steps=5000, momentum=0.9, restart=True,
                      grad_tol=1e-6, balance_tol=1e-6, check_every=10)
    plain = train(wide, cfg, "plain")
    lightning = train(wide, cfg, "lightning", log_dir=tmp_path)
    assert plain.stop_reason == lightning.stop_reason == "converged"
    assert plain.steps == lightning.steps < 5000 and plain.restarts == lightning.restarts
    np.testing.assert_allclose(lightning.W2, plain.W2, rtol=0, atol=1e-13)


@pytest.mark.parametrize("spec, k, lam, limit", [
    ([3.0, 2.5, 2.0, 1.9, 0.5, 0.01], 3, 0.02, "eigengap block"),
    ([3.0, 2.5, 2.0, 1.9, 0.5, 0.01], 3, 0.6, "eigengap block"),
    ([1.0, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1], 2, 0.006, "balance mode 4 lam"),
    ([3.0, 2.5, 2.0, 1.0, 0.5, 0.01], 3, 1.95, "gain mode 4 (s_k - lam)"),
])
def test_smallest_curvature_matches_the_numerical_hessian(spec, k, lam, limit):
    m = len(spec)
    X = synthetic(m, 400, k, eigenvalues=np.array(spec)).X
    s, U = theory.spectrum(X)
    C = torch.from_numpy(X @ X.T / 400)
    W1, W2 = theory.closed_form(s, U, k, lam)

    def L(v):
        A, Bm = v[:k * m].reshape(k, m), v[k * m:].reshape(m, k)
        R = torch.eye(m, dtype=torch.float64) - Bm @ A
        return torch.trace(R @ C @ R.T) + lam * ((A**2).sum() + (Bm**2).sum())

    H = torch.autograd.functional.hessian(L, torch.from_numpy(np.concatenate([W1.ravel(), W2.ravel()])))
    ev = np.linalg.eigvalsh(H.numpy())
    assert (np.abs(ev) < 1e-9).sum() == k * (k - 1) // 2  # the rotations are flat
    smallest = theory.smallest_curvature(s, k, lam)
    assert smallest == pytest.approx(ev[ev > 1e-9].min(), rel=1e-9)
    assert (smallest == pytest.approx(4 * lam)) == (limit == "balance mode 4 lam")
    assert (smallest == pytest.approx(4 * (s[k - 1] - lam))) == (limit == "gain mode 4 (s_k - lam)")


def test_default_run_m64_k8_passes_all_three_ratios(tmp_path, capsys):
    """No flags beyond the problem size: every lam/s_k in {1e-3, 1e-2, 1e-1} runs and passes."""
    code = cli.main(["--m", "64", "--n", "1000", "--k", "8", "--spectrum", "geometric:100",
                     "--log-dir", str(tmp_path), "--plot", "none"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "plan: lam/s_k=0.001: ~" in out and "Estimated" in out  # printed before the work
    assert out.index("plan: ") < out.index("━")
    bars = {line.split("━")[0].strip(): line for line in out.splitlines() if "━" in line and " steps " in line}
    assert set(bars) == {"lam/s_k=0.001", "lam/s_k=0.01", "lam/s_k=0.1", "lam=0, default init",
                         "lam=0, init N(0,0.001^2)", "minibatch b=50"}  # one progress bar per run
    (record,) = read_records(tmp_path, "autoencoder")
    assert not record["notes"], record["notes"]
    s_k = record["spectrum_top"][7]
    for ratio in ("0.001", "0.01", "0.1"):
        rows = [c for c in record["checks"] if c["name"].startswith(f"B lam/s_k={ratio}:")]
        assert len(rows) == 5 and all(c["verdict"] == "PASS" for c in rows)
        gram = next(c for c in rows if "||W2^T W2 - I||_2" in c["name"])
        assert gram["measured"] == pytest.approx(float(ratio), rel=1e-2)
    assert [c for c in record["checks"] if c["verdict"] == "FAIL"] == []
    sweep = [r for r in record["runs"] if r["run"].startswith("lam/s_k")]
    assert len(sweep) == 3
    for run in sweep:  # each bar ends at the step its run stopped at
        assert re.search(rf" {run['steps']}/{run['steps']} +steps", bars[run["run"]])
    for run in sweep:  # what optimised it is on record
        assert run["stop"] == "converged" and run["optimizer"] == "SGD" and run["objective"] == "covariance"
        assert 0 < run["momentum"] < 1 and run["adaptive_restart"]
        assert run["weight_decay"] == pytest.approx(2 * float(run["run"].split("=")[1]) * s_k / 64, rel=1e-3)
    controls = {r["run"]: r for r in record["runs"] if not r["run"].startswith("lam/s_k")}
    assert all(r["momentum"] == 0 for r in controls.values())  # D is conserved only without momentum


def test_named_spectra():
    np.testing.assert_allclose(named_spectrum("geometric:100", 5), [1, 10**-0.5, 0.1, 10**-1.5, 0.01])
    np.testing.assert_allclose(named_spectrum("power:2", 4), [1, 1 / 4, 1 / 9, 1 / 16])
    assert named_spectrum("1,2,3", 3) is None
    with pytest.raises(UserError, match="span must be > 1"):
        named_spectrum("geometric:0.5", 4)
    with pytest.raises(UserError, match="wants a number"):
        named_spectrum("power:x", 4)


def test_report_prints_lambda_and_values_with_sensible_precision():
    lam = 0.001 * 0.9999999999999996
    record = {"run_id": "r1", "dataset": "digits", "m": 64, "n": 1797, "k": 2, "lambda": lam, "lambdas": [lam, 0.01],
              "spectrum_top": [2.0, 1.0, 0.5], "optimizer": "momentum", "trainer": "plain", "seconds": 3.21,
              "checks": [{"name": "B angle", "measured": 8.123456789e-15, "predicted": "-", "tolerance": "<= 1e-08 rad",
                          "verdict": "PASS"},
                         {"name": "B gram", "measured": 0.0009999754, "predicted": lam, "tolerance": "+-1e-05",
                          "verdict": "PASS"}]}
    text = "\n".join(markdown_sections([record]))
    assert "0.0009999999999999996" not in text and "λ = 0.001, 0.01 (λ/s_k = 0.001, 0.01)" in text
    assert "| B angle | 8.123e-15 | — | <= 1e-08 rad | PASS |" in text  # a bound has no predicted value
    assert "| B gram | 0.001 | 0.001 |" in text and "2 pass, 0 fail, 0 info, 3.2 s" in text
    assert fmt_value(0) == "0" and fmt_value(None) == "—" and fmt_value("> 1e-3") == "> 1e-3"
    # check names with |.| stay inside their markdown cell
    record["checks"] = [{"name": "A: |grad W1|", "measured": 1e-16, "predicted": 0.0, "tolerance": "<= 1e-12",
                         "verdict": "PASS"}]
    row = markdown_sections([record])[-2]
    assert row == "| A: \\|grad W1\\| | 1e-16 | 0 | <= 1e-12 | PASS |" and row.replace("\\|", "").count("|") == 6


def test_zero_lam_prediction_takes_out_the_null_directions():
    """Constant 'pixels' (null directions of C) get no encoder gradient at lam = 0: their share of
    D stays where the init put it, and gamma(D0) is right only once it is taken out."""
    X = np.vstack([synthetic(m=6, n=300, k=3, seed=4).X, np.zeros((4, 300))])
    X = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 10)))[0] @ X  # hide them in a rotation
    s, U = theory.spectrum(X)
    lr = checks.default_lr(s, 10, 3, seed=0, lams=[0.0])[0] / 5
    result = train(X, TrainConfig(k=3, lam=0.0, lr=lr, steps=checks.control_steps(s, 3, lr, 10, None), seed=0))
    null = U[:, s <= checks.NULL_VARIANCE * s[0]]
    assert null.shape == (10, 4)
    np.testing.assert_allclose(result.W1 @ null, result.W1_init @ null, atol=1e-14)
    measured = np.sort(np.linalg.eigvalsh(result.W2.T @ result.W2))[::-1]

    def rel_err(frozen):
        gamma = theory.balance_eigenvalues_at_zero_lam(result.W1_init, result.W2_init, frozen=frozen)
        return np.max(np.abs(measured - gamma) / gamma)

    assert rel_err(null) < 0.02 < 0.04 < rel_err(None)


def test_a_step_cap_makes_the_controls_info_not_fail():
    X = synthetic(m=8, n=200, k=3, seed=2).X
    s, _ = theory.spectrum(X)
    lam = 0.1 * s[2]
    lr, _ = checks.default_lr(s, 8, 3, 0, [lam])
    capped = checks.Settings(k=3, max_steps=30)
    report = checks.Report()
    rows = checks.zero_lam_checks(X, s, 3, capped, lr, 0.1, report)
    verdicts = {c.name: c.verdict for c in rows}
    assert verdicts["lam=0, default init: eig(W2^T W2) vs gamma(D0), max rel err"] == "INFO"
    assert verdicts["lam=0, default init: ||W2^T W2 - I||_2"] == "PASS"  # conservation decides it at any step
    small = [c for c in rows if c.name.startswith("lam=0, init N(0,0.001^2): ||W2^T W2 - I||_2")][0]
    assert small.verdict == "INFO" and small.measured > 0.9  # 30 steps: still near the saddle at 0
    assert all("not decidable in the step budget" in c.why for c in rows if c.verdict == "INFO")
    full = train(X, TrainConfig(k=3, lam=lam, lr=lr, steps=2000))
    point = checks.SweepPoint(lam, 0.0, 2000, full, np.linalg.svd(full.W2, compute_uv=False),
                              theory.predicted_singular_values(s, 3, lam))
    mb = checks.minibatch_checks(X, s, 3, lam, checks.Settings(k=3, batch_size=20, max_steps=30), lr, point, report)
    assert mb[0].verdict == "INFO" and "not decidable" in mb[0].why
    assert [r["steps"] for r in report.runs] == [30, 30, 30]
    # uncapped, the same controls are decided and pass
    decided = checks.zero_lam_checks(X, s, 3, checks.Settings(k=3), lr, 0.1, checks.Report())
    assert {c.verdict for c in decided} == {"PASS"}
