"""Ground-truth curvature on small models: exact Hessian, Gauss–Newton (GGN), true Fisher and
empirical Fisher, as dense d×d matrices over a small parameter subset (float64 recommended).

For the per-example cross-entropy losses of :mod:`tutorial_lib.curvature.per_sample` and the objective
L(θ) = (1/m) Σ_i ℓ_i(θ):

- Hessian H = ∇²L.
- For float targets (``regression_outputs``) the row loss is ½‖f − y‖² and the GGN uses the
  identity as output Hessian.
- GGN  = (1/m) Σ_i Σ_rows w_r J_rᵀ (diag p_r − p_r p_rᵀ) J_r, with J_r the Jacobian of row r's logits
  and w_r = 1/(rows of example i). For softmax cross-entropy this is also the exact true Fisher.
- true Fisher (Monte Carlo): (1/m) Σ_i g̃_i g̃_iᵀ with g̃_i the gradient of ℓ_i at labels sampled
  from the model. Its expectation is the GGN rescaled per example (see notebook 02).
- empirical Fisher: (1/m) Σ_i g_i g_iᵀ at the observed labels.

Notebook 02 compares their spectra and Newton directions.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch.func import functional_call, hessian, jvp, vmap

from .outputs import Outputs, lm_outputs, sample_losses
from .per_sample import ParameterSpace, per_sample_gradients, select_parameters


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
