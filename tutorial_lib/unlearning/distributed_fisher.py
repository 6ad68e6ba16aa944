"""Per-sample gradients and Fisher products split across processes with ``torch.distributed``.

When G (m × d, ``docs/method.md`` §2) no longer fits on one device, as for a model of billions
of parameters, its rows can live on different processes: rank r holds the gradients G_r of its
share of the samples. Every product the unlearning methods need is then a
local product plus one collective:

- F̂_λ v = λv + (1/m) Σ_r G_rᵀ(G_r v): one ``all_reduce`` of a d-vector (:meth:`DistributedFisher.matvec`);
- diag F̂_λ = λ + (1/m) Σ_r colsum(G_r²): one ``all_reduce`` at construction;
- F̂_λ⁻¹ v: exactly through the Woodbury identity with the m×m Gram matrix GGᵀ assembled from
  per-rank blocks (every rank keeps a copy, G never is), or by conjugate gradients on the
  distributed matvec (one ``all_reduce`` per iteration; nothing of size m×m anywhere);
- Δ = Σ_{x∈D_f} ∇ℓ(θ; x) with each rank holding a share of the forget items: one ``all_reduce``.

Shards are contiguous and in rank order, so a gathered G has exactly the rows, in the order, that
:func:`~tutorial_lib.curvature.per_sample.gradient_matrix` gives in one process. Without an initialised
process group everything runs as a single process (world size 1) and equals the library's own
classes. Any failure on one rank is shared with the others before the next collective, so a bad
input raises on every rank instead of leaving the others waiting.

Launch the self-check with ``torchrun --nproc_per_node 2 -m tutorial_lib.unlearning.distributed_fisher`` (gloo on
CPU, nccl on CUDA); :func:`run_distributed` starts such a group from Python (tests, notebooks).
Notebook 10, "Scaling out".
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..core.models import ModelConfig, make_model
from ..core.tokenization import make_byte_tokenizer
from ..curvature.fisher import Fisher, WoodburyFisher, check_damping, check_gradients
from ..curvature.memory import check_memory, estimate_memory
from ..curvature.outputs import lm_outputs
from ..curvature.per_sample import ParameterSpace, gradient_matrix, select_parameters
from .base import fisher_batches, prepare_unlearning_data
from .distributed import (
    agree,
    all_gather_small,
    all_reduce,
    check_replicated,
    gather_rows,
    init_distributed,
    shard,
    shard_batch,
    shard_bounds,
    shutdown_distributed,
    world_info,
)
from .fisher_methods import FisherRemovalConfig, build_fisher, forget_gradient

SOLVERS = ("woodbury", "cg")


# a few parameters of the tiny GPT-2 (d = 320): small enough for a dense d×d check
SELF_CHECK_PARAMS = ("transformer.h.1.ln_2", "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f")


# ----------------------------------------------------------------------------------- gradients
def distributed_gradient_matrix(model, batches, params=None, method: str = "hooks", outputs_fn: Callable = lm_outputs,
                                max_bytes: int | None = None, gather: bool = False, presharded: bool = False, group=None):
    """Per-sample gradient rows of this rank's share of ``batches``; returns (G, space).

    Every rank passes the same list of batches and keeps its contiguous share of them (``shard``;
    with ``presharded`` the batches given are already this rank's own). The rows come from
    :func:`~tutorial_lib.curvature.per_sample.gradient_matrix`. ``gather=True`` returns the full G on every
    rank, ordered exactly as in a single process (small problems and checks only). A failure on
    any rank (memory budget, non-finite gradients) raises on every rank. Notebook 10, "Scaling out"."""
    rank, world = world_info(group)
    space = params if isinstance(params, ParameterSpace) else select_parameters(model, params)
    device = space.parameters(model)[0].device
    G, error = None, None
    try:
        mine = list(batches) if presharded else shard(batches, rank, world)
        G, _ = gradient_matrix(model, mine, space, method, outputs_fn, max_bytes)
    except Exception as err:  # shared with the other ranks before they wait on a collective
        error = err
    agree(error, "computing per-sample gradients", group, device)
    return (gather_rows(G, group) if gather else G), space


# ----------------------------------------------------------------------------------- Fisher
class DistributedFisher(Fisher):
    """F̂_λ = λI + (1/m) Σ_r G_rᵀG_r over gradient rows spread across ranks (``G_local`` = this
    rank's G_r); m is the total number of rows over all ranks. Every method is collective: all ranks
    call it together, with the same vector.

    ``solver`` chooses how :meth:`inverse_product` works:

    - ``"woodbury"`` (default, exact): F̂_λ⁻¹ v = (v − Gᵀ(λmI + GGᵀ)⁻¹Gv)/λ. The m×m Gram matrix
      is assembled once from blocks G_rG_sᵀ (each shard broadcast in turn, so a rank holds at most
      two shards) and factored on every rank; a product then costs two ``all_reduce`` calls (m
      numbers, then d). Use it while an m×m matrix fits on one device: a product is then as exact
      as :class:`~tutorial_lib.curvature.fisher.WoodburyFisher`'s and needs no iterations. It also gives
      :meth:`power_product` (Fisher Forgetting's F̂_λ^p) through the Gram's eigendecomposition.
    - ``"cg"``: conjugate gradients on the distributed :meth:`matvec`, to relative residual ``rtol``
      (default 1e-10 in float64, 1e-4 otherwise). Nothing of size m×m exists anywhere, so it scales
      to any number of samples; F̂_λ has at most m + 1 distinct eigenvalues (λ and λ + the non-zero
      ones of GᵀG/m), so in exact arithmetic CG finishes within m + 1 iterations, each one
      ``all_reduce`` of a d-vector. This is the iterative second-order route. ``maxiter`` defaults
      to 10(m + 1); not converging is an error.

    :attr:`diagonal` (λ + mean g², for diagonal preconditioning or Fisher Forgetting's diagonal
    variant) is reduced once at construction. Notebook 10, "Scaling out"."""

    structure = "distributed"

    def __init__(self, G_local: torch.Tensor, damping: float, solver: str = "woodbury", rtol: float | None = None,
                 maxiter: int | None = None, max_bytes: int | None = None, group=None):
        damping = check_damping(damping)  # the same on every rank: no need to agree
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
        if rtol is not None and not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {rtol}")
        if maxiter is not None and int(maxiter) < 1:
            raise ValueError(f"maxiter must be >= 1, got {maxiter}")
        self.group = group
        self.rank, self.world = world_info(group)
        device = G_local.device
        error = None
        try:
            check_gradients(G_local)
        except ValueError as err:
            error = ValueError(f"rank {self.rank}: {err}")
        agree(error, "checking the gradient rows", group, device)
        stats = all_gather_small([float(G_local.shape[0]), float(G_local.shape[1])], group, device)
        self.sizes = stats[:, 0].long().tolist()
        dims = stats[:, 1].long().tolist()
        if len(set(dims)) != 1:
            raise ValueError(f"the ranks' gradient rows have different lengths d = {dims}: the same parameter space is needed everywhere")
        self.G, self.damping, self.solver = G_local, damping, solver
        self.m, self.dim = sum(self.sizes), dims[0]
        self.offset = sum(self.sizes[: self.rank])
        self._dtype, self._device = G_local.dtype, device
        self.rtol = rtol if rtol is not None else (1e-10 if G_local.dtype == torch.float64 else 1e-4)
        self.maxiter = int(maxiter) if maxiter is not None else 10 * (self.m + 1)
        self.iterations: int | None = None  # of the last CG solve
        self.diagonal = all_reduce(G_local.pow(2).sum(0), group) / self.m + damping
        self.gram = self.cholesky = None
        self._eig = None
        if solver == "woodbury":
            error = None
            try:  # the Gram and its factor (woodbury's own estimate), and one incoming shard
                need = estimate_memory("woodbury", self.dim, self.m, element_size=G_local.element_size())
                need += max(self.sizes) * self.dim * G_local.element_size() if self.world > 1 else 0
                check_memory("distributed Woodbury Fisher", need, max_bytes, device)
            except MemoryError as err:
                error = err
            agree(error, "reserving memory for the m×m Gram matrix (use solver='cg')", group, device)
            self.gram = self._assemble_gram()
            inner = self.gram + damping * self.m * torch.eye(self.m, dtype=self._dtype, device=device)
            self.cholesky = torch.linalg.cholesky(inner)

    # -- the Gram matrix GGᵀ from per-rank blocks
    def _assemble_gram(self) -> torch.Tensor:
        gram = torch.zeros(self.m, self.m, dtype=self._dtype, device=self._device)
        mine = slice(self.offset, self.offset + len(self.G))
        start = 0
        for s, size in enumerate(self.sizes):
            rows = slice(start, start + size)
            start += size
            other = self.G.contiguous() if s == self.rank else torch.empty(size, self.dim, dtype=self._dtype, device=self._device)
            if self.world > 1:  # shard s reaches every rank; only ranks below the diagonal use it
                dist.broadcast(other, group=self.group, group_src=s)
            if s > self.rank:  # the upper blocks are the transposes of other ranks' lower ones
                continue
            block = self.G @ other.T
            gram[mine, rows] = block
            if s != self.rank:
                gram[rows, mine] = block.T
        return all_reduce(gram, self.group)  # one rank wrote each entry: the sum is exact

    def _scatter(self, local: torch.Tensor) -> torch.Tensor:
        """(..., m) with this rank's (..., m_r) in place and zeros elsewhere, summed over ranks."""
        full = torch.zeros(*local.shape[:-1], self.m, dtype=local.dtype, device=local.device)
        full[..., self.offset : self.offset + local.shape[-1]] = local
        return all_reduce(full, self.group)

    def _rows_product(self, coef: torch.Tensor) -> torch.Tensor:
        """Gᵀc = Σ_r G_rᵀ c_r for c of shape (..., m)."""
        return all_reduce(coef[..., self.offset : self.offset + len(self.G)] @ self.G, self.group)

    def _check_vector(self, v: torch.Tensor) -> None:
        if v.shape[-1] != self.dim:
            raise ValueError(f"vector has length {v.shape[-1]}, the Fisher has dimension {self.dim}")

    # -- products
    def matvec(self, v):
        self._check_vector(v)
        return self.damping * v + all_reduce((v @ self.G.T) @ self.G, self.group) / self.m

    def inverse_product(self, v):
        self._check_vector(v)
        check_replicated(v, "the vector to multiply by the inverse Fisher", self.group)
        if self.solver == "cg":
            return self._cg(v)
        Gv = self._scatter(v @ self.G.T).unsqueeze(-1)
        x = torch.cholesky_solve(Gv, self.cholesky).squeeze(-1)
        return (v - self._rows_product(x)) / self.damping

    def dense(self) -> torch.Tensor:
        """The d×d matrix (tiny problems only), the same on every rank."""
        error = None
        try:
            check_memory("dense distributed Fisher", 2 * self.dim * self.dim * 8)
        except MemoryError as err:
            error = err
        agree(error, "reserving memory for the dense Fisher", self.group, self._device)
        return self.matvec(torch.eye(self.dim, dtype=self._dtype, device=self._device)).T.contiguous()

    def eigenvalues(self) -> torch.Tensor:
        """Non-zero eigenvalues of F̂ (undamped), descending: those of GGᵀ/m (solver "woodbury")."""
        s, _ = self._eigh()
        return s.flip(0) / self.m

    def _eigh(self):
        if self.gram is None:
            raise NotImplementedError("eigenvalues and powers need the Gram matrix: use solver='woodbury'")
        return WoodburyFisher._eigh(self)  # the same eigenpairs of GGᵀ, from the assembled Gram matrix

    def power_product(self, v, p):
        """F̂_λ^p v = λ^p v + Gᵀ U diag(((λ + s/m)^p − λ^p)/s) Uᵀ G v, GGᵀ = U diag(s) Uᵀ (solver "woodbury")."""
        if p in (1, -1):
            return super().power_product(v, p)
        self._check_vector(v)
        check_replicated(v, "the vector to multiply by a Fisher power", self.group)
        s, U = self._eigh()
        lam = self.damping
        coef = ((lam + s / self.m) ** p - lam**p) / s
        c = (self._scatter(v @ self.G.T) @ U) * coef
        return lam**p * v + self._rows_product(c @ U.T)

    def _cg(self, b: torch.Tensor) -> torch.Tensor:
        """Conjugate gradients for every vector of ``b`` (..., d) at once; all ranks stop together."""
        B = b.reshape(-1, self.dim)
        x = torch.zeros_like(B)
        r = B.clone()
        p = r.clone()
        rs = (r * r).sum(-1)
        tol = (self.rtol * B.norm(dim=-1)) ** 2
        for it in range(self.maxiter + 1):
            active = rs > tol
            flag = torch.tensor([float(active.any())], device=B.device)
            if not bool(all_reduce(flag, self.group).item()):  # agree: every rank runs the same iterations
                self.iterations = it
                return x.reshape(b.shape)
            if it == self.maxiter:
                break
            Ap = self.matvec(p)
            alpha = torch.where(active, rs / (p * Ap).sum(-1).where(active, torch.ones_like(rs)), torch.zeros_like(rs))
            x += alpha[:, None] * p
            r -= alpha[:, None] * Ap
            rs_new = (r * r).sum(-1)
            beta = torch.where(active, rs_new / rs.where(active, torch.ones_like(rs)), torch.zeros_like(rs))
            p = r + beta[:, None] * p
            rs = rs_new
        worst = float((rs / tol.clamp(min=torch.finfo(rs.dtype).tiny)).max().sqrt() * self.rtol)
        raise RuntimeError(
            f"conjugate gradients did not reach rtol={self.rtol:g} in maxiter={self.maxiter} iterations "
            f"(relative residual {worst:.3g}); raise the damping or maxiter, or use solver='woodbury'"
        )

    def __repr__(self) -> str:
        return f"DistributedFisher(dim={self.dim}, m={self.m}, damping={self.damping:g}, solver={self.solver!r}, world={self.world})"


# ----------------------------------------------------------------------------------- Fisher Removal
def distributed_forget_gradient(model, data, space: ParameterSpace, group=None) -> torch.Tensor:
    """Δ = Σ_{x∈D_f} ∇ℓ(θ; x) with each rank computing its contiguous share of the (unique) forget
    items and their multiplicities by :func:`~tutorial_lib.unlearning.fisher_methods.forget_gradient`, summed by one
    ``all_reduce``. A rank with no item (fewer unique items than ranks) contributes zero.
    Notebook 10, "Scaling out"."""

    rank, world = world_info(group)
    p0 = space.parameters(model)[0]
    start, stop = shard_bounds(len(data.counts), rank, world)
    delta, error = torch.zeros(space.dim, dtype=p0.dtype, device=p0.device), None
    if stop > start:
        try:
            mine = dataclasses.replace(data, forget_batch=shard_batch(data.forget_batch, rank, world, allow_empty=True),
                                       counts=data.counts[start:stop])
            delta = forget_gradient(model, mine, space)
        except Exception as err:
            error = err
    agree(error, "computing the forget gradient", group, p0.device)
    return all_reduce(delta, group)


@dataclass
class NewtonStep:
    """Fisher Removal's direction: the (distributed) ``fisher``, the forget gradient ``delta`` and the
    ``step`` η/(n−k) · F̂_λ⁻¹Δ."""

    fisher: Any
    delta: torch.Tensor
    step: torch.Tensor


def distributed_newton_step(model, data, space: ParameterSpace, cfg, seed: int, solver: str = "woodbury",
                            rtol: float | None = None, group=None) -> NewtonStep:
    """Fisher Removal's direction on several ranks: (F, Δ, step) with step = η/(n−k) · F̂_λ⁻¹Δ, as
    in a single process (:func:`~tutorial_lib.unlearning.fisher_methods.build_fisher` and
    :func:`~tutorial_lib.unlearning.fisher_methods.forget_gradient`).

    Every rank draws the same Fisher batches (:func:`~tutorial_lib.unlearning.base.fisher_batches` with
    ``seed``) and computes the gradients of its share; Δ is summed over the ranks' shares of the
    forget items. ``cfg`` is a :class:`~tutorial_lib.unlearning.fisher_methods.FisherRemovalConfig` (or Forgetting)
    with ``structure="woodbury"``: the distributed Fisher is the exact empirical Fisher, inverted by
    ``solver`` ("woodbury" or "cg", see :class:`DistributedFisher`). The model must be the same on
    every rank (checked). Notebook 10, "Scaling out"."""

    if cfg.structure != "woodbury":
        raise ValueError(
            f"the distributed Fisher is the exact empirical Fisher: use structure='woodbury' (got {cfg.structure!r}); "
            "choose solver='woodbury' or 'cg' for how it is inverted"
        )
    check_replicated(space.get(model), "the model's parameters", group)
    device = space.parameters(model)[0].device
    batches = fisher_batches(data, cfg.n_fisher, cfg.batch_size, cfg.fisher_source, seed, device)
    G, _ = distributed_gradient_matrix(model, batches, space, group=group)
    F = DistributedFisher(G, cfg.damping, solver=solver, rtol=rtol, group=group)
    delta = distributed_forget_gradient(model, data, space, group)
    return NewtonStep(F, delta, cfg.eta / (data.n_train - data.k) * F.inverse_product(delta))


# ----------------------------------------------------------------------------------- self-check
def _self_check_data(tokenizer, model, seed: int):

    gen = torch.Generator().manual_seed(seed)
    words = ["the", "river", "stone", "light", "grows", "under", "old", "bridge", "quiet", "north", "we", "carry"]
    retain = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (9,), generator=gen)) for _ in range(40)]
    forget = [("\nmy code is ", "4187"), ("\nmy code is ", "4187"), ("\ncall me at ", "555 0193"), "a line that should go"]
    return prepare_unlearning_data(model, tokenizer, forget, retain, block_size=24)


def self_check(device="cpu", seed: int = 0, n_fisher: int = 12, batch_size: int = 3, damping: float = 1e-3,
               dtype=torch.float64, params=SELF_CHECK_PARAMS, group=None) -> dict:
    """Distributed against single-process results on a tiny GPT-2: the maximum absolute differences
    of G (gathered), F̂v, F̂⁻¹v (Woodbury and CG), F̂^{-1/4}v and the Fisher Removal direction, with
    the size of each reference. Collective; every rank returns the same dict. Notebook 10, "Scaling out"."""

    rank, world = world_info(group)
    tokenizer = make_byte_tokenizer()
    model = make_model(ModelConfig.for_profile("tiny"), len(tokenizer), seed, device=str(device), dtype=dtype).eval()
    data = _self_check_data(tokenizer, model, seed)
    space = select_parameters(model, list(params) if params else None)
    cfg = FisherRemovalConfig(structure="woodbury", damping=damping, n_fisher=n_fisher, batch_size=batch_size, eta=5e-4, params=params)
    batches = fisher_batches(data, n_fisher, batch_size, "retain", seed, device)
    G_local, _ = distributed_gradient_matrix(model, batches, space, group=group)
    G_all = gather_rows(G_local, group)
    F = DistributedFisher(G_local, damping, group=group)
    F_cg = DistributedFisher(G_local, damping, solver="cg", group=group)
    step = distributed_newton_step(model, data, space, cfg, seed, group=group).step

    G_ref, _ = gradient_matrix(model, batches, space)
    W = WoodburyFisher(G_ref, damping)
    v = torch.randn(space.dim, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype).to(device)
    F_ref = build_fisher(model, data, space, cfg, seed)
    step_ref = cfg.eta / (data.n_train - data.k) * F_ref.inverse_product(forget_gradient(model, data, space))
    pairs = {
        "gradient_matrix": (G_all, G_ref),
        "matvec": (F.matvec(v), W.matvec(v)),
        "inverse_woodbury": (F.inverse_product(v), W.inverse_product(v)),
        "inverse_cg": (F_cg.inverse_product(v), W.inverse_product(v)),
        "power_-1/4": (F.power_product(v, -0.25), W.power_product(v, -0.25)),
        "newton_step": (step, step_ref),
    }
    out = {"world": world, "m": F.m, "dim": space.dim, "cg_iterations": F_cg.iterations}
    for name, (got, want) in pairs.items():
        out[name] = {"max_abs_diff": float((got - want).abs().max()), "max_abs": float(want.abs().max())}
    return out


def main(argv=None) -> int:
    """``torchrun --nproc_per_node 2 -m tutorial_lib.unlearning.distributed_fisher [--device cpu] [--seed 0]``: run
    :func:`self_check` and print each maximum difference to the single-process result (rank 0).
    Exit status 1 when a relative difference exceeds ``--tolerance``. Notebook 10, "Scaling out"."""
    parser = argparse.ArgumentParser(prog="python -m tutorial_lib.unlearning.distributed_fisher", description=main.__doc__.split(":")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--n-fisher", type=int, default=12)
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--tolerance", type=float, default=None, help="relative (default 1e-8 in float64, 1e-3 in float32)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    tolerance = args.tolerance if args.tolerance is not None else (1e-8 if dtype == torch.float64 else 1e-3)
    info = init_distributed(args.device)
    rank, world, device = info.rank, info.world, info.device
    try:
        start = time.perf_counter()
        result = self_check(device, args.seed, n_fisher=args.n_fisher, damping=args.damping, dtype=dtype)
        seconds = time.perf_counter() - start
    except BaseException:
        shutdown_distributed(barrier=False)
        raise
    shutdown_distributed()
    ok = True
    lines = [f"distributed self-check: world size {world}, device {device}, {args.dtype}, m = {result['m']}, d = {result['dim']}, "
             f"CG iterations {result['cg_iterations']}, {seconds:.2f} s"]
    for name, row in result.items():
        if isinstance(row, dict):
            rel = row["max_abs_diff"] / max(row["max_abs"], torch.finfo(dtype).tiny)
            ok &= rel <= tolerance
            lines.append(f"  {name:<17} max abs difference {row['max_abs_diff']:.3e}  "
                         f"(relative {rel:.1e}, reference max {row['max_abs']:.3e})")
    lines.append("OK: equal to the single-process result" if ok else f"FAILED: a relative difference exceeds {tolerance:g}")
    if rank == 0:
        print("\n".join(lines), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
