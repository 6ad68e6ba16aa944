"""The damped empirical Fisher F̂_λ = λI + (1/m) Σ g_i g_iᵀ in four structures, plus K-FAC.

Every structure answers the same questions about the same matrix (``docs/method.md`` §2):
``matvec`` (F̂_λ v), ``inverse_product`` (F̂_λ⁻¹ v), ``power_product`` (F̂_λ^p v, for Fisher
Forgetting's p = −1/2, −1/4) where the structure allows it, and ``dense()`` for checking.

- :class:`DiagonalFisher`: only the diagonal, λ + mean g². O(d).
- :class:`BlockFisher`: exact on diagonal blocks of size B, inverted by the Sherman–Morrison
  (WoodFisher) recursion. O(d·B) memory, O(m·d·B) time.
- :class:`WoodburyFisher`: exact, through one m×m Cholesky of λmI + GGᵀ. O(m·d).
- :class:`DenseFisher`: the d×d matrix itself, for tiny models and tests.
- :class:`KFACFisher`: Kronecker factors per ``Linear``/``Conv1D`` layer (S ⊗ A, damped exactly
  through the factors' eigenbases), diagonal for every other parameter.

Each structure estimates its memory before allocating and raises :class:`MemoryBudgetError` when
it would not fit. Notebook 02, "Inverse-Fisher products"; used by Fisher Removal and Forgetting.
"""
from __future__ import annotations

import torch

from .memory import STRUCTURES, check_memory, estimate_memory


def check_damping(damping: float) -> float:
    damping = float(damping)
    if not damping > 0 or damping != damping or damping == float("inf"):
        raise ValueError(f"damping must be a positive finite number, got {damping}")
    return damping


def check_gradients(G: torch.Tensor) -> torch.Tensor:
    if G.dim() != 2:
        raise ValueError(f"expected a gradient matrix of shape (m, d), got shape {tuple(G.shape)}")
    if G.shape[0] == 0:
        raise ValueError("the gradient set is empty (m = 0): the empirical Fisher needs at least one gradient")
    if not bool(torch.isfinite(G.sum(dim=1)).all()):
        raise ValueError("the gradient matrix holds NaN or inf")
    return G


class Fisher:
    """Base class: a damped PSD matrix λI + F̂ of size ``dim`` acting on vectors of shape (..., dim)."""

    structure = "base"
    damping: float
    dim: int
    m: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse_product(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def power_product(self, v: torch.Tensor, p: float) -> torch.Tensor:
        """F̂_λ^p v. Structures without an eigenbasis raise ``NotImplementedError``."""
        if p == -1:
            return self.inverse_product(v)
        if p == 1:
            return self.matvec(v)
        raise NotImplementedError(f"the {self.structure} Fisher has no power products; use diagonal, woodbury, dense or kfac")

    def dense(self) -> torch.Tensor:
        """The d×d matrix (tiny problems only): columns F̂_λ e_j."""
        check_memory(f"dense {self.structure} Fisher", 2 * self.dim * self.dim * 8)
        eye = torch.eye(self.dim, dtype=self._dtype, device=self._device)
        return self.matvec(eye).T.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, m={self.m}, damping={self.damping:g})"


class DiagonalFisher(Fisher):
    """λ + (1/m) Σ g_i², elementwise."""

    structure = "diagonal"

    def __init__(self, G: torch.Tensor, damping: float, max_bytes: int | None = None):
        G = check_gradients(G)
        self.damping, self.m, self.dim = check_damping(damping), G.shape[0], G.shape[1]
        check_memory("diagonal Fisher", estimate_memory("diagonal", self.dim, self.m, element_size=G.element_size()), max_bytes, G.device)
        self.diagonal = G.pow(2).mean(0) + self.damping
        self._dtype, self._device = G.dtype, G.device

    def matvec(self, v):
        return v * self.diagonal

    def inverse_product(self, v):
        return v / self.diagonal

    def power_product(self, v, p):
        return v * self.diagonal.pow(p)


class WoodburyFisher(Fisher):
    """Exact low-rank plus damping: F̂_λ⁻¹ v = (v − Gᵀ(λmI + GGᵀ)⁻¹ G v) / λ, one m×m Cholesky.
    Powers use the eigendecomposition GGᵀ = U diag(s) Uᵀ: F̂_λ^p v = λ^p v + Gᵀ U diag(((λ + s/m)^p − λ^p)/s) Uᵀ G v."""

    structure = "woodbury"

    def __init__(self, G: torch.Tensor, damping: float, max_bytes: int | None = None):
        G = check_gradients(G)
        self.damping, self.m, self.dim = check_damping(damping), G.shape[0], G.shape[1]
        check_memory("Woodbury Fisher", estimate_memory("woodbury", self.dim, self.m, element_size=G.element_size()), max_bytes, G.device)
        self.G = G
        self.gram = G @ G.T
        inner = self.gram + self.damping * self.m * torch.eye(self.m, dtype=G.dtype, device=G.device)
        self.cholesky = torch.linalg.cholesky(inner)
        self._eig = None
        self._dtype, self._device = G.dtype, G.device

    def matvec(self, v):
        return self.damping * v + ((v @ self.G.T) @ self.G) / self.m

    def inverse_product(self, v):
        Gv = (v @ self.G.T).unsqueeze(-1)
        x = torch.cholesky_solve(Gv, self.cholesky).squeeze(-1)
        return (v - x @ self.G) / self.damping

    def eigenvalues(self) -> torch.Tensor:
        """Non-zero eigenvalues of F̂ (undamped), descending: those of GGᵀ/m."""
        s, _ = self._eigh()
        return s.flip(0) / self.m

    def _eigh(self):
        if self._eig is None:
            s, U = torch.linalg.eigh(self.gram)
            keep = s > s.max().clamp(min=0) * self.m * torch.finfo(s.dtype).eps
            self._eig = (s[keep], U[:, keep])
        return self._eig

    def power_product(self, v, p):
        s, U = self._eigh()
        lam = self.damping
        coef = ((lam + s / self.m) ** p - lam**p) / s
        c = ((v @ self.G.T) @ U) * coef
        return lam**p * v + (c @ U.T) @ self.G


class DenseFisher(Fisher):
    """The d×d matrix λI + GᵀG/m itself (tiny models and tests)."""

    structure = "dense"

    def __init__(self, G: torch.Tensor, damping: float, max_bytes: int | None = None):
        G = check_gradients(G)
        self.damping, self.m, self.dim = check_damping(damping), G.shape[0], G.shape[1]
        check_memory("dense Fisher", estimate_memory("dense", self.dim, self.m, element_size=G.element_size()), max_bytes, G.device)
        self.matrix = G.T @ G / self.m + self.damping * torch.eye(self.dim, dtype=G.dtype, device=G.device)
        self.cholesky = torch.linalg.cholesky(self.matrix)
        self._eig = None
        self._dtype, self._device = G.dtype, G.device

    def matvec(self, v):
        return v @ self.matrix

    def inverse_product(self, v):
        return torch.cholesky_solve(v.unsqueeze(-1), self.cholesky).squeeze(-1) if v.dim() == 1 else torch.cholesky_solve(v.T, self.cholesky).T

    def power_product(self, v, p):
        if self._eig is None:
            self._eig = torch.linalg.eigh(self.matrix)
        w, Q = self._eig
        return ((v @ Q) * w.pow(p)) @ Q.T

    def dense(self):
        return self.matrix.clone()


class BlockFisher(Fisher):
    """Exact empirical Fisher on consecutive diagonal blocks of ``block_size`` coordinates, each block
    inverted by the Sherman–Morrison recursion (WoodFisher):
    F_0⁻¹ = I/λ,  F_i⁻¹ = F_{i−1}⁻¹ − (F_{i−1}⁻¹ g_i)(F_{i−1}⁻¹ g_i)ᵀ / (m + g_iᵀ F_{i−1}⁻¹ g_i).
    All blocks advance together. ``chunk`` gradients are folded in per pass with the same
    recursion in its rank-``chunk`` (Woodbury) form, F⁻¹ − U (mI + G_c U)⁻¹ Uᵀ with U = F⁻¹G_cᵀ:
    ``chunk=1`` is the textbook one-at-a-time recursion; larger chunks give the same matrix with
    fewer passes over the d·B numbers (``bench/fisher_products.py``)."""

    structure = "block"

    def __init__(self, G: torch.Tensor, damping: float, block_size: int = 128, max_bytes: int | None = None, chunk: int = 16):
        G = check_gradients(G)
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.damping, self.m, self.dim = check_damping(damping), G.shape[0], G.shape[1]
        self.block_size = B = min(int(block_size), self.dim)
        check_memory("block Fisher", estimate_memory("block", self.dim, self.m, B, G.element_size()), max_bytes, G.device)
        self.n_blocks = -(-self.dim // B)
        self._pad = self.n_blocks * B - self.dim
        inv = torch.eye(B, dtype=G.dtype, device=G.device).repeat(self.n_blocks, 1, 1) / self.damping
        for start in range(0, self.m, int(chunk)):
            Gc = self._blocks(G[start : start + int(chunk)]).transpose(0, 1)  # (n_blocks, c, B)
            U = torch.bmm(inv, Gc.transpose(1, 2))  # (n_blocks, B, c) = F⁻¹ g for each g of the chunk
            if Gc.shape[1] == 1:  # Sherman–Morrison
                denom = self.m + torch.bmm(Gc, U)  # (n_blocks, 1, 1)
                inv -= torch.bmm(U, U.transpose(1, 2)) / denom
            else:
                inner = self.m * torch.eye(Gc.shape[1], dtype=G.dtype, device=G.device) + torch.bmm(Gc, U)
                inv -= torch.bmm(U, torch.linalg.solve(inner, U.transpose(1, 2)))
        self.inverse_blocks = inv
        self.G = G  # for matvec (checks and diagnostics): block products are formed on demand
        self._dtype, self._device = G.dtype, G.device

    def _blocks(self, v: torch.Tensor) -> torch.Tensor:
        if self._pad:
            v = torch.nn.functional.pad(v, (0, self._pad))
        return v.reshape(*v.shape[:-1], self.n_blocks, self.block_size)

    def _unblocks(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-2], self.n_blocks * self.block_size)[..., : self.dim]

    def matvec(self, v):
        Gb = self._blocks(self.G)  # (m, n_blocks, B)
        vb = self._blocks(v)  # (..., n_blocks, B)
        proj = torch.einsum("mnb,...nb->...mn", Gb, vb)
        out = torch.einsum("...mn,mnb->...nb", proj, Gb) / self.m + self.damping * vb
        return self._unblocks(out)

    def inverse_product(self, v):
        vb = self._blocks(v)
        out = torch.einsum("nij,...nj->...ni", self.inverse_blocks, vb)
        return self._unblocks(out)


def make_fisher(G: torch.Tensor, damping: float, structure: str = "woodbury", block_size: int = 128, max_bytes: int | None = None, chunk: int = 16) -> Fisher:
    """The damped empirical Fisher of the gradient rows ``G`` (m × d) in the given structure
    (``diagonal`` | ``block`` | ``woodbury`` | ``dense``; K-FAC needs the model: :meth:`KFACFisher.from_model`)."""
    if structure == "diagonal":
        return DiagonalFisher(G, damping, max_bytes)
    if structure == "block":
        return BlockFisher(G, damping, block_size, max_bytes, chunk)
    if structure == "woodbury":
        return WoodburyFisher(G, damping, max_bytes)
    if structure == "dense":
        return DenseFisher(G, damping, max_bytes)
    if structure == "kfac":
        raise ValueError("the kfac structure is built from a model and batches: use KFACFisher.from_model")
    raise ValueError(f"unknown Fisher structure {structure!r}; expected one of {', '.join(STRUCTURES)}")
