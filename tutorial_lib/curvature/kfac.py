"""K-FAC for the empirical Fisher (Martens & Grosse 2015; ``docs/method.md`` §2): Kronecker factors
S ⊗ A per ``Linear``/``Conv1D`` layer, accumulated batch by batch from the layers' inputs and output
gradients, with exact damping (S ⊗ A + λI)^p through the factors' eigenbases and the damped diagonal
empirical Fisher for every other parameter (:class:`KFACFisher`, the default structure of Fisher
Removal and Fisher Forgetting). :func:`structure_costs` builds every structure from the same examples
and reports each one's build time, the time of one inverse product and its memory estimate.

Notebook 02, "Storing and inverting F̂_λ" and "What each structure costs"; notebooks 04 and 05 through
the unlearning methods.
"""
from __future__ import annotations

import time

import torch

from .fisher import Fisher, check_damping, make_fisher
from .memory import MemoryBudgetError, check_memory, estimate_memory
from .outputs import lm_outputs
from .per_sample import (
    ParameterSpace,
    capture,
    check_finite,
    gradient_matrix,
    layer_per_sample,
    module_kind,
    owning_modules,
    select_parameters,
)


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
        self.space, self.layers, self.damping, self.m = space, layers, check_damping(damping), m
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
        """Accumulate the factors over ``batches`` (each as for :func:`~tutorial_lib.curvature.per_sample.per_sample_gradients`)."""

        outputs_fn = outputs_fn or lm_outputs
        damping = check_damping(damping)
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
            captured = capture(model, batch, [mod for _, mod, _ in owners], outputs_fn)
            records, gouts, losses = captured.records, captured.output_grads, captured.losses
            check_finite([losses, *(r.inputs for r in records if r.inputs.is_floating_point()), *(g for g in gouts if g is not None)])
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
                        v = layer_per_sample(kind, rec, gout, ln, B, dtype)
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
