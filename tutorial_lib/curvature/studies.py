"""The measurements of notebooks 01 and 02 as functions: Newton removal against leave-k-out
retraining on a convex model, the per-sample-gradient timings, the damped-direction cosines of
each curvature against the damped Newton direction, and the structure-cost table.

Each returns a small dataclass with named fields, ``summary()`` (the lines the notebook prints) and
``to_dict()``. None of them feeds a cached study.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.models import count_parameters
from .ground_truth import cosine, damped_direction, spectrum
from .newton import ConvexProblem, newton_removal, retrain_without
from .outputs import lm_outputs, sample_losses
from .per_sample import per_sample_gradients


# ----------------------------------------------------------------------------------- notebook 01
@dataclass
class RemovalStudy:
    """Newton removal against retraining for nested removal sets (the first k of ``order``). Each row:
    ``k``, the error of one (``one``) and of three (``three``) Newton steps relative to how far
    retraining moved the parameters, the gradient ``residual`` after one step and its ``bound``
    (Guo et al.; ``None`` where it does not apply), and the one-step result's ``report`` line."""

    order: np.ndarray
    rows: list[dict] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        return [r["k"] for r in self.rows]

    def summary(self) -> str:
        return "\n".join(f"k={r['k']:>4}: relative error 1 step {r['one']:.1e}, 3 steps {r['three']:.1e}; {r['report']}" for r in self.rows)

    def to_dict(self) -> dict:
        return {"order": self.order.tolist(), "rows": [dict(r) for r in self.rows]}


def newton_removal_study(problem: ConvexProblem, theta_star: np.ndarray, sizes, seed: int = 0) -> RemovalStudy:
    """Remove the first k points of one seeded random order, for every k in ``sizes``, by one and by
    three Newton steps from ``theta_star``, and compare with retraining on the rest. Notebook 01,
    "Newton removal"."""
    sizes = list(sizes)
    if not sizes or min(sizes) < 1 or max(sizes) >= problem.n:
        raise ValueError(f"removal sizes must lie in 1..{problem.n - 1}, got {sizes}")
    order = np.random.default_rng(seed).permutation(problem.n)  # nested sets: the first k of one order
    study = RemovalStudy(order)
    for k in sizes:
        remove = order[:k]
        truth = retrain_without(problem, remove, theta0=theta_star)
        moved = np.linalg.norm(truth - theta_star)
        one, three = (newton_removal(problem, theta_star, remove, steps=s) for s in (1, 3))
        study.rows.append(dict(k=k, one=float(np.linalg.norm(one.theta - truth) / moved), three=float(np.linalg.norm(three.theta - truth) / moved),
                               residual=float(one.residual_norm), bound=one.residual_bound, report=one.summary()))
    return study


# ----------------------------------------------------------------------------------- notebook 02
@dataclass
class PerSampleTiming:
    """Best-of-``repeats`` wall times (seconds) of one batched backward pass (``baseline``) and of each
    per-sample-gradient method on the same batch."""

    n_parameters: int
    batch_shape: tuple[int, ...]
    seconds: dict[str, float]
    baseline: str = "batched backward (one gradient)"

    def ratio(self, name: str) -> float:
        """Time of ``name`` relative to the batched backward pass."""
        return self.seconds[name] / self.seconds[self.baseline]

    def summary(self) -> str:
        lines = [f"{self.n_parameters:,} parameters, batch {self.batch_shape}"]
        lines += [f"  {name:34s} {s * 1e3:7.0f} ms  {self.ratio(name):5.2f}x" for name, s in self.seconds.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"n_parameters": self.n_parameters, "batch_shape": list(self.batch_shape), "seconds": dict(self.seconds), "baseline": self.baseline}


def time_per_sample_gradients(model, batch, methods=("hooks", "vmap", "loop"), repeats: int = 3) -> PerSampleTiming:
    """Time one ordinary batched forward and backward of ``batch`` (the sum of the per-example losses)
    and :func:`~tutorial_lib.curvature.per_sample.per_sample_gradients` by each of ``methods``, each
    after one warm-up run, as the best of ``repeats``. Notebook 02, "Per-sample gradients";
    ``bench/per_sample_grads.py`` measures more carefully."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def batched_backward():
        sample_losses(lm_outputs(model, batch)).sum().backward()
        model.zero_grad(set_to_none=True)

    def elapsed(run):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    runs = [(PerSampleTiming.baseline, batched_backward)]
    runs += [(f"per-sample: {m}", lambda m=m: per_sample_gradients(model, batch, method=m)) for m in methods]
    seconds = {}
    for name, run in runs:
        run()  # warm-up
        seconds[name] = min(elapsed(run) for _ in range(repeats))
    return PerSampleTiming(count_parameters(model), tuple(batch["input_ids"].shape), seconds)


@dataclass
class DampingStudy:
    """cos∠((M + λ·tr(M)/d·I)⁻¹g, (H + λ·tr(H)/d·I)⁻¹g) for each curvature M and relative damping
    λ in ``rel_dampings`` (``cosines``: name -> one value per λ), and ``positive_from``, the relative
    damping above which the damped Hessian is positive definite."""

    rel_dampings: list[float]
    cosines: dict[str, list[float]]
    positive_from: float

    def at(self, rel_damping: float) -> dict[str, float]:
        """Every curvature's cosine at the study's damping closest to ``rel_damping``."""
        i = int(np.argmin(np.abs(np.log10(self.rel_dampings) - np.log10(rel_damping))))
        return {name: values[i] for name, values in self.cosines.items()}

    def summary(self, show=(0.1, 1.0, 10.0)) -> str:
        lines = [f"the damped Hessian is positive definite from relative damping {self.positive_from:.2f} on"]
        at = {lam: self.at(lam) for lam in show}
        for name in self.cosines:
            lines.append(f"{name:34s} cos at " + "   ".join(f"{'relative damping ' if i == 0 else ''}{lam:g}: {at[lam][name]:+.3f}"
                                                              for i, lam in enumerate(show)))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rel_dampings": list(self.rel_dampings), "cosines": {k: list(v) for k, v in self.cosines.items()},
                "positive_from": self.positive_from}


def damping_study(matrices: dict[str, torch.Tensor], g: torch.Tensor, rel_dampings, reference: str = "Hessian",
                  diagonal_of: str | None = "empirical Fisher") -> DampingStudy:
    """Compare each matrix's damped direction for ``g`` with the ``reference`` matrix's (the damped
    Newton direction) over ``rel_dampings``; with ``diagonal_of``, also the diagonal of that matrix
    (as ``"diagonal <name>"``). Notebook 02, "Newton directions"."""
    if reference not in matrices:
        raise ValueError(f"no reference matrix {reference!r}; have {', '.join(matrices)}")
    rel_dampings = [float(lam) for lam in rel_dampings]
    if not rel_dampings or min(rel_dampings) <= 0:
        raise ValueError(f"relative dampings must be positive, got {rel_dampings}")
    H = matrices[reference]
    newton = [damped_direction(H, g, lam) for lam in rel_dampings]
    others = {name: M for name, M in matrices.items() if name != reference}
    if diagonal_of is not None:
        others[f"diagonal {diagonal_of}"] = torch.diag(torch.diag(matrices[diagonal_of]))
    cosines = {name: [cosine(damped_direction(M, g, lam), n) for lam, n in zip(rel_dampings, newton)] for name, M in others.items()}
    positive_from = max(0.0, -float(spectrum(H)[-1])) / (float(H.trace()) / H.shape[0])
    return DampingStudy(rel_dampings, cosines, positive_from)


def structure_costs_markdown(rows: list[dict]) -> str:
    """:func:`~tutorial_lib.curvature.kfac.structure_costs`'s rows as a markdown table (build time,
    product time, memory, cosine of each F̂⁻¹v to the exact Woodbury one), then the refusal of the
    structure that does not fit. Notebook 02, "What each structure costs"."""
    exact = next((r["result"] for r in rows if r["structure"] == "woodbury" and "result" in r), None)
    lines = ["| structure | build s | product ms | memory MB | cos to exact |", "|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['structure']} | refused | | {r['memory_mb']:,.0f} | |")
        else:
            cos = f"{cosine(r['result'], exact):.4f}" if exact is not None else ""
            lines.append(f"| {r['structure']} | {r['build_s']:.2f} | {r['product_s'] * 1e3:.1f} | {r['memory_mb']:,.2f} | {cos} |")
    refused = [r["refused"] for r in rows if "refused" in r]
    return "\n".join(lines) + ("\n\n" + refused[0] if refused else "")
