"""Notebooks 01 and 02's measurements as library calls: Newton removal against retraining, the
per-sample-gradient timings, the damped-direction cosines, the structure-cost table, the four
curvature matrices and the Newton / empirical-Fisher cosine, against ground truth."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.curvature.ground_truth import (
    cosine,
    curvature_matrices,
    damped_direction,
    empirical_fisher,
    exact_hessian,
    gauss_newton,
    loss_gradient,
    newton_fisher_cosine,
    true_fisher,
)
from tutorial_lib.curvature.newton import ConvexProblem, fit, newton_removal, retrain_without
from tutorial_lib.curvature.outputs import classifier_outputs, regression_outputs
from tutorial_lib.curvature.studies import (
    damping_study,
    newton_removal_study,
    structure_costs_markdown,
    time_per_sample_gradients,
)


def _logistic(n=120, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # rows of norm 1: Guo et al.'s bound applies
    y = (X @ rng.normal(size=d) + 0.3 * rng.normal(size=n) > 0).astype(float)
    return ConvexProblem(X, y, "logistic", lam=1e-2)


def test_newton_removal_study_matches_retraining_and_its_bound():
    problem = _logistic()
    theta = fit(problem)
    study = newton_removal_study(problem, theta, (1, 5, 20), seed=3)
    assert study.sizes == [1, 5, 20] and sorted(study.order.tolist()) == list(range(problem.n))
    # the same numbers by hand, for the largest set
    remove = study.order[:20]
    truth = retrain_without(problem, remove, theta0=theta)
    one = newton_removal(problem, theta, remove)
    assert math.isclose(study.rows[-1]["one"], np.linalg.norm(one.theta - truth) / np.linalg.norm(truth - theta), rel_tol=1e-9)
    errors = [r["one"] for r in study.rows]
    assert errors[0] < 1e-2 and errors[0] < errors[-1]  # one point: almost exact; more points: the curvature changes on the way
    assert all(r["three"] < r["one"] for r in study.rows)  # more Newton steps close the gap
    assert all(r["residual"] <= r["bound"] for r in study.rows)  # Guo et al.'s bound is a theorem
    lines = study.summary().splitlines()
    assert len(lines) == 3 and lines[0].startswith("k=   1: relative error 1 step ") and "Newton step(s)" in lines[0]
    assert study.to_dict()["rows"][0]["k"] == 1
    with pytest.raises(ValueError, match="removal sizes"):
        newton_removal_study(problem, theta, (0, 5))


def test_damped_direction_and_the_damping_study_against_ground_truth():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    Q = torch.linalg.qr(A).Q
    H = Q @ torch.diag(torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, -0.4], dtype=torch.float64)) @ Q.T  # indefinite, positive trace
    F = A @ A.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    g = torch.randn(6, generator=gen, dtype=torch.float64)
    lam = 0.3
    want = torch.linalg.solve(F + lam * float(F.trace()) / 6 * torch.eye(6, dtype=torch.float64), g)
    assert torch.allclose(damped_direction(F, g, lam), want, rtol=0, atol=1e-12)
    study = damping_study({"Hessian": H, "same": H.clone(), "empirical Fisher": F}, g, [1e-3, 1.0, 1e6])
    assert list(study.cosines) == ["same", "empirical Fisher", "diagonal empirical Fisher"]
    assert all(abs(c - 1) < 1e-10 for c in study.cosines["same"])  # the reference against itself
    assert all(values[-1] > 0.999 for values in study.cosines.values())  # heavy damping: every direction is g
    eigenvalues = torch.linalg.eigvalsh(H)
    assert eigenvalues.min() < 0
    assert math.isclose(study.positive_from, 0.4 / (11.1 / 6), rel_tol=1e-9)  # |most negative eigenvalue| / mean eigenvalue
    assert study.at(0.9)["empirical Fisher"] == study.cosines["empirical Fisher"][1]
    lines = study.summary(show=(1e-3, 1.0)).splitlines()
    assert lines[0].startswith("the damped Hessian is positive definite from relative damping ")
    assert lines[1].startswith("same") and "cos at relative damping 0.001: +1.000   1: +1.000" in lines[1]
    assert study.to_dict()["rel_dampings"] == [1e-3, 1.0, 1e6]
    with pytest.raises(ValueError):
        damping_study({"GGN": F}, g, [1.0])
    with pytest.raises(ValueError):
        damped_direction(F, g, -1.0)


def test_curvature_matrices_are_the_four_ground_truth_functions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (7,), generator=gen))
    mats = curvature_matrices(model, batch, outputs_fn=classifier_outputs, n_draws=5, seed=2)
    assert list(mats) == ["Hessian", "GGN", "true Fisher (MC, 5 draws)", "empirical Fisher"]
    kw = dict(outputs_fn=classifier_outputs)
    assert torch.equal(mats["Hessian"], exact_hessian(model, batch, **kw))
    assert torch.equal(mats["GGN"], gauss_newton(model, batch, **kw))
    assert torch.equal(mats["true Fisher (MC, 5 draws)"], true_fisher(model, batch, n_draws=5, seed=2, **kw))
    assert torch.equal(mats["empirical Fisher"], empirical_fisher(model, batch, **kw))


def test_newton_fisher_cosine_on_a_line_against_the_closed_form():
    """Squared loss on y ≈ wx + b: H = mean x̃x̃ᵀ, F̂ = mean r²x̃x̃ᵀ, ∇L = mean r·x̃ with x̃ = (x, 1), r = wx + b − y."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, generator=gen, dtype=torch.float64)
    y = 2 * x - 1 + 0.3 * torch.randn(50, 1, generator=gen, dtype=torch.float64)
    line = nn.Linear(1, 1).double()
    before = [p.detach().clone() for p in line.parameters()]
    for w, b in ((-3.0, -1.0), (1.5, 0.2)):
        xt = torch.cat([x, torch.ones_like(x)], 1)
        r = (w * x + b - y).squeeze(1)
        H, F, grad = xt.T @ xt / 50, (xt * r[:, None] ** 2).T @ xt / 50, xt.T @ r / 50
        want = cosine(torch.linalg.solve(H, grad), torch.linalg.solve(F, grad))
        got = newton_fisher_cosine(line, (x, y), theta=[w, b], outputs_fn=regression_outputs)
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    assert all(torch.equal(p, q) for p, q in zip(line.parameters(), before))  # theta is applied to a copy
    with torch.no_grad():
        line.weight.fill_(1.5)
        line.bias.fill_(0.2)
    assert math.isclose(newton_fisher_cosine(line, (x, y), outputs_fn=regression_outputs), got, rel_tol=1e-12)
    assert loss_gradient(line, (x, y), outputs_fn=regression_outputs).shape == (2,)


def test_per_sample_timing_names_every_method_and_its_ratio():
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16), 40, seed=0).eval()
    batch = {"input_ids": torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(0))}
    timing = time_per_sample_gradients(model, batch, methods=("hooks", "loop"), repeats=1)
    assert list(timing.seconds) == ["batched backward (one gradient)", "per-sample: hooks", "per-sample: loop"]
    assert all(s > 0 for s in timing.seconds.values()) and timing.ratio("batched backward (one gradient)") == 1.0
    assert all(p.grad is None for p in model.parameters())  # the baseline leaves no gradients behind
    lines = timing.summary().splitlines()
    assert lines[0] == f"{sum(p.numel() for p in model.parameters()):,} parameters, batch (3, 16)" and len(lines) == 4
    assert lines[2].startswith("  per-sample: hooks") and lines[2].endswith("x")
    assert timing.to_dict()["batch_shape"] == [3, 16]
    with pytest.raises(ValueError):
        time_per_sample_gradients(model, batch, repeats=0)


def test_structure_costs_markdown():
    v = torch.tensor([1.0, 0.0])
    rows = [dict(structure="woodbury", m=4, dim=2, build_s=0.5, product_s=0.002, memory_mb=1.25, result=v),
            dict(structure="diagonal", m=4, dim=2, build_s=0.1, product_s=0.0001, memory_mb=0.5, result=torch.tensor([1.0, 1.0])),
            dict(structure="dense", m=4, dim=2, memory_mb=12345.0, refused="dense: 12 GB over the budget")]
    text = structure_costs_markdown(rows)
    lines = text.splitlines()
    assert lines[:2] == ["| structure | build s | product ms | memory MB | cos to exact |", "|---|---|---|---|---|"]
    assert lines[2] == "| woodbury | 0.50 | 2.0 | 1.25 | 1.0000 |"
    assert lines[3] == "| diagonal | 0.10 | 0.1 | 0.50 | 0.7071 |"  # cos 45°
    assert lines[4] == "| dense | refused | | 12,345 | |"
    assert lines[5:] == ["", "dense: 12 GB over the budget"]
