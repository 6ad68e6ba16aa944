"""The damped empirical Fisher F̂_λ = λI + (1/m) Σ g_i g_iᵀ in four structures, plus K-FAC.

Every structure answers the same questions about the same matrix (``../shared/PAPER.md`` §2):
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

import os

import torch

STRUCTURES = ("diagonal", "block", "woodbury", "dense", "kfac")


class MemoryBudgetError(MemoryError):
    """A curvature structure would need more memory than is available."""


def available_memory(device="cpu") -> int:
    """Bytes free on ``device``: ``MemAvailable`` on a CPU (Linux), free memory on a CUDA GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(what: str, need_bytes: int, max_bytes: int | None = None, device="cpu") -> None:
    """Raise :class:`MemoryBudgetError` when ``need_bytes`` exceeds ``max_bytes`` (default: 80 % of
    what is available on ``device``)."""
    limit = int(0.8 * available_memory(device)) if max_bytes is None else int(max_bytes)
    if need_bytes > limit:
        raise MemoryBudgetError(
            f"{what} needs about {need_bytes / 2**30:.3g} GiB but only {limit / 2**30:.3g} GiB may be used; "
            "choose a cheaper structure, fewer parameters or fewer samples"
        )


def estimate_memory(structure: str, dim: int, m: int, block_size: int = 128, element_size: int = 4, layers=()) -> int:
    """Bytes a structure allocates beyond the gradient matrix G (m × d) it is built from.
    ``layers`` lists (out, in) shapes for ``kfac``."""
    if structure == "diagonal":
        return dim * element_size
    if structure == "block":
        n_blocks = -(-dim // block_size)
        return (n_blocks * block_size * block_size + 2 * n_blocks * block_size) * element_size
    if structure == "woodbury":
        return (2 * m * m + 2 * m) * element_size
    if structure == "dense":
        return 3 * dim * dim * element_size
    if structure == "kfac":
        return sum(2 * (o * o + (i + 1) ** 2) for o, i in layers) * element_size + dim * element_size
    raise ValueError(f"unknown Fisher structure {structure!r}; expected one of {', '.join(STRUCTURES)}")


def _check_damping(damping: float) -> float:
    damping = float(damping)
    if not damping > 0 or damping != damping or damping == float("inf"):
        raise ValueError(f"damping must be a positive finite number, got {damping}")
    return damping


def _check_gradients(G: torch.Tensor) -> torch.Tensor:
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
        G = _check_gradients(G)
        self.damping, self.m, self.dim = _check_damping(damping), G.shape[0], G.shape[1]
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
        G = _check_gradients(G)
        self.damping, self.m, self.dim = _check_damping(damping), G.shape[0], G.shape[1]
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
        G = _check_gradients(G)
        self.damping, self.m, self.dim = _check_damping(damping), G.shape[0], G.shape[1]
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
        G = _check_gradients(G)
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.damping, self.m, self.dim = _check_damping(damping), G.shape[0], G.shape[1]
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


class KFACFisher(Fisher):
    """K-FAC for the empirical Fisher (Martens & Grosse 2015, with the "expand" convention for
    sequences): for a ``Linear``/``Conv1D`` layer with inputs a (augmented by 1 for the bias) and
    output gradients s of the per-example losses,

        A = (1/N) Σ_tokens ã ãᵀ,   S = (1/m) Σ_examples Σ_tokens s sᵀ,   F_layer ≈ S ⊗ A,

    over the row-major vector of the (out × in+1) weight-and-bias gradient; with one token per
    example and m = 1 it is exactly g gᵀ. Damping is exact: (S ⊗ A + λI)^p through the
    eigenbases of S and A. Parameters outside such layers, or shared between modules (GPT-2's tied
    embedding), get the damped diagonal empirical Fisher."""

    structure = "kfac"

    def __init__(self, space, layers: dict, diagonal: torch.Tensor | None, damping: float, m: int, dtype, device):
        self.space, self.layers, self.damping, self.m = space, layers, _check_damping(damping), m
        self.dim = space.dim
        self.diagonal = diagonal  # over the coordinates not covered by a layer (flat, zeros elsewhere)
        self._dtype, self._device = dtype, device
        self._covered = torch.zeros(self.dim, dtype=torch.bool, device=device)
        offsets = space.offsets
        for layer in layers.values():
            for name in layer["params"].values():
                a, b = offsets[name]
                self._covered[a:b] = True

    @classmethod
    def from_model(cls, model, batches, params=None, damping: float = 1e-3, outputs_fn=None, max_bytes: int | None = None) -> "KFACFisher":
        """Accumulate the factors over ``batches`` (each as for :func:`~tutorial_lib.per_sample.per_sample_gradients`)."""
        from .per_sample import ParameterSpace, _check_finite, _per_sample, capture, lm_outputs, module_kind, owning_modules, select_parameters

        outputs_fn = outputs_fn or lm_outputs
        damping = _check_damping(damping)
        batches = list(batches)
        if not batches:
            raise ValueError("no batches: the gradient set would be empty")
        space = params if isinstance(params, ParameterSpace) else select_parameters(model, params)
        owners = owning_modules(model, space)
        uses = {}
        for _, mod, own in owners:
            for name in own.values():
                uses[name] = uses.get(name, 0) + 1
        kfac_mods, diag_mods = {}, []
        for mod_name, mod, own in owners:
            kind = module_kind(mod)
            shared = any(uses[n] > 1 for n in own.values())
            if kind in ("linear", "conv1d") and "weight" in own and not shared:
                kfac_mods[id(mod)] = (mod_name, mod, kind, own)
            elif kind == "other":
                raise NotImplementedError(f"K-FAC does not support {type(mod).__name__} ({mod_name}); choose another parameter subset")
            else:
                diag_mods.append((mod, own))
        p0 = space.parameters(model)[0]
        dtype, device = p0.dtype, p0.device
        shapes = []
        for _, mod, kind, own in kfac_mods.values():
            w = mod.weight
            out_f, in_f = (w.shape[0], w.shape[1]) if kind == "linear" else (w.shape[1], w.shape[0])
            shapes.append((out_f, in_f))
        check_memory("K-FAC Fisher", estimate_memory("kfac", space.dim, 0, element_size=p0.element_size(), layers=shapes), max_bytes, device)

        layers = {}
        for (mod_name, mod, kind, own), (out_f, in_f) in zip(kfac_mods.values(), shapes):
            layers[mod_name] = dict(
                kind=kind, params=own, out=out_f, inp=in_f, bias="bias" in own,
                A=torch.zeros(in_f + 1, in_f + 1, dtype=dtype, device=device),
                S=torch.zeros(out_f, out_f, dtype=dtype, device=device), tokens=0,
            )
        by_module = {id(mod): layers[name] for name, mod, _, _ in kfac_mods.values()}
        diag_local = {id(mod): own for mod, own in diag_mods}
        diag_sq = {name: torch.zeros(space.shapes[space.names.index(name)], dtype=dtype, device=device)
                   for _, own in diag_mods for name in own.values()}
        m = 0
        for batch in batches:
            records, gouts, losses = capture(model, batch, [mod for _, mod, _ in owners], outputs_fn)
            _check_finite([losses, *(r.inputs for r in records if r.inputs.is_floating_point()), *(g for g in gouts if g is not None)])
            B = len(losses)
            m += B
            tied: dict[str, torch.Tensor] = {}
            for rec, gout in zip(records, gouts):
                if gout is None:
                    continue
                layer = by_module.get(id(rec.module))
                if layer is not None:
                    a = rec.inputs.reshape(-1, rec.inputs.shape[-1])
                    s = gout.reshape(-1, gout.shape[-1])
                    keep = _token_mask(batch, rec.inputs, B)
                    if keep is not None:
                        a, s = a[keep], s[keep]
                    a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
                    layer["A"] += a.T @ a
                    layer["S"] += s.T @ s
                    layer["tokens"] += len(a)
                else:
                    kind = module_kind(rec.module)
                    for ln, name in diag_local[id(rec.module)].items():
                        v = _per_sample(kind, rec, gout, ln, B, dtype)
                        tied[name] = tied[name] + v if name in tied else v
            for name, v in tied.items():
                diag_sq[name] += v.pow(2).sum(0)
        if m == 0:
            raise ValueError("the batches hold no examples: the gradient set is empty")
        for layer in layers.values():
            A = layer.pop("A") / max(layer["tokens"], 1)
            S = layer.pop("S") / m
            if not layer["bias"]:
                A = A[:-1, :-1]
            layer["eig_A"] = torch.linalg.eigh(A)
            layer["eig_S"] = torch.linalg.eigh(S)
        diagonal = torch.zeros(space.dim, dtype=dtype, device=device)
        offsets = space.offsets
        for name, sq in diag_sq.items():
            a, b = offsets[name]
            diagonal[a:b] = sq.reshape(-1) / m
        return cls(space, layers, diagonal, damping, m, dtype, device)

    # -- vector <-> layer matrices
    def _layer_matrix(self, parts: dict, layer: dict) -> torch.Tensor:
        W = parts[layer["params"]["weight"]]
        if layer["kind"] == "conv1d":
            W = W.transpose(-1, -2)
        if layer["bias"]:
            W = torch.cat([W, parts[layer["params"]["bias"]].unsqueeze(-1)], dim=-1)
        return W  # (..., out, in[+1])

    def _apply(self, v: torch.Tensor, fn_eig) -> torch.Tensor:
        """Apply f(S ⊗ A + λI) blockwise, f given on eigenvalues; the diagonal part gets f(d + λ)."""
        parts = self.space.unflatten(v)
        out = {}
        for layer in self.layers.values():
            wA, QA = layer["eig_A"]
            wS, QS = layer["eig_S"]
            V = self._layer_matrix(parts, layer)
            X = QS.T @ V @ QA
            X = X * fn_eig(wS.clamp(min=0)[:, None] * wA.clamp(min=0)[None, :] + self.damping)
            Y = QS @ X @ QA.T
            if layer["bias"]:
                out[layer["params"]["bias"]] = Y[..., -1]
                Y = Y[..., :-1]
            out[layer["params"]["weight"]] = Y.transpose(-1, -2) if layer["kind"] == "conv1d" else Y
        flat = torch.cat([(out[n] if n in out else torch.zeros_like(parts[n])).reshape(*v.shape[:-1], -1) for n in self.space.names], dim=-1)
        rest = ~self._covered
        return torch.where(rest, v * fn_eig(self.diagonal + self.damping), flat)

    def matvec(self, v):
        return self._apply(v, lambda w: w)

    def inverse_product(self, v):
        return self._apply(v, lambda w: 1.0 / w)

    def power_product(self, v, p):
        return self._apply(v, lambda w: w.pow(p))

    def kronecker_factors(self, layer_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, A) of one layer, rebuilt from their eigendecompositions."""
        layer = self.layers[layer_name]
        (wA, QA), (wS, QS) = layer["eig_A"], layer["eig_S"]
        return (QS * wS) @ QS.T, (QA * wA) @ QA.T


def _token_mask(batch, inputs: torch.Tensor, B: int):
    """Flat boolean mask of the non-padding tokens of ``inputs`` (B, T, ·), or None when there is none."""
    if isinstance(batch, dict) and "attention_mask" in batch and inputs.dim() == 3 and inputs.shape[:2] == batch["attention_mask"].shape:
        return batch["attention_mask"].reshape(-1).bool()
    return None


def structure_costs(model, batches, v: torch.Tensor | None = None, params=None, damping: float = 1e-3,
                    structures=("diagonal", "block", "woodbury", "kfac", "dense"), block_size: int = 128,
                    outputs_fn=None, max_bytes: int | None = None) -> list[dict]:
    """Build each structure from the same examples and apply its inverse once: rows of
    ``structure``, ``build_s`` (per-sample gradients included, except for K-FAC which needs none),
    ``product_s``, ``memory_mb`` (the estimate), ``result`` (F̂_λ⁻¹ v) or ``refused`` (the memory error).
    ``v`` defaults to the mean gradient of the examples. Notebook 02, "What each structure costs"."""
    import time

    from .per_sample import ParameterSpace, gradient_matrix, lm_outputs, select_parameters

    outputs_fn = outputs_fn or lm_outputs
    batches = list(batches)
    space = params if isinstance(params, ParameterSpace) else select_parameters(model, params)
    start = time.perf_counter()
    G, _ = gradient_matrix(model, batches, space, outputs_fn=outputs_fn, max_bytes=max_bytes)
    grad_s = time.perf_counter() - start
    v = G.mean(0) if v is None else v
    rows = []
    for structure in structures:
        row = dict(structure=structure, m=len(G), dim=space.dim)
        if structure == "kfac":
            row["memory_mb"] = None  # known once the layers are found
        else:
            row["memory_mb"] = estimate_memory(structure, space.dim, len(G), block_size, G.element_size()) / 2**20
        try:
            start = time.perf_counter()
            if structure == "kfac":
                F = KFACFisher.from_model(model, batches, space, damping, outputs_fn, max_bytes)
                row["build_s"] = time.perf_counter() - start
                row["memory_mb"] = sum(2 * (l["eig_A"][1].numel() + l["eig_S"][1].numel()) for l in F.layers.values()) * G.element_size() / 2**20
            else:
                F = make_fisher(G, damping, structure, block_size, max_bytes)
                row["build_s"] = grad_s + time.perf_counter() - start
            start = time.perf_counter()
            row["result"] = F.inverse_product(v)
            row["product_s"] = time.perf_counter() - start
        except MemoryBudgetError as err:
            row["refused"] = str(err)
        rows.append(row)
    return rows
