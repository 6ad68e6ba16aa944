"""Newton removal and influence functions on strongly convex models (L2-regularised logistic,
multinomial logistic and ridge regression), in float64 NumPy, with exact gradients and Hessians.

The objective over a set of examples ``I`` of size ``m`` is
``L_I(theta) = sum_{i in I} loss_i(theta) + (lam * m / 2) * ||theta||^2 (+ b . theta)``:
the regulariser scales with the number of examples, as in Guo et al. (2020), so that removing ``k``
points also removes ``k`` shares of it. Used by notebook 01 (Newton updates and influence functions).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from scipy import linalg, special

from ..core.data import load_corpus
from ..core.profiles import config_for_profile

KINDS = ("logistic", "multinomial", "ridge")


@dataclass(frozen=True)
class NewtonConfig:
    """Notebook 01's settings: the corpus-classification task, the L2 strength, the removal sizes."""

    corpora: tuple[str, ...] = ("shakespeare", "bible")
    n_per_class: int = 200
    n_features: int = 128
    lam: float = 1e-3
    removal_sizes: tuple[int, ...] = (1, 3, 10, 30, 100)
    n_influence: int = 60
    mlp_hidden: int = 6

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"removal_sizes": (1, 10, 50), "n_influence": 50},
        "small": {},
        "full": {"n_per_class": 1000, "n_features": 256, "removal_sizes": (1, 3, 10, 30, 100, 300), "n_influence": 200},
    }

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "NewtonConfig":
        """The profile's row of ``PROFILE_DEFAULTS``, then ``overrides``."""
        return config_for_profile(cls, profile, overrides)


@dataclass(frozen=True)
class ConvexProblem:
    """Features ``X`` (n x d), targets ``y`` and the model ``kind``; ``lam`` > 0 is the L2 strength per
    example. Binary logistic takes labels in {0, 1}; multinomial labels in 0..C-1; ridge real targets.
    ``b`` is an optional linear perturbation (certified removal). Parameters are flat vectors."""

    X: np.ndarray
    y: np.ndarray
    kind: str = "logistic"
    lam: float = 1e-2
    n_classes: int = 2
    b: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.lam <= 0:
            raise ValueError(f"the L2 strength lam must be positive for a strongly convex problem, got {self.lam}")
        if len(self.X) != len(self.y):
            raise ValueError(f"X has {len(self.X)} rows but y has {len(self.y)}")

    @property
    def n(self) -> int:
        return len(self.X)

    @property
    def dim(self) -> int:
        return self.X.shape[1] * (self.n_classes if self.kind == "multinomial" else 1)

    def _margins(self, theta, idx):
        X = self.X[idx]
        if self.kind == "multinomial":
            return X @ theta.reshape(self.X.shape[1], self.n_classes)
        return X @ theta

    def losses(self, theta: np.ndarray, idx=None) -> np.ndarray:
        """Per-example losses (no regulariser) of the examples ``idx`` (default: all)."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        z, y = self._margins(theta, idx), self.y[idx]
        if self.kind == "logistic":
            return np.logaddexp(0.0, -(2 * y - 1) * z)
        if self.kind == "multinomial":
            return special.logsumexp(z, axis=1) - z[np.arange(len(idx)), y.astype(int)]
        return 0.5 * (z - y) ** 2

    def per_example_grads(self, theta: np.ndarray, idx=None) -> np.ndarray:
        """Gradients of the per-example losses, one row per example (no regulariser)."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        X, z, y = self.X[idx], self._margins(theta, idx), self.y[idx]
        if self.kind == "logistic":
            s = 2 * y - 1
            return (-s * special.expit(-s * z))[:, None] * X
        if self.kind == "multinomial":
            r = special.softmax(z, axis=1)
            r[np.arange(len(idx)), y.astype(int)] -= 1.0
            return (X[:, :, None] * r[:, None, :]).reshape(len(idx), -1)
        return (z - y)[:, None] * X

    def objective(self, theta: np.ndarray, idx=None) -> float:
        m = self.n if idx is None else len(idx)
        extra = 0.0 if self.b is None else float(self.b @ theta)
        return float(self.losses(theta, idx).sum() + 0.5 * self.lam * m * theta @ theta + extra)

    def gradient(self, theta: np.ndarray, idx=None) -> np.ndarray:
        m = self.n if idx is None else len(idx)
        g = self.per_example_grads(theta, idx).sum(0) + self.lam * m * theta
        return g if self.b is None else g + self.b

    def hessian(self, theta: np.ndarray, idx=None) -> np.ndarray:
        """Exact Hessian of the objective over ``idx`` (dense, dim x dim)."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        X, z = self.X[idx], self._margins(theta, idx)
        if self.kind == "logistic":
            p = special.expit(z)
            H = (X * (p * (1 - p))[:, None]).T @ X
        elif self.kind == "multinomial":
            p = special.softmax(z, axis=1)
            d, C = self.X.shape[1], self.n_classes
            H = np.zeros((d, C, d, C))
            for c in range(C):
                for e in range(C):
                    w = p[:, c] * ((c == e) - p[:, e])
                    H[:, c, :, e] = (X * w[:, None]).T @ X
            H = H.reshape(d * C, d * C)
        else:
            H = X.T @ X
        return H + self.lam * len(idx) * np.eye(self.dim)

    def hvp(self, theta: np.ndarray, v: np.ndarray, idx=None) -> np.ndarray:
        """Hessian-vector product without forming the Hessian (binary logistic and ridge), else dense."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        if self.kind == "multinomial":
            return self.hessian(theta, idx) @ v
        X = self.X[idx]
        if self.kind == "logistic":
            p = special.expit(X @ theta)
            w = p * (1 - p)
        else:
            w = 1.0
        return X.T @ (w * (X @ v)) + self.lam * len(idx) * v


def fit(problem: ConvexProblem, idx=None, theta0=None, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray:
    """Minimise the objective over ``idx`` by Newton's method with backtracking, to gradient norm
    ``tol`` (relative to the first). Notebook 01, "Newton's method"."""
    theta = np.zeros(problem.dim) if theta0 is None else np.array(theta0, dtype=np.float64)
    g0 = np.linalg.norm(problem.gradient(theta, idx)) or 1.0
    for _ in range(max_iter):
        g = problem.gradient(theta, idx)
        if np.linalg.norm(g) <= tol * g0:
            return theta
        step = linalg.solve(problem.hessian(theta, idx), g, assume_a="pos")
        f, t = problem.objective(theta, idx), 1.0
        slack = 1e-12 * max(1.0, abs(f))  # near the optimum decreases fall below float resolution of f
        while problem.objective(theta - t * step, idx) > f - 0.25 * t * g @ step + slack and t > 1e-10:
            t *= 0.5
        theta = theta - t * step
    return theta


def _keep(problem: ConvexProblem, remove) -> np.ndarray:
    remove = np.asarray(remove, dtype=np.int64).reshape(-1)
    if remove.size == 0:
        raise ValueError("the set of points to remove is empty")
    if remove.min() < 0 or remove.max() >= problem.n:
        bad = remove[(remove < 0) | (remove >= problem.n)][0]
        raise IndexError(f"index {bad} to remove is outside 0..{problem.n - 1}")
    if len(np.unique(remove)) != remove.size:
        values, counts = np.unique(remove, return_counts=True)
        raise ValueError(f"index {values[counts > 1][0]} to remove is repeated")
    keep = np.setdiff1d(np.arange(problem.n), remove)
    if keep.size == 0:
        raise ValueError(f"removing all {problem.n} points leaves nothing to fit")
    return keep


def solve_damped(H: np.ndarray, v: np.ndarray, damping: float = 0.0) -> np.ndarray:
    """``(H + damping I)^{-1} v`` by Cholesky; a clear error when the matrix is not positive definite."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    try:
        factor = linalg.cho_factor(H + damping * np.eye(len(H)))
    except linalg.LinAlgError as err:
        raise np.linalg.LinAlgError(
            f"the Hessian{' plus damping ' + str(damping) if damping else ''} is not positive definite "
            "(singular or indefinite); add damping > 0"
        ) from err
    return linalg.cho_solve(factor, v)


@dataclass
class RemovalResult:
    """Newton removal of ``removed`` from ``theta_star``: the new parameters and the diagnostics."""

    theta: np.ndarray
    removed: np.ndarray
    steps: int
    residual_norm: float
    residual_bound: float | None

    def summary(self) -> str:
        bound = "" if self.residual_bound is None else f" (Guo et al. bound {self.residual_bound:.2e})"
        return f"removed {len(self.removed)} points in {self.steps} Newton step(s); gradient residual {self.residual_norm:.2e}{bound}"


def residual_bound(problem: ConvexProblem, keep: np.ndarray, step: np.ndarray, gamma: float = 0.25) -> float:
    """Guo et al. (2020, Cor. 1) data-dependent bound on the gradient residual after one Newton step
    ``step`` = H^{-1} Delta: ``gamma * ||X||_2 * ||step|| * ||X step||`` with X the remaining data,
    for binary logistic regression (loss'' is gamma-Lipschitz, gamma = 1/4) and rows ||x_i|| <= 1."""
    if problem.kind != "logistic":
        raise ValueError(f"the bound is stated for binary logistic regression, not {problem.kind!r}")
    X = problem.X[keep]
    if np.max(np.linalg.norm(X, axis=1)) > 1 + 1e-9:
        raise ValueError("the bound assumes feature rows with norm at most 1; normalise X")
    return float(gamma * np.linalg.norm(X, 2) * np.linalg.norm(step) * np.linalg.norm(X @ step))


def newton_removal(problem: ConvexProblem, theta_star: np.ndarray, remove, steps: int = 1, damping: float = 0.0) -> RemovalResult:
    """Remove the examples ``remove`` from the optimum ``theta_star`` by ``steps`` Newton steps on the
    objective over the remaining data: ``theta <- theta - (H + damping I)^{-1} grad L_{D without S}(theta)``.
    The first step is the influence-function update. Notebook 01, "Newton removal"."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    keep = _keep(problem, remove)
    theta, bound = np.array(theta_star, dtype=np.float64), None
    for i in range(steps):
        step = solve_damped(problem.hessian(theta, keep), problem.gradient(theta, keep), damping)
        if i == 0 and problem.kind == "logistic" and damping == 0 and np.max(np.linalg.norm(problem.X, axis=1)) <= 1 + 1e-9:
            bound = residual_bound(problem, keep, step)
        theta = theta - step
    residual = float(np.linalg.norm(problem.gradient(theta, keep)))
    return RemovalResult(theta, np.sort(np.asarray(remove).reshape(-1)), steps, residual, bound if steps == 1 else None)


def retrain_without(problem: ConvexProblem, remove, theta0=None) -> np.ndarray:
    """Ground truth: the optimum of the objective over the data without ``remove``."""
    return fit(problem, _keep(problem, remove), theta0=theta0)


def ihvp_exact(H: np.ndarray, v: np.ndarray, damping: float = 0.0) -> np.ndarray:
    """``(H + damping I)^{-1} v`` by a dense Cholesky solve. Notebook 01, "Influence functions"."""
    return solve_damped(H, v, damping)


def ihvp_cg(hvp, v: np.ndarray, damping: float = 0.0, rtol: float = 1e-10, maxiter: int | None = None) -> np.ndarray:
    """``(H + damping I)^{-1} v`` by conjugate gradients (SciPy) from Hessian-vector products ``hvp``."""
    from scipy.sparse.linalg import LinearOperator, cg

    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    op = LinearOperator((len(v), len(v)), matvec=lambda x: hvp(x) + damping * x, dtype=np.float64)
    x, info = cg(op, v, rtol=rtol, atol=0.0, maxiter=maxiter or 10 * len(v))
    if info != 0:
        raise RuntimeError(f"conjugate gradients did not reach rtol={rtol} in {info} iterations")
    return x


def ihvp_lissa(hvp, v: np.ndarray, damping: float, scale: float, tol: float = 1e-6, max_iter: int = 100_000, check_every: int = 10) -> np.ndarray:
    """LiSSA (Agarwal et al. 2017): the Neumann series ``x_j = v + (I - (H + damping I)/scale) x_{j-1}``,
    returned as ``x_j / scale``. It converges when ``scale`` exceeds the largest eigenvalue of
    ``H + damping I``; it stops when the relative residual ``||(H + damping I) x - v|| / ||v||`` <= ``tol``."""
    if damping <= 0:
        raise ValueError(f"LiSSA needs damping > 0, got {damping}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    x = v.copy()
    norm_v = np.linalg.norm(v)
    for j in range(1, max_iter + 1):
        x = v + x - (hvp(x) + damping * x) / scale
        if j % check_every == 0:
            est = x / scale
            if np.linalg.norm(hvp(est) + damping * est - v) <= tol * norm_v:
                return est
    raise RuntimeError(f"LiSSA did not reach tol={tol} in {max_iter} iterations; raise scale or damping")


def influence_on_params(problem: ConvexProblem, theta_star: np.ndarray, index: int, damping: float = 0.0) -> np.ndarray:
    """Predicted parameter change from removing example ``index`` (Koh & Liang 2017, with the
    regulariser's share): ``H^{-1} (grad loss_index + lam theta*)``, H the full-data Hessian."""
    g = problem.per_example_grads(theta_star, [index])[0] + problem.lam * theta_star
    return solve_damped(problem.hessian(theta_star), g, damping)


def influence_on_loss(problem: ConvexProblem, theta_star: np.ndarray, remove_indices, test_X: np.ndarray, test_y: np.ndarray, damping: float = 0.0) -> np.ndarray:
    """Predicted change of the summed test loss when each example of ``remove_indices`` is removed alone:
    ``grad L_test(theta*) . H^{-1} (grad loss_i + lam theta*)``, one solve with the test gradient."""
    test = ConvexProblem(test_X, test_y, problem.kind, problem.lam, problem.n_classes)
    g_test = test.per_example_grads(theta_star).sum(0)
    s_test = solve_damped(problem.hessian(theta_star), g_test, damping)
    remove_indices = np.asarray(remove_indices)
    G = problem.per_example_grads(theta_star, remove_indices) + problem.lam * theta_star
    return G @ s_test


def hashed_ngram_features(lines: list[str], n_features: int = 256, ngram_range=(1, 3)) -> np.ndarray:
    """Hashed character n-gram counts (crc32 into ``n_features`` buckets), L2-normalised rows."""

    X = np.zeros((len(lines), n_features))
    for row, line in enumerate(lines):
        text = line.lower()
        for n in range(ngram_range[0], ngram_range[1] + 1):
            for i in range(len(text) - n + 1):
                X[row, zlib.crc32(text[i : i + n].encode()) % n_features] += 1.0
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms == 0, 1.0, norms)


def make_corpus_classification(
    corpora=("shakespeare", "bible"), n_per_class: int = 200, n_features: int = 128, min_chars: int = 40, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Which corpus does this line come from? ``n_per_class`` random lines of at least ``min_chars``
    characters from each corpus's training split, as hashed character n-gram features (rows of norm 1)
    and labels 0..len(corpora)-1. Notebook 01, "A real task"."""

    rng = np.random.default_rng(seed)
    lines, labels = [], []
    for label, name in enumerate(corpora):
        pool = [line for line in load_corpus(name).train if len(line) >= min_chars]
        if len(pool) < n_per_class:
            raise ValueError(f"corpus {name!r} has only {len(pool)} lines of >= {min_chars} characters")
        lines += [pool[i] for i in rng.choice(len(pool), n_per_class, replace=False)]
        labels += [label] * n_per_class
    order = rng.permutation(len(lines))
    X = hashed_ngram_features([lines[i] for i in order], n_features)
    return X, np.asarray(labels, dtype=np.int64)[order]


def certified_noise_std(eps: float, delta: float, residual_budget: float) -> float:
    """Standard deviation of the Gaussian linear perturbation ``b ~ N(0, sigma^2 I)`` added to the training
    objective (``+ b . theta``) so that a removal whose gradient residual is at most ``residual_budget``
    is (eps, delta)-certified: ``sigma = c * residual_budget / eps`` with ``c = sqrt(2 log(1.5 / delta))``
    (Guo et al. 2020, Thm. 3). Notebook 01, "Certified removal"."""
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if residual_budget <= 0:
        raise ValueError(f"residual_budget must be positive, got {residual_budget}")
    return float(np.sqrt(2 * np.log(1.5 / delta)) * residual_budget / eps)


def perturb(problem: ConvexProblem, sigma: float, seed: int = 0) -> ConvexProblem:
    """The same problem with the random linear term ``b . theta``, ``b ~ N(0, sigma^2 I)`` (seeded)."""

    return replace(problem, b=np.random.default_rng(seed).normal(0.0, sigma, problem.dim))


class MLPProblem:
    """A one-hidden-layer tanh MLP for binary classification, mean logistic loss plus ``lam/2 ||theta||^2``,
    with exact float64 gradients and Hessians from ``torch.autograd``. Its Hessian is indefinite away from
    a minimum: the bridge to notebook 02. Notebook 01, "When the Hessian is indefinite"."""

    def __init__(self, X: np.ndarray, y: np.ndarray, hidden: int = 8, lam: float = 1e-3):
        self.X = torch.as_tensor(X, dtype=torch.float64)
        self.y = torch.as_tensor(y, dtype=torch.float64)
        self.hidden, self.lam = hidden, lam
        self.dim = X.shape[1] * hidden + 2 * hidden + 1

    def init(self, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).normal(0.0, 0.5, self.dim)

    def _loss(self, theta):
        d, h = self.X.shape[1], self.hidden
        W, b1 = theta[: d * h].reshape(d, h), theta[d * h : d * h + h]
        v, b2 = theta[d * h + h : d * h + 2 * h], theta[-1]
        z = torch.tanh(self.X @ W + b1) @ v + b2
        s = 2 * self.y - 1
        return torch.nn.functional.softplus(-s * z).mean() + 0.5 * self.lam * theta @ theta

    def objective(self, theta: np.ndarray) -> float:
        return float(self._loss(torch.as_tensor(theta, dtype=torch.float64)))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(theta, dtype=torch.float64).requires_grad_(True)
        return torch.autograd.grad(self._loss(t), t)[0].numpy()

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.hessian(self._loss, torch.as_tensor(theta, dtype=torch.float64)).numpy()


def newton_step(problem, theta: np.ndarray, damping: float = 0.0) -> np.ndarray:
    """One (damped) Newton step ``theta - (H + damping I)^{-1} grad``. Unlike :func:`solve_damped` this
    does not insist on a positive definite matrix, so an undamped step on an indefinite Hessian can be
    taken and seen to misbehave. Notebook 01, "When the Hessian is indefinite"."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    H = problem.hessian(theta)
    return theta - np.linalg.solve(H + damping * np.eye(len(H)), problem.gradient(theta))
