"""kfac_dense_check: K-FAC's products against the dense Kronecker-factored matrix, and its distance to
the exact empirical Fisher, in float64 on tiny models."""
import pytest
import torch
from torch import nn

from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.curvature.ground_truth import kfac_dense_check
from tutorial_lib.curvature.kfac import KFACFisher
from tutorial_lib.curvature.outputs import classifier_outputs


def _classification(n, d_in, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_one_linear_layer_against_factors_built_by_hand():
    """For z = Wx + b with cross-entropy, s = softmax(z) − e_y and ã = (x, 1): S = mean s sᵀ, A = mean ã ãᵀ,
    the per-example gradient is s ⊗ ã in row-major (out × in+1) order, and the flat vector is (W, b)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = _classification(7, 3, 2)
    lam = 0.05
    result = kfac_dense_check(model, [(x, y)], damping=lam, powers=(-1.0, -0.5, -0.25), outputs_fn=classifier_outputs)

    with torch.no_grad():
        s = torch.softmax(model(x), -1) - nn.functional.one_hot(y, 2).double()
    a = torch.cat([x, torch.ones(7, 1, dtype=torch.float64)], 1)
    S, A = s.T @ s / 7, a.T @ a / 7
    order = torch.tensor([o * 3 + j if j < 3 else 6 + o for o in range(2) for j in range(4)])  # (out, in+1) -> (W, b)
    place = torch.zeros(8, 8, dtype=torch.float64)
    place[order, torch.arange(8)] = 1.0
    K = place @ torch.kron(S, A) @ place.T
    G = torch.stack([place @ torch.kron(s[i], a[i]) for i in range(7)])
    F = G.T @ G / 7
    g = G.mean(0)
    eye = torch.eye(8, dtype=torch.float64)
    direction_k, direction_f = torch.linalg.solve(K + lam * eye, g), torch.linalg.solve(F + lam * eye, g)

    assert result.dim == result.covered == 8 and result.m == 7
    assert result.layers == ({"layer": "", "d_in": 3, "d_out": 2, "bias": True, "parameters": 8, "dense_block": 64, "kfac": 20},)
    assert max(result.errors.values()) < 1e-10 and set(result.errors) == {"matvec", "p=-1", "p=-0.5", "p=-0.25"}
    assert result.fisher_distance == pytest.approx(_rel(K, F), rel=1e-9)
    assert result.within_blocks == pytest.approx(result.fisher_distance, rel=1e-9) and result.dropped_share == 0
    cos = float(direction_k @ direction_f / (direction_k.norm() * direction_f.norm()))
    assert result.direction_cosine == pytest.approx(cos, rel=1e-9)
    assert result.mean_eigenvalue == pytest.approx(float(F.trace()) / 8, rel=1e-12)
    assert result.to_dict()["errors"] == result.errors and "K-FAC vs the exact empirical Fisher" in result.summary()


def test_one_example_kfac_is_exact_within_each_layer_and_drops_the_rest():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    result = kfac_dense_check(model, [_classification(1, 3, 2, seed=1)], damping=0.1, outputs_fn=classifier_outputs)
    assert [row["layer"] for row in result.layers] == ["0", "2"] and result.covered == result.dim == 26
    assert max(result.errors.values()) < 1e-10
    assert result.within_blocks < 1e-10 and result.dropped_share > 0.1
    assert result.fisher_distance == pytest.approx(result.dropped_share, rel=1e-9)


def test_gpt2_conv1d_layers_with_padding_and_the_diagonal_fallback():
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=16), 257, seed=0, dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 257, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    result = kfac_dense_check(model, [{"input_ids": ids, "attention_mask": mask}], ["transformer.h.0.attn", "transformer.ln_f"], damping=1e-3)
    assert [row["layer"] for row in result.layers] == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"]
    assert result.covered == 17 * 48 + 17 * 16 and result.dim == result.covered + 32
    assert max(result.errors.values()) < 1e-8
    # many tokens, few sequences: K-FAC is an approximation of F̂, not F̂ itself
    assert 0.01 < result.fisher_distance and 0 < result.dropped_share < 1 and -1 <= result.direction_cosine <= 1


@pytest.mark.parametrize("wrong", ["swapped", "scaled"])
def test_a_wrong_factor_is_detected(monkeypatch, wrong):
    """The check can fail: kron(A, S) (the column-major convention) or a slightly wrong A no longer
    matches the products the library computes."""
    factors = KFACFisher.kronecker_factors

    def broken(self, layer_name):
        S, A = factors(self, layer_name)
        return (A, S) if wrong == "swapped" else (S, 1.01 * A)

    monkeypatch.setattr(KFACFisher, "kronecker_factors", broken)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    result = kfac_dense_check(model, [_classification(9, 3, 4, seed=3)], damping=1e-3, outputs_fn=classifier_outputs)
    assert min(result.errors.values()) > 1e-4
