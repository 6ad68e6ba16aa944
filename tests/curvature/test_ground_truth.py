"""Hessian, GGN, true and empirical Fisher, and K-FAC against dense ground truth (float64)."""
import pytest
import torch
from torch import nn

from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.curvature.ground_truth import (
    cosine,
    empirical_fisher,
    exact_hessian,
    gauss_newton,
    loss_gradient,
    preconditioned_descent,
    true_fisher,
)
from tutorial_lib.curvature.kfac import KFACFisher, structure_costs
from tutorial_lib.curvature.memory import MemoryBudgetError
from tutorial_lib.curvature.outputs import classifier_outputs, regression_outputs
from tutorial_lib.curvature.per_sample import per_sample_gradients, select_parameters


def _data(n, d_in, classes=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    if classes is None:
        return x, torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=gen)


def test_ggn_equals_hessian_for_a_linear_model_with_squared_loss():
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    batch = _data(9, 4)
    H = exact_hessian(model, batch, outputs_fn=regression_outputs)
    GGN = gauss_newton(model, batch, outputs_fn=regression_outputs)
    assert torch.allclose(GGN, H, rtol=0, atol=1e-12)
    x = torch.cat([batch[0], torch.ones(9, 1, dtype=torch.float64)], 1)
    assert torch.allclose(H[:4, :4], x[:, :4].T @ x[:, :4] / 9, atol=1e-12)  # ∇² of ½‖Wx+b−y‖², first output


def test_ggn_is_the_exact_true_fisher_for_cross_entropy():
    """Σ_y p(y|x) g_y g_yᵀ, enumerating every label, equals the GGN of a softmax classifier."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = _data(5, 3, classes=3)
    GGN = gauss_newton(model, (x, y), outputs_fn=classifier_outputs)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    want = 0
    for c in range(3):
        G = per_sample_gradients(model, (x, torch.full_like(y, c)), outputs_fn=classifier_outputs)
        want = want + (G * p[:, c : c + 1]).T @ G / len(x)
    assert torch.allclose(GGN, want, atol=1e-12)
    # and the Monte Carlo true Fisher converges to it
    mc = true_fisher(model, (x, y), outputs_fn=classifier_outputs, n_draws=400, seed=0)
    assert float((mc - GGN).norm() / GGN.norm()) < 0.15


def test_hessian_matches_finite_differences_of_the_gradient():
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16), 257, seed=0, dtype=torch.float64)
    batch = {"input_ids": torch.randint(0, 257, (3, 10), generator=torch.Generator().manual_seed(0))}
    space = select_parameters(model, "transformer.ln_f")
    H = exact_hessian(model, batch, space)
    assert torch.allclose(H, H.T, atol=1e-10)
    e = torch.zeros(space.dim, dtype=torch.float64)
    e[5] = 1e-5
    g0 = loss_gradient(model, batch, space)
    space.add_(model, e)
    g1 = loss_gradient(model, batch, space)
    space.add_(model, -e)
    assert torch.allclose((g1 - g0) / 1e-5, H[:, 5], atol=1e-6)


def test_curvatures_on_a_tiny_gpt2_subset_are_symmetric_and_ggn_psd():
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16), 257, seed=0, dtype=torch.float64)
    batch = {"input_ids": torch.randint(0, 257, (4, 12), generator=torch.Generator().manual_seed(1))}
    space = select_parameters(model, "transformer.ln_f")
    GGN = gauss_newton(model, batch, space)
    EF = empirical_fisher(model, batch, space)
    for M in (GGN, EF):
        assert torch.allclose(M, M.T, atol=1e-12)
        assert float(torch.linalg.eigvalsh(M).min()) > -1e-10
    assert cosine(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)) == pytest.approx(1.0)


def _kfac_dense(K, space, layer_name):
    S, A = K.kronecker_factors(layer_name)
    return torch.kron(S, A) + K.damping * torch.eye(len(S) * len(A), dtype=S.dtype)


def test_kfac_inverse_equals_dense_inverse_of_the_damped_kronecker_matrix():
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16), 257, seed=0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 257, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    space = select_parameters(model, ["transformer.h.0.attn.c_attn", "transformer.ln_f"])
    K = KFACFisher.from_model(model, [batch], space, damping=1e-3)
    assert set(K.layers) == {"transformer.h.0.attn.c_attn"}
    v = torch.randn(space.dim, generator=gen, dtype=torch.float64)
    parts = space.unflatten(v)
    # Conv1D weight (in, out) -> row-major (out, in + 1) with the bias as the last column
    V = torch.cat([parts["transformer.h.0.attn.c_attn.weight"].T, parts["transformer.h.0.attn.c_attn.bias"][:, None]], 1)
    want = torch.linalg.solve(_kfac_dense(K, space, "transformer.h.0.attn.c_attn"), V.reshape(-1)).reshape(V.shape)
    got = space.unflatten(K.inverse_product(v))
    assert float((got["transformer.h.0.attn.c_attn.weight"] - want[:, :-1].T).norm() / want.norm()) < 1e-8
    assert float((got["transformer.h.0.attn.c_attn.bias"] - want[:, -1]).norm() / want.norm()) < 1e-8
    # the layer norm falls back to the damped diagonal empirical Fisher
    G = per_sample_gradients(model, batch, select_parameters(model, "transformer.ln_f"))
    ln = got["transformer.ln_f.weight"]
    assert torch.allclose(ln, parts["transformer.ln_f.weight"] / ((G[:, :16] ** 2).mean(0) + 1e-3), rtol=1e-10)
    # powers compose
    half = K.power_product(K.power_product(v, -0.5), -0.5)
    assert float((half - K.inverse_product(v)).norm() / v.norm()) < 1e-8


def test_kfac_is_exact_for_one_example_with_one_token():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = _data(1, 3, classes=2)
    K = KFACFisher.from_model(model, [batch], outputs_fn=classifier_outputs, damping=0.1)
    g = per_sample_gradients(model, batch, outputs_fn=classifier_outputs)[0]
    space = select_parameters(model)
    # within each layer S ⊗ A = g gᵀ exactly; K-FAC has no blocks across layers
    want = 0.1 * torch.eye(space.dim, dtype=torch.float64) + torch.outer(g, g)
    want[:16, 16:] = 0
    want[16:, :16] = 0
    assert torch.allclose(K.dense(), want, atol=1e-12)


def test_kfac_bad_input():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    batch = _data(2, 3, classes=2)
    with pytest.raises(ValueError, match="damping"):
        KFACFisher.from_model(model, [batch], outputs_fn=classifier_outputs, damping=0)
    with pytest.raises(ValueError, match="empty"):
        KFACFisher.from_model(model, [], outputs_fn=classifier_outputs)
    with pytest.raises(MemoryBudgetError):
        KFACFisher.from_model(model, [batch], outputs_fn=classifier_outputs, max_bytes=10)


def test_newton_descent_solves_linear_regression_in_one_step_and_the_empirical_fisher_does_not():
    torch.manual_seed(4)
    model = nn.Linear(1, 1).double()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(50, 1, generator=gen, dtype=torch.float64) + 1
    y = 2 * x - 1 + 0.5 * torch.randn(50, 1, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(-3.0)
        model.bias.fill_(-1.0)
    path, losses = preconditioned_descent(model, (x, y), "hessian", steps=2, outputs_fn=regression_outputs)
    X = torch.cat([x, torch.ones_like(x)], 1)
    least_squares = torch.linalg.lstsq(X, y).solution.flatten()
    assert torch.allclose(path[1], least_squares, atol=1e-10) and losses[1] <= losses[2] + 1e-12
    assert float(model.weight.detach()) == -3.0  # the model passed in is untouched
    ef_path, ef_losses = preconditioned_descent(model, (x, y), "empirical_fisher", steps=2, outputs_fn=regression_outputs)
    assert ef_losses[-1] > 10 * losses[-1]  # far from the fit the empirical-Fisher step crawls
    with pytest.raises(ValueError, match="unknown curvature 'bfgs'"):
        preconditioned_descent(model, (x, y), "bfgs", steps=1, outputs_fn=regression_outputs)


def test_structure_costs_on_a_tiny_gpt2():
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16), 257, seed=0)
    batch = {"input_ids": torch.randint(0, 257, (6, 16), generator=torch.Generator().manual_seed(5))}
    rows = structure_costs(model, [batch], damping=1e-3, block_size=32, max_bytes=50 * 2**20)
    by = {r["structure"]: r for r in rows}
    assert set(by) == {"diagonal", "block", "woodbury", "kfac", "dense"}
    assert "refused" in by["dense"] and "dense Fisher needs about" in by["dense"]["refused"]
    exact = by["woodbury"]["result"]
    for name in ("diagonal", "block", "kfac"):
        assert by[name]["result"].shape == exact.shape and torch.isfinite(by[name]["result"]).all()
        assert by[name]["build_s"] > 0 and by[name]["memory_mb"] > 0
    # K-FAC covers the Conv1D layers; the tied embedding and the layer norms fall back to the diagonal
    K = KFACFisher.from_model(model, [batch], damping=1e-3)
    assert set(K.layers) == {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}
    assert float(K.diagonal[: 257 * 16].abs().sum()) > 0


def test_nonfinite_activations_are_refused_and_the_model_is_untouched():
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16), 257, seed=0)
    batch = {"input_ids": torch.randint(0, 257, (2, 8), generator=torch.Generator().manual_seed(6))}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        per_sample_gradients(model, batch)
    with pytest.raises(FloatingPointError, match="non-finite"):
        per_sample_gradients(model, batch, method="loop")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[0] = before["transformer.h.0.mlp.c_fc.bias"][0]
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None
