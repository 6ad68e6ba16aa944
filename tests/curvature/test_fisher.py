"""Inverse-Fisher products of every structure against a dense inverse, in float64."""
import pytest
import torch

from tutorial_lib.curvature.fisher import (
    BlockFisher,
    DenseFisher,
    DiagonalFisher,
    WoodburyFisher,
    make_fisher,
)
from tutorial_lib.curvature.memory import MemoryBudgetError, estimate_memory


def _problem(m, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(m, d, generator=gen, dtype=torch.float64)
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    return G, v


def _dense_inverse(G, lam, v):
    F = lam * torch.eye(G.shape[1], dtype=G.dtype) + G.T @ G / len(G)
    return torch.linalg.solve(F, v), F


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("m,d", [(5, 40), (60, 12)], ids=["m<d", "m>d"])
@pytest.mark.parametrize("lam", [1e-3, 0.5])
def test_woodbury_and_sherman_morrison_equal_dense_inverse(m, d, lam):
    G, v = _problem(m, d)
    want, _ = _dense_inverse(G, lam, v)
    assert _rel(WoodburyFisher(G, lam).inverse_product(v), want) < 1e-8
    for chunk in (1, 4, 64):  # one at a time (textbook Sherman–Morrison) and folded in chunks
        assert _rel(BlockFisher(G, lam, block_size=d, chunk=chunk).inverse_product(v), want) < 1e-8
    assert _rel(DenseFisher(G, lam).inverse_product(v), want) < 1e-8


def test_block_fisher_is_exact_on_its_blocks():
    G, v = _problem(7, 30)
    lam, B = 0.1, 8
    got = BlockFisher(G, lam, block_size=B).inverse_product(v)
    for start in range(0, 30, B):
        sl = slice(start, min(start + B, 30))
        want, _ = _dense_inverse(G[:, sl], lam, v[sl])
        assert _rel(got[sl], want) < 1e-8


def test_diagonal_fisher_inverts_the_diagonal():
    G, v = _problem(9, 20)
    want = v / (0.2 + (G**2).mean(0))
    assert _rel(DiagonalFisher(G, 0.2).inverse_product(v), want) < 1e-12


@pytest.mark.parametrize("structure", ["diagonal", "woodbury", "dense"])
@pytest.mark.parametrize("m,d", [(6, 25), (40, 10)], ids=["m<d", "m>d"])
def test_fisher_powers(structure, m, d):
    G, v = _problem(m, d, seed=1)
    F = make_fisher(G, 0.05, structure)
    half = F.power_product(F.power_product(v, -0.5), -0.5)
    assert _rel(half, F.inverse_product(v)) < 1e-8
    quarter = F.power_product(v, -0.25)
    for _ in range(3):
        quarter = F.power_product(quarter, -0.25)
    assert _rel(quarter, F.inverse_product(v)) < 1e-8
    # against the eigendecomposition of the dense matrix
    w, Q = torch.linalg.eigh(F.dense())
    assert _rel(F.power_product(v, -0.25), Q @ (w**-0.25 * (Q.T @ v))) < 1e-8


@pytest.mark.parametrize("structure", ["diagonal", "block", "woodbury", "dense"])
def test_matvec_inverts_and_batches(structure):
    G, v = _problem(8, 20, seed=2)
    F = make_fisher(G, 0.3, structure, block_size=6)
    assert _rel(F.matvec(F.inverse_product(v)), v) < 1e-10
    V = torch.stack([v, 2 * v, -v])
    assert _rel(F.inverse_product(V)[1], 2 * F.inverse_product(v)) < 1e-12


def test_empirical_fisher_is_symmetric_psd():
    G, _ = _problem(10, 15, seed=3)
    for structure in ["woodbury", "dense", "block"]:
        M = make_fisher(G, 1e-6, structure, block_size=15).dense()
        assert torch.allclose(M, M.T, atol=1e-12)
        assert float(torch.linalg.eigvalsh(M).min()) > 0
    undamped = G.T @ G / len(G)
    assert float(torch.linalg.eigvalsh(undamped).min()) > -1e-12


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("structure", ["diagonal", "block", "woodbury", "dense"])
def test_bad_damping_is_an_error(bad, structure):
    G, _ = _problem(3, 5)
    with pytest.raises(ValueError, match="damping"):
        make_fisher(G, bad, structure)


@pytest.mark.parametrize("structure", ["diagonal", "block", "woodbury", "dense"])
def test_empty_gradient_set_is_an_error(structure):
    with pytest.raises(ValueError, match="empty"):
        make_fisher(torch.zeros(0, 5, dtype=torch.float64), 0.1, structure)


def test_nonfinite_gradients_and_unknown_structure_are_errors():
    G, _ = _problem(3, 5)
    G[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make_fisher(G, 0.1, "woodbury")
    with pytest.raises(ValueError, match="unknown Fisher structure 'cholesky'"):
        make_fisher(_problem(3, 5)[0], 0.1, "cholesky")


def test_memory_estimate_refuses_what_does_not_fit():
    G, _ = _problem(4, 100)
    need = estimate_memory("dense", 100, 4, element_size=8)
    with pytest.raises(MemoryBudgetError, match="dense Fisher needs about"):
        make_fisher(G, 0.1, "dense", max_bytes=need - 1)
    make_fisher(G, 0.1, "dense", max_bytes=need)
    # a small-profile GPT-2 (0.48M parameters) cannot hold its dense Fisher
    with pytest.raises(MemoryBudgetError):
        DenseFisher(torch.zeros(2, 480_000), 0.1)
    assert estimate_memory("woodbury", 480_000, 256) < estimate_memory("block", 480_000, 256) < estimate_memory("dense", 480_000, 256)
