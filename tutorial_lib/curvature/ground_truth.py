"""Ground-truth curvature on small models: exact Hessian, Gauss–Newton (GGN), true Fisher and
empirical Fisher, as dense d×d matrices over a small parameter subset (float64 recommended).

For the per-example cross-entropy losses of :mod:`tutorial_lib.curvature.per_sample` and the objective
L(θ) = (1/m) Σ_i ℓ_i(θ):

- Hessian H = ∇²L.
- For float targets (``regression_outputs``) the row loss is ½‖f − y‖² and the GGN uses the
  identity as output Hessian.
- GGN  = (1/m) Σ_i Σ_rows w_r J_rᵀ (diag p_r − p_r p_rᵀ) J_r, with J_r the Jacobian of row r's logits
  and w_r = 1/T_i for the T_i rows (predictions) of example i, since ℓ_i is their mean.
- true Fisher (Monte Carlo): (1/m) Σ_i g̃_i g̃_iᵀ with g̃_i the gradient of ℓ_i at labels sampled
  from the model. For softmax cross-entropy its expectation is (1/m) Σ_i GGN_i / T_i: the Fisher equals
  the GGN of the *summed* negative log-likelihood of an example, and the mean ℓ_i = sum / T_i scales
  the GGN by 1/T_i but the outer product g̃ g̃ᵀ by 1/T_i². With one prediction per example
  (a classifier) the two are equal.
- empirical Fisher: (1/m) Σ_i g_i g_iᵀ at the observed labels.
- K-FAC against all this: :func:`kfac_dense_check` forms the library's Kronecker-factored matrix
  densely and compares its products and its distance to the empirical Fisher.

Notebook 02 compares their spectra and Newton directions ("Four curvature matrices", "A tiny GPT-2")
and checks K-FAC ("K-FAC: the curvature Fisher Removal uses by default").
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass

import torch
from torch.func import functional_call, hessian, jvp, vmap

from .kfac import KFACFisher
from .memory import check_memory
from .outputs import Outputs, lm_outputs, sample_losses
from .per_sample import ParameterSpace, gradient_matrix, per_sample_gradients, select_parameters


def _forward_mode():
    """torch registers its forward-mode decompositions with ``torch.jit.script`` on first use, which
    warns about deprecation; silence only that."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
    return ctx


def _space(model, params) -> ParameterSpace:
    return params if isinstance(params, ParameterSpace) else select_parameters(model, params)


def _function(model, space: ParameterSpace, fn):
    """θ (flat, the subset) ↦ fn(model with θ)."""

    class _Call(torch.nn.Module):
        def __init__(self, theta):
            super().__init__()
            self.theta = theta

        def forward(self, *args, **kwargs):
            return functional_call(model, space.unflatten(self.theta), args, kwargs)

    return lambda theta: fn(_Call(theta))


def loss_function(model, batch, params=None, outputs_fn=lm_outputs):
    """(f, θ*): f(θ) = (1/m) Σ_i ℓ_i(θ) on ``batch`` as a function of the flat subset θ, and its current value."""
    space = _space(model, params)
    return _function(model, space, lambda mod: sample_losses(outputs_fn(mod, batch)).mean()), space.get(model)


def exact_hessian(model, batch, params=None, outputs_fn=lm_outputs) -> torch.Tensor:
    """∇²L over the subset, by forward-over-reverse differentiation (d×d)."""

    f, theta = loss_function(model, batch, params, outputs_fn)
    ctx = _forward_mode()
    try:
        return hessian(f)(theta).detach()
    finally:
        ctx.__exit__(None, None, None)


def loss_gradient(model, batch, params=None, outputs_fn=lm_outputs) -> torch.Tensor:
    """∇L over the subset (flat)."""
    f, theta = loss_function(model, batch, params, outputs_fn)
    theta = theta.requires_grad_(True)
    return torch.autograd.grad(f(theta), theta)[0].detach()


def gauss_newton(model, batch, params=None, outputs_fn=lm_outputs, chunk_size: int = 64) -> torch.Tensor:
    """The generalised Gauss–Newton matrix of L over the subset (d×d), from the logits' Jacobian
    computed by forward mode in chunks of ``chunk_size`` directions."""

    space = _space(model, params)
    theta = space.get(model)
    with torch.no_grad():
        out: Outputs = outputs_fn(model, batch)
    counts = torch.zeros(out.n_samples, dtype=theta.dtype).index_add(0, out.sample, out.weight.to(theta.dtype))
    w = out.weight.to(theta.dtype) / counts.clamp(min=1)[out.sample] / out.n_samples  # row weights
    squared = out.targets.is_floating_point()  # squared loss: the output Hessian is I
    p = None if squared else torch.softmax(out.logits.to(theta.dtype), dim=-1)
    logits_of = _function(model, space, lambda mod: outputs_fn(mod, batch).logits)

    def column(e):
        return jvp(logits_of, (theta,), (e,))[1]  # J e, shape (N, C)

    eye = torch.eye(space.dim, dtype=theta.dtype)
    ctx = _forward_mode()
    try:
        J = vmap(column, chunk_size=chunk_size)(eye)  # (d, N, C)
    finally:
        ctx.__exit__(None, None, None)
    if J.dim() == 2:
        J = J.unsqueeze(-1)
    wJ = J * w[None, :, None]
    if squared:
        ggn = torch.einsum("dnc,enc->de", wJ, J)
    else:
        pJ = (J * p[None]).sum(-1)  # (d, N)
        ggn = torch.einsum("dnc,enc->de", wJ * p[None], J) - torch.einsum("dn,en->de", pJ * w[None], pJ)
    return ((ggn + ggn.T) / 2).detach()


def sample_model_labels(model, batch, outputs_fn=lm_outputs, seed: int = 0):
    """A copy of an LM ``batch`` whose ``labels`` are drawn from the model's own next-token
    distribution (teacher forcing on the real inputs); for ``(x, y)`` batches, y is redrawn."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = outputs_fn(model, batch)
        draws = torch.multinomial(torch.softmax(out.logits.double(), -1).cpu(), 1, generator=gen).squeeze(-1)
    if isinstance(batch, dict):
        ids = batch["input_ids"]
        labels = ids.clone()
        labels[:, 1:] = draws.reshape(ids.shape[0], ids.shape[1] - 1).to(ids.device)
        labels[:, 0] = -100
        return {**batch, "labels": labels}
    x, _ = batch
    return x, draws.to(x.device)


def true_fisher(model, batch, params=None, outputs_fn=lm_outputs, n_draws: int = 1, seed: int = 0) -> torch.Tensor:
    """Monte Carlo true Fisher: (1/(m·n_draws)) Σ g̃ g̃ᵀ with labels sampled from the model."""
    space = _space(model, params)
    rows = [per_sample_gradients(model, sample_model_labels(model, batch, outputs_fn, seed + k), space, "hooks", outputs_fn) for k in range(n_draws)]
    G = torch.cat(rows)
    return G.T @ G / len(G)


def empirical_fisher(model, batch, params=None, outputs_fn=lm_outputs, method: str = "hooks") -> torch.Tensor:
    """(1/m) Σ g_i g_iᵀ at the observed labels (d×d)."""
    G = per_sample_gradients(model, batch, _space(model, params), method, outputs_fn)
    return G.T @ G / len(G)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos∠(a, b)."""
    return float((a @ b) / (a.norm() * b.norm()))


def spectrum(M: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric matrix, descending."""
    return torch.linalg.eigvalsh((M + M.T) / 2).flip(0)


def curvature_matrices(model, batch, params=None, outputs_fn=lm_outputs, n_draws: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Notebook 02's four d×d matrices over the subset, keyed by their legend: ``"Hessian"``,
    ``"GGN"``, ``"true Fisher (MC, <n_draws> draws)"`` and ``"empirical Fisher"``."""
    return {"Hessian": exact_hessian(model, batch, params, outputs_fn), "GGN": gauss_newton(model, batch, params, outputs_fn),
            f"true Fisher (MC, {n_draws} draws)": true_fisher(model, batch, params, outputs_fn, n_draws=n_draws, seed=seed),
            "empirical Fisher": empirical_fisher(model, batch, params, outputs_fn)}


def damped_direction(M: torch.Tensor, g: torch.Tensor, rel_damping: float) -> torch.Tensor:
    """(M + λ·tr(M)/d·I)⁻¹ g: the damped direction with damping ``rel_damping`` relative to M's mean
    eigenvalue, so that matrices of different scales are damped alike."""
    if not rel_damping >= 0:
        raise ValueError(f"rel_damping must be >= 0, got {rel_damping}")
    d = M.shape[0]
    return torch.linalg.solve(M + rel_damping * float(M.trace()) / d * torch.eye(d, dtype=M.dtype), g)


def newton_fisher_cosine(model, batch, theta: torch.Tensor | None = None, params=None, outputs_fn=lm_outputs) -> float:
    """cos∠(H⁻¹∇L, F̂⁻¹∇L): the Newton direction against the (undamped) empirical-Fisher direction,
    at the model's parameters or, with ``theta`` (flat, the subset), at θ on a copy of the model.
    Notebook 02's Kunstner example."""

    if theta is not None:
        model = copy.deepcopy(model)
        space = _space(model, params)
        targets = space.parameters(model)
        with torch.no_grad():
            for p, value in zip(targets, space.unflatten(torch.as_tensor(theta, dtype=targets[0].dtype)).values()):
                p.copy_(value)
        params = space
    grad = loss_gradient(model, batch, params, outputs_fn)
    newton = torch.linalg.solve(exact_hessian(model, batch, params, outputs_fn), grad)
    return cosine(newton, torch.linalg.solve(empirical_fisher(model, batch, params, outputs_fn), grad))


CURVATURES = ("gradient", "hessian", "ggn", "empirical_fisher")


def curvature_matrix(kind: str, model, batch, params=None, outputs_fn=lm_outputs) -> torch.Tensor:
    """The d×d ``hessian`` | ``ggn`` | ``empirical_fisher`` of L over the subset (identity for ``gradient``)."""
    if kind == "hessian":
        return exact_hessian(model, batch, params, outputs_fn)
    if kind == "ggn":
        return gauss_newton(model, batch, params, outputs_fn)
    if kind == "empirical_fisher":
        return empirical_fisher(model, batch, params, outputs_fn)
    if kind == "gradient":
        d = _space(model, params).dim
        return torch.eye(d, dtype=next(model.parameters()).dtype)
    raise ValueError(f"unknown curvature {kind!r}; expected one of {', '.join(CURVATURES)}")


def preconditioned_descent(model, batch, curvature: str, steps: int, lr: float = 1.0, damping: float = 1e-8,
                           params=None, outputs_fn=lm_outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run θ ← θ − lr · (M(θ) + damping·I)⁻¹ ∇L(θ) on a copy of ``model`` with M the chosen curvature,
    re-computed at every step. Returns (trajectory (steps+1, d), losses (steps+1,)). Small d only."""

    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; expected one of {', '.join(CURVATURES)}")
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    work = copy.deepcopy(model)
    space = _space(work, params)
    path, losses = [space.get(work)], []
    for _ in range(steps + 1):
        f, theta = loss_function(work, batch, space, outputs_fn)
        losses.append(float(f(theta)))
        if len(losses) > steps:
            break
        g = loss_gradient(work, batch, space, outputs_fn)
        M = curvature_matrix(curvature, work, batch, space, outputs_fn)
        step = torch.linalg.solve(M + damping * torch.eye(space.dim, dtype=M.dtype), g)
        space.add_(work, -lr * step)
        path.append(space.get(work))
    return torch.stack(path), torch.tensor(losses)


@dataclass(frozen=True)
class KFACCheckResult:
    """What :func:`kfac_dense_check` measured. ``errors`` maps ``"matvec"`` and ``"p=<p>"`` to the relative
    error of the library's product against the dense matrix; ``layers`` holds one row per K-FAC layer
    (``layer``, ``d_in``, ``d_out``, ``bias``, ``parameters``, ``dense_block`` and ``kfac``: the numbers a
    dense block and the two factors hold). The distances compare the undamped K-FAC matrix K with the
    exact empirical Fisher F̂ of the same examples: ``fisher_distance`` = ‖K − F̂‖_F / ‖F̂‖_F,
    ``within_blocks`` the same inside K-FAC's pattern (its layer blocks and the diagonal of the other
    coordinates), ``dropped_share`` = ‖F̂ outside the pattern‖_F / ‖F̂‖_F, and ``direction_cosine`` =
    cos∠((K + λI)⁻¹ ḡ, (F̂ + λI)⁻¹ ḡ) for ḡ the mean gradient."""

    dim: int
    covered: int
    m: int
    damping: float
    mean_eigenvalue: float
    layers: tuple
    errors: dict
    fisher_distance: float
    within_blocks: float
    dropped_share: float
    direction_cosine: float

    def summary(self) -> str:
        lines = [f"d = {self.dim} ({self.covered} in {len(self.layers)} K-FAC layers, {self.dim - self.covered} on the damped diagonal), "
                 f"m = {self.m} examples, damping {self.damping:g} (mean eigenvalue of F: {self.mean_eigenvalue:.1e})",
                 "library product vs the dense matrix, relative error: " + ", ".join(f"{k} {v:.1e}" for k, v in self.errors.items())]
        for row in self.layers:
            lines.append(f"  {row['layer']:30s} {row['d_out']:3d} x {row['d_in']:3d}{' + bias' if row['bias'] else ''}: "
                         f"{row['parameters']:7,} weights, dense block {row['dense_block']:12,} numbers, K-FAC factors {row['kfac']:7,}")
        lines.append(f"K-FAC vs the exact empirical Fisher: relative distance {self.fisher_distance:.2f} (inside K-FAC's blocks "
                     f"{self.within_blocks:.2f}; share of F outside them {self.dropped_share:.2f}); "
                     f"cos(K-FAC direction, exact direction) {self.direction_cosine:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def kfac_dense_check(model, batches, params=None, damping: float = 1e-3, powers=(-1.0, -0.5, -0.25), seed: int = 0,
                     outputs_fn=lm_outputs, n_vectors: int = 4) -> KFACCheckResult:
    """Check :class:`~tutorial_lib.curvature.kfac.KFACFisher` against the matrix it stands for, formed
    densely (tiny models only, float64): for each K-FAC layer, kron(S, A) of the library's own factors
    over the row-major (out × in[+1]) weight-and-bias gradient, placed at that layer's coordinates;
    the mean squared per-sample gradient on the diagonal of every other coordinate; plus λI. The
    library's ``matvec``, ``inverse_product`` (p = −1) and ``power_product`` for the other ``powers``
    are compared on ``n_vectors`` random vectors (drawn from ``seed``) with the dense products
    (``torch.linalg.solve``; eigh-based powers), and K is compared with the exact empirical Fisher
    of the same examples. Notebook 02, "K-FAC: the curvature Fisher Removal uses by default"."""

    batches = list(batches)
    space = _space(model, params)
    p0 = space.parameters(model)[0]
    check_memory("dense K-FAC check", 8 * space.dim * space.dim * p0.element_size(), None, p0.device)
    K = KFACFisher.from_model(model, batches, space, damping, outputs_fn)
    G, _ = gradient_matrix(model, batches, space, outputs_fn=outputs_fn)
    F = G.T @ G / len(G)
    index = space.unflatten(torch.arange(space.dim, device=G.device))
    kfac = torch.zeros_like(F)
    pattern = torch.zeros(F.shape, dtype=torch.bool, device=G.device)
    covered = torch.zeros(space.dim, dtype=torch.bool, device=G.device)
    rows = []
    for name in K.layers:
        prefix = f"{name}." if name else ""  # "" when the model is the layer itself
        W = index[prefix + "weight"]
        W = W if K.layers[name]["kind"] == "linear" else W.T  # GPT-2's Conv1D stores (in, out)
        bias = K.layers[name]["bias"]
        if bias:
            W = torch.cat([W, index[prefix + "bias"][:, None]], dim=1)
        at = W.reshape(-1)  # the flat coordinates of the row-major (out × in[+1]) gradient
        S, A = K.kronecker_factors(name)
        kfac[at[:, None], at[None, :]] = torch.kron(S, A)
        pattern[at[:, None], at[None, :]] = True
        covered[at] = True
        rows.append(dict(layer=name, d_in=W.shape[1] - bias, d_out=W.shape[0], bias=bias, parameters=W.numel(),
                         dense_block=W.numel() ** 2, kfac=S.numel() + A.numel()))
    rest = (~covered).nonzero().squeeze(1)
    kfac[rest, rest] = F.diagonal()[rest]
    pattern[rest, rest] = True
    eye = torch.eye(space.dim, dtype=F.dtype, device=F.device)
    dense = kfac + damping * eye
    V = torch.randn(n_vectors, space.dim, generator=torch.Generator().manual_seed(seed), dtype=F.dtype).to(F.device)
    relative = lambda a, b: float((a - b).norm() / b.norm())
    errors = {"matvec": relative(K.matvec(V), V @ dense)}
    w, Q = torch.linalg.eigh(dense) if any(p != -1 for p in powers) else (None, None)
    for p in powers:
        if p == -1:
            errors["p=-1"] = relative(K.inverse_product(V), torch.linalg.solve(dense, V.T).T)
        else:
            errors[f"p={p:g}"] = relative(K.power_product(V, p), ((V @ Q) * w.pow(p)) @ Q.T)
    g = G.mean(0)
    return KFACCheckResult(
        dim=space.dim, covered=int(covered.sum()), m=len(G), damping=float(damping), mean_eigenvalue=float(F.trace()) / space.dim,
        layers=tuple(rows), errors=errors, fisher_distance=relative(kfac, F),
        within_blocks=float(((kfac - F) * pattern).norm() / (F * pattern).norm()), dropped_share=float((F * ~pattern).norm() / F.norm()),
        direction_cosine=cosine(K.inverse_product(g), torch.linalg.solve(F + damping * eye, g)))
