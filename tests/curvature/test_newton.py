"""Float64 ground truth for notebook 01's library: Newton removal vs leave-k-out retraining,
influence functions vs leave-one-out, iHVP solvers vs a dense solve, Guo et al.'s bound."""
import numpy as np
import pytest

from tutorial_lib.curvature.newton import (
    ConvexProblem,
    fit,
    hashed_ngram_features,
    ihvp_cg,
    ihvp_exact,
    ihvp_lissa,
    influence_on_loss,
    influence_on_params,
    newton_removal,
    retrain_without,
    solve_damped,
)


def _synthetic(kind="logistic", n=300, d=12, classes=3, seed=0, lam=1e-2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # rows of norm 1, as Guo et al. assume
    w = rng.normal(size=(d, classes)) * 3
    if kind == "logistic":
        y = (X @ w[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    elif kind == "multinomial":
        y = np.argmax(X @ w + 0.5 * rng.normal(size=(n, classes)), axis=1)
    else:
        y = X @ w[:, 0] + 0.1 * rng.normal(size=n)
    return ConvexProblem(X, y, kind, lam, classes if kind == "multinomial" else 2)


@pytest.fixture(scope="module")
def corpus_problem():
    from tutorial_lib.curvature.newton import make_corpus_classification

    X, y = make_corpus_classification(n_per_class=200, n_features=128, seed=0)
    problem = ConvexProblem(X, y, "logistic", lam=1e-3)
    return problem, fit(problem)


@pytest.mark.parametrize("kind", ["logistic", "multinomial", "ridge"])
def test_gradient_and_hessian_match_finite_differences(kind):
    p = _synthetic(kind, n=40, d=4)
    theta = np.random.default_rng(1).normal(size=p.dim) * 0.3
    eps = 1e-6
    E = np.eye(p.dim)
    g_fd = np.array([(p.objective(theta + eps * e) - p.objective(theta - eps * e)) / (2 * eps) for e in E])
    H_fd = np.array([(p.gradient(theta + eps * e) - p.gradient(theta - eps * e)) / (2 * eps) for e in E])
    np.testing.assert_allclose(p.gradient(theta), g_fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p.hessian(theta), H_fd, rtol=1e-6, atol=1e-7)
    v = np.random.default_rng(2).normal(size=p.dim)
    np.testing.assert_allclose(p.hvp(theta, v), p.hessian(theta) @ v, rtol=1e-10)


def test_newton_step_on_a_quadratic_lands_on_the_analytic_minimiser():
    p = _synthetic("ridge")
    exact = np.linalg.solve(p.X.T @ p.X + p.lam * p.n * np.eye(p.dim), p.X.T @ p.y)
    start = np.random.default_rng(3).normal(size=p.dim)
    one_step = start - np.linalg.solve(p.hessian(start), p.gradient(start))
    np.testing.assert_allclose(one_step, exact, rtol=1e-10)
    np.testing.assert_allclose(fit(p), exact, rtol=1e-10)


@pytest.mark.parametrize("kind", ["logistic", "multinomial"])
def test_fit_reaches_a_stationary_point(kind):
    p = _synthetic(kind)
    theta = fit(p)
    assert np.linalg.norm(p.gradient(theta)) < 1e-8


def test_newton_removal_matches_leave_k_out_and_error_grows_with_k(corpus_problem):
    problem, theta = corpus_problem
    errors = []
    for k in (1, 10, 100):
        remove = np.random.default_rng(k).choice(problem.n, k, replace=False)
        result = newton_removal(problem, theta, remove)
        truth = retrain_without(problem, remove, theta0=theta)
        errors.append(np.linalg.norm(result.theta - truth) / np.linalg.norm(truth - theta))
        assert result.residual_norm <= result.residual_bound  # Guo et al.'s data-dependent bound
    assert errors[0] <= 1e-3, errors
    assert errors[0] < errors[1] < errors[2], errors


@pytest.mark.parametrize("kind,seed", [("logistic", 0), ("logistic", 1), ("logistic", 2)])
def test_residual_below_bound_and_more_steps_converge(kind, seed):
    p = _synthetic(kind, seed=seed, lam=1e-3)
    theta = fit(p)
    for k in (1, 5, 30):
        remove = np.arange(k) * 7
        one = newton_removal(p, theta, remove)
        assert one.residual_norm <= one.residual_bound
        three = newton_removal(p, theta, remove, steps=3)
        np.testing.assert_allclose(three.theta, retrain_without(p, remove, theta0=theta), rtol=1e-9, atol=1e-12)


def test_influence_predicts_leave_one_out_test_loss(corpus_problem):
    problem, theta = corpus_problem
    test_X = hashed_ngram_features(["And the LORD spake unto Moses, saying,", "What light through yonder window breaks?"], 128)
    test_y = np.array([1, 0])
    test = ConvexProblem(test_X, test_y, "logistic", problem.lam)
    removed = np.arange(60)
    predicted = influence_on_loss(problem, theta, removed, test_X, test_y)
    actual = [test.losses(retrain_without(problem, [i], theta0=theta)).sum() - test.losses(theta).sum() for i in removed]
    assert np.corrcoef(predicted, actual)[0, 1] >= 0.95
    # the influence function uses the full-data Hessian (the removed point's own curvature included):
    # within 10 % of the true change here, while the Newton step on the remaining data is far closer
    step = influence_on_params(problem, theta, 5)
    truth = retrain_without(problem, [5], theta0=theta)
    influence_error = np.linalg.norm(theta + step - truth) / np.linalg.norm(truth - theta)
    newton_error = np.linalg.norm(newton_removal(problem, theta, [5]).theta - truth) / np.linalg.norm(truth - theta)
    assert influence_error < 0.1 and newton_error < influence_error / 10


def test_ihvp_solvers_match_the_exact_solve():
    p = _synthetic("logistic", n=200, d=20)
    theta = fit(p)
    H = p.hessian(theta)
    v = np.random.default_rng(4).normal(size=p.dim)
    damping = 0.5
    exact = ihvp_exact(H, v, damping)
    cg = ihvp_cg(lambda x: p.hvp(theta, x), v, damping, rtol=1e-12)
    assert np.linalg.norm(cg - exact) <= 1e-8 * np.linalg.norm(exact)
    tol = 1e-6
    scale = 1.1 * np.linalg.eigvalsh(H + damping * np.eye(p.dim)).max()
    lissa = ihvp_lissa(lambda x: p.hvp(theta, x), v, damping, scale, tol=tol)
    A = H + damping * np.eye(p.dim)
    assert np.linalg.norm(A @ lissa - v) <= tol * np.linalg.norm(v)
    assert np.linalg.norm(lissa - exact) <= tol * np.linalg.cond(A) * np.linalg.norm(exact)


def test_bad_requests_are_named():
    p = _synthetic("logistic", n=30)
    theta = fit(p)
    with pytest.raises(ValueError, match="removing all 30 points"):
        newton_removal(p, theta, np.arange(30))
    with pytest.raises(IndexError, match="index 30"):
        newton_removal(p, theta, [3, 30])
    with pytest.raises(IndexError, match="index -1"):
        newton_removal(p, theta, [-1])
    with pytest.raises(ValueError, match="index 4 to remove is repeated"):
        newton_removal(p, theta, [4, 2, 4])
    with pytest.raises(ValueError, match="empty"):
        newton_removal(p, theta, [])
    with pytest.raises(ValueError, match="damping > 0, got 0"):
        ihvp_lissa(lambda x: x, np.ones(3), damping=0.0, scale=2.0)
    with pytest.raises(ValueError, match="damping must be >= 0, got -1"):
        solve_damped(np.eye(3), np.ones(3), damping=-1.0)
    singular = np.diag([1.0, 0.0, 2.0])
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        solve_damped(singular, np.ones(3))
    np.testing.assert_allclose(solve_damped(singular, np.ones(3), damping=1.0), [0.5, 1.0, 1 / 3])
    with pytest.raises(ValueError, match="lam must be positive"):
        ConvexProblem(p.X, p.y, lam=0.0)
    with pytest.raises(ValueError, match="unknown model kind 'svm'"):
        ConvexProblem(p.X, p.y, kind="svm")


def test_certified_noise_scale_and_its_errors():
    from tutorial_lib.curvature.newton import certified_noise_std, perturb

    sigma = certified_noise_std(1.0, 1e-4, 0.1)
    assert sigma == pytest.approx(np.sqrt(2 * np.log(1.5e4)) * 0.1)
    assert certified_noise_std(2.0, 1e-4, 0.1) == pytest.approx(sigma / 2)
    for bad, match in (((0.0, 1e-4, 0.1), "eps"), ((1.0, 1.0, 0.1), "delta"), ((1.0, 0.0, 0.1), "delta"), ((1.0, 0.1, 0.0), "residual_budget")):
        with pytest.raises(ValueError, match=match):
            certified_noise_std(*bad)
    p = _synthetic("logistic", n=50)
    noisy = perturb(p, 0.5, seed=1)
    theta = fit(noisy)
    assert np.linalg.norm(noisy.gradient(theta)) < 1e-8
    assert np.allclose(noisy.gradient(theta) - p.gradient(theta), noisy.b)


def test_mlp_derivatives_and_damped_newton():
    from tutorial_lib.curvature.newton import MLPProblem, newton_step

    p = _synthetic("logistic", n=60, d=3)
    mlp = MLPProblem(p.X, p.y, hidden=3)
    theta = mlp.init(seed=0)
    eps = 1e-6
    E = np.eye(mlp.dim)
    g_fd = np.array([(mlp.objective(theta + eps * e) - mlp.objective(theta - eps * e)) / (2 * eps) for e in E])
    np.testing.assert_allclose(mlp.gradient(theta), g_fd, atol=1e-8)
    H = mlp.hessian(theta)
    H_fd = np.array([(mlp.gradient(theta + eps * e) - mlp.gradient(theta - eps * e)) / (2 * eps) for e in E])
    np.testing.assert_allclose(H, H_fd, atol=1e-7)
    big = newton_step(mlp, theta, damping=1e6)  # huge damping: a tiny gradient step
    np.testing.assert_allclose(big, theta - mlp.gradient(theta) / 1e6, rtol=1e-5, atol=1e-12)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        newton_step(mlp, theta, damping=-0.1)
