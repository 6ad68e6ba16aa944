"""One unlearning API for every method: ``unlearn(model, tokenizer, forget, retain, method, config)``.

A forget set is a list of items, each a text or a ``(context, target)`` pair: the loss of an item is
the mean next-token negative log-likelihood of its target tokens given the context (a text alone is
its own target). Repeated items (a canary inserted k times) count k times. The retain set is a list
of training lines; Fisher samples are windows of ``block_size`` tokens of its joined text, the shape
of the training examples.

Methods (``../shared/PAPER.md`` §3–4, our reconstruction of both):

- ``fisher_removal``: θ' = θ* + η/(n−k) · F̂_λ⁻¹ Δ, Δ = Σ_{x∈D_f} ∇ℓ(θ*; x) (:class:`FisherRemovalConfig`).
- ``fisher_forgetting``: optionally the same Newton step, plus (μσ²)^{1/4} F̂_λ^{p} ε with
  p = −1/4 or −1/2 (:class:`FisherForgettingConfig`).

Notebook 06's first-order baselines (gradient ascent, gradient difference, NPO, fine-tuning) live in
:mod:`tutorial_lib.baselines` and register themselves in :data:`METHODS`. Every method returns a
*new* model (the input is untouched unless ``inplace=True``) and an :class:`UnlearningReport`. An update that is not
finite, or whose norm exceeds the config's ``max_update_norm``, raises :class:`UnlearningError` and
leaves the weights as they were. Notebooks 04 and 05.
"""
from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import import_module
from typing import Callable

import torch

from .fisher import KFACFisher, make_fisher
from .per_sample import ParameterSpace, gradient_matrix, per_sample_gradients, select_parameters
from .profiles import progress_options


class UnlearningError(RuntimeError):
    """An unlearning update was refused; the model's weights are unchanged."""


# ----------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class _FisherStepConfig:
    """Fields shared by Fisher Removal and Fisher Forgetting (see :class:`FisherRemovalConfig`)."""

    damping: float = 1e-3
    eta: float = 0.005
    n_fisher: int = 128
    fisher_source: str = "retain"
    structure: str = "kfac"
    params: tuple[str, ...] | None = None
    repeats: int = 6
    block_size: int | None = None
    batch_size: int = 32
    max_update_norm: float = 100.0

    def __post_init__(self):
        _check_common(self)


@dataclass(frozen=True)
class FisherRemovalConfig(_FisherStepConfig):
    """Fisher Removal (PAPER.md §3). ``eta`` is the step scale η; ``n_fisher`` the number m of
    retain windows whose per-sample gradients build F̂ (``fisher_source`` "retain" or "all" to mix
    in the forget items); ``structure`` woodbury | block | diagonal | kfac; ``params`` a parameter
    subset (None: all); ``repeats`` applies the step that many times, recomputing Δ and F̂ at the
    new weights; ``max_update_norm`` refuses larger updates."""

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "FisherRemovalConfig":
        """Defaults chosen from notebook 04's sweep: the step scale η/(n−k) comes out at about 2e-7
        at both ``tiny`` (n ≈ 2,100 lines, η = 5e-4) and ``small`` (n ≈ 35,000, η = 5e-3)."""
        from .profiles import resolve_profile

        eta = {"tiny": 5e-4, "small": 5e-3, "full": 5e-3}[resolve_profile(profile)]
        return cls(**{"eta": eta, **overrides})


@dataclass(frozen=True)
class FisherForgettingConfig(_FisherStepConfig):
    """Fisher Forgetting (PAPER.md §4): ``variant`` "noise" (Golatkar et al.'s scrubbing noise only)
    or "newton_noise" (the Fisher Removal step plus noise); noise (μσ²)^{1/4} F̂_λ^{exponent} ε with
    ``exponent`` −1/4 (the paper's formula) or −1/2 (Golatkar's code); ``structure`` diagonal |
    woodbury | kfac (those with powers); ``seed`` for ε."""

    variant: str = "newton_noise"
    exponent: float = -0.25
    mu: float = 1e-8
    sigma: float = 1.0
    seed: int = 0

    def __post_init__(self):
        _check_common(self)
        if self.variant not in ("noise", "newton_noise"):
            raise ValueError(f"unknown Fisher Forgetting variant {self.variant!r}; expected 'noise' or 'newton_noise'")
        if self.exponent not in (-0.25, -0.5):
            raise ValueError(f"the noise exponent must be -0.25 or -0.5, got {self.exponent}")
        if self.structure == "block":
            raise ValueError("Fisher Forgetting needs F^p: use structure diagonal, woodbury or kfac")
        if not (self.mu >= 0 and self.sigma >= 0):
            raise ValueError(f"mu and sigma must be >= 0, got mu={self.mu}, sigma={self.sigma}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "FisherForgettingConfig":
        """The Newton step of :meth:`FisherRemovalConfig.for_profile` plus noise at the largest
        noise scale of notebook 05's sweep that keeps the exposure and perplexity bands
        (:func:`~tutorial_lib.studies.forgetting_sweep`): μ = 1e-14 at ``small`` (and ``full``),
        1e-10 at ``tiny``."""
        from .profiles import resolve_profile

        profile = resolve_profile(profile)
        eta = FisherRemovalConfig.for_profile(profile).eta
        return cls(**{"eta": eta, "mu": {"tiny": 1e-10, "small": 1e-14, "full": 1e-14}[profile], **overrides})


def _check_common(cfg) -> None:
    if not (cfg.damping > 0 and math.isfinite(cfg.damping)):
        raise ValueError(f"damping must be a positive finite number, got {cfg.damping}")
    if cfg.structure not in ("woodbury", "block", "diagonal", "kfac"):
        raise ValueError(f"unknown Fisher structure {cfg.structure!r}; expected woodbury, block, diagonal or kfac")
    if cfg.fisher_source not in ("retain", "all"):
        raise ValueError(f"fisher_source must be 'retain' or 'all', got {cfg.fisher_source!r}")
    for name in ("n_fisher", "repeats", "block_size", "batch_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.max_update_norm > 0:
        raise ValueError(f"max_update_norm must be positive, got {cfg.max_update_norm}")


# ----------------------------------------------------------------------------------- report
@dataclass
class UnlearningReport:
    """What an unlearning call did."""

    method: str
    config: dict
    updated: list[str]
    n_parameters: int
    update_norm: float
    seconds: float
    n_train: int
    k: int
    diagnostics: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.method}: {self.n_parameters:,} parameters in {len(self.updated)} tensors, "
                f"update norm {self.update_norm:.4g}, {self.seconds:.2f} s (n = {self.n_train}, k = {self.k})")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- data
@dataclass
class UnlearningData:
    """Tokenized forget items (with multiplicities), the retain text's token ids, n and block size."""

    forget_batch: dict
    counts: torch.Tensor
    retain_ids: torch.Tensor | None
    n_train: int
    block_size: int

    @property
    def k(self) -> int:
        return int(self.counts.sum())


def _as_pair(item) -> tuple[str, str]:
    if isinstance(item, str):
        return "", item
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    raise TypeError(f"a forget item is a text or a (context, target) pair of texts, got {item!r}")


def _max_positions(model) -> int | None:
    return getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)


def _vocab_size(model) -> int:
    return model.get_input_embeddings().num_embeddings


def prepare_unlearning_data(model, tokenizer, forget, retain=None, n_train: int | None = None, block_size: int = 128,
                            device=None) -> UnlearningData:
    """Tokenize and check the forget and retain sets against ``model``."""
    if forget is None or len(forget) == 0:
        raise ValueError("the forget set is empty: nothing to unlearn")
    vocab = _vocab_size(model)
    if len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {vocab}: they do not belong together")
    max_len = _max_positions(model)
    counts = Counter(_as_pair(item) for item in forget)
    rows, masks = [], []
    for (context, target), _ in counts.items():
        c_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        ids = c_ids + t_ids
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"forget item of {len(ids)} tokens is longer than the model's {max_len} positions: {target[:40]!r}")
        if len(ids) < 2 or not t_ids:
            raise ValueError(f"forget item needs a target and at least two tokens: {(context, target)!r}")
        if max(ids) >= vocab:
            raise ValueError(f"forget item has token id {max(ids)} outside the model's vocabulary of {vocab}: wrong tokenizer?")
        rows.append(ids)
        masks.append([0] * max(len(c_ids), 1) + [1] * (len(ids) - max(len(c_ids), 1)))  # labels from the target on
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
        labels[i, : len(r)] = torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(r), -100)
    dev = device or next(model.parameters()).device
    batch = {"input_ids": input_ids.to(dev), "attention_mask": attention.to(dev), "labels": labels.to(dev)}
    retain_ids = None
    if retain is not None and len(retain) > 0:
        retain_ids = torch.tensor(tokenizer("\n".join(retain), add_special_tokens=False)["input_ids"], dtype=torch.long)
        if len(retain_ids) <= block_size:
            raise ValueError(f"the retain set has {len(retain_ids)} tokens, fewer than block_size + 1 = {block_size + 1}")
    k = sum(counts.values())
    n_train = n_train if n_train is not None else (len(retain) if retain is not None else 0) + k
    if n_train <= k:
        raise ValueError(f"n_train = {n_train} must exceed the number of forgotten items k = {k}")
    return UnlearningData(batch, torch.tensor(list(counts.values()), dtype=torch.float64), retain_ids, n_train, block_size)


def fisher_batches(data: UnlearningData, n: int, batch_size: int, source: str, seed: int, device) -> list[dict]:
    """``n`` random windows of ``block_size`` tokens of the retain text (and, for source "all",
    the forget items in proportion k/n_train), in batches."""
    if data.retain_ids is None:
        raise ValueError("this method needs a retain set to build the Fisher from")
    gen = torch.Generator().manual_seed(seed)
    L = data.block_size
    n_forget = round(n * data.k / data.n_train) if source == "all" else 0
    starts = torch.randint(0, len(data.retain_ids) - L, (n - n_forget,), generator=gen)
    windows = torch.stack([data.retain_ids[s : s + L + 0] for s in starts]).to(device)
    batches = [{"input_ids": windows[i : i + batch_size]} for i in range(0, len(windows), batch_size)]
    if n_forget:
        pick = torch.multinomial(data.counts, n_forget, replacement=True, generator=gen).to(device)
        batches.append({k: v[pick] for k, v in data.forget_batch.items()})
    return batches


def forget_gradient(model, data: UnlearningData, space: ParameterSpace) -> torch.Tensor:
    """Δ = Σ_{x∈D_f} ∇ℓ(θ; x): per-item gradients weighted by their multiplicities."""
    G = per_sample_gradients(model, data.forget_batch, space)
    return data.counts.to(G.dtype).to(G.device) @ G


def build_fisher(model, data: UnlearningData, space: ParameterSpace, cfg, seed: int):
    device = next(model.parameters()).device
    batches = fisher_batches(data, cfg.n_fisher, cfg.batch_size, cfg.fisher_source, seed, device)
    if cfg.structure == "kfac":
        return KFACFisher.from_model(model, batches, space, cfg.damping)
    G, _ = gradient_matrix(model, batches, space)
    return make_fisher(G, cfg.damping, cfg.structure)


# ----------------------------------------------------------------------------------- methods
def _newton_direction(model, data, space, cfg, seed):
    F = build_fisher(model, data, space, cfg, seed)
    delta = forget_gradient(model, data, space)
    return F, delta, cfg.eta / (data.n_train - data.k) * F.inverse_product(delta)


def fisher_removal_update(model, data: UnlearningData, space: ParameterSpace, cfg: FisherRemovalConfig, seed: int, state: dict):
    """One Fisher Removal step: (update, diagnostics)."""
    F, delta, step = _newton_direction(model, data, space, cfg, seed)
    return step, {"forget_gradient_norm": float(delta.norm()), "structure": F.structure, "m": F.m}


def fisher_forgetting_update(model, data: UnlearningData, space: ParameterSpace, cfg: FisherForgettingConfig, seed: int,
                             state: dict):
    """Newton step (variant "newton_noise") plus (μσ²)^{1/4} F̂_λ^{p} ε: (update, diagnostics)."""
    if cfg.variant == "newton_noise":
        F, delta, step = _newton_direction(model, data, space, cfg, seed)
        diag = {"forget_gradient_norm": float(delta.norm()), "newton_norm": float(step.norm())}
    else:
        F = build_fisher(model, data, space, cfg, seed)
        step, diag = torch.zeros(space.dim, dtype=torch.float64), {}
    p0 = space.parameters(model)[0]
    gen = torch.Generator().manual_seed(cfg.seed + seed)
    eps = torch.randn(space.dim, generator=gen, dtype=p0.dtype).to(p0.device)
    noise = (cfg.mu * cfg.sigma**2) ** 0.25 * F.power_product(eps, cfg.exponent)
    diag.update(noise_norm=float(noise.norm()), structure=F.structure, m=F.m)
    return step.to(noise.dtype) + noise, diag


@dataclass(frozen=True)
class Method:
    """An unlearning method: its config class and ``update(model, data, space, cfg, seed, state)``,
    called ``cfg.repeats`` times; it returns (flat update, diagnostics) and may keep what it needs
    between calls in ``state`` (a dict that starts empty, e.g. optimiser moments)."""

    config: type
    update: Callable
    needs_retain: bool = True


METHODS: dict[str, Method] = {
    "fisher_removal": Method(FisherRemovalConfig, fisher_removal_update),
    "fisher_forgetting": Method(FisherForgettingConfig, fisher_forgetting_update),
}


def unlearn(model, tokenizer, forget, retain=None, method: str = "fisher_removal", config=None, n_train: int | None = None,
            seed: int = 0, inplace: bool = False, callback: Callable | None = None):
    """Make ``model`` forget ``forget``; returns ``(new_model, report)``.

    ``config`` is the method's config (default: its defaults); ``n_train`` the number n of training
    examples (default: retain items + forget items). The model passed in is not modified unless
    ``inplace``; on any error it keeps its weights. ``callback(step, model) -> dict`` runs after
    every update (repeat or optimiser step); what it returns is kept in
    ``report.diagnostics["trace"]``."""
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; expected one of {', '.join(METHODS)}")
    spec = METHODS[method]
    cfg = config if config is not None else spec.config()
    if not isinstance(cfg, spec.config):
        raise TypeError(f"method {method!r} takes a {spec.config.__name__}, got {type(cfg).__name__}")
    if spec.needs_retain and (retain is None or len(retain) == 0):
        raise ValueError(f"method {method!r} needs a retain set")
    start = time.perf_counter()
    data = prepare_unlearning_data(model, tokenizer, forget, retain, n_train, cfg.block_size or min(_max_positions(model) or 128, 128))
    work = model if inplace else copy.deepcopy(model)
    was_training = work.training
    work.eval()
    space = select_parameters(work, list(cfg.params) if cfg.params else None)
    before = space.get(work)
    diagnostics: dict = {"per_repeat": []}
    state: dict = {}
    callback_seconds = 0.0
    try:
        for r in range(cfg.repeats):
            update, diag = spec.update(work, data, space, cfg, seed + r, state)
            norm = float(update.norm())
            if not math.isfinite(norm):
                raise UnlearningError(f"{method}: the update holds NaN or inf (repeat {r + 1}); weights left unchanged")
            total = float((space.get(work) + update.to(before.dtype) - before).norm())
            if total > cfg.max_update_norm:
                raise UnlearningError(
                    f"{method}: update norm {total:.4g} exceeds max_update_norm = {cfg.max_update_norm:g} (repeat {r + 1}); "
                    "weights left unchanged; lower eta or raise the damping"
                )
            space.add_(work, update)
            diagnostics["per_repeat"].append({"update_norm": norm, **diag})
            if callback is not None:  # its time is not the method's
                tick = time.perf_counter()
                diagnostics.setdefault("trace", []).append({"step": r + 1, **(callback(r + 1, work) or {})})
                work.eval()
                callback_seconds += time.perf_counter() - tick
    except BaseException:
        _restore(work, space, before)
        work.train(was_training)
        raise
    work.train(was_training)
    report = UnlearningReport(
        method=method, config=asdict(cfg), updated=list(space.names), n_parameters=space.dim,
        update_norm=float((space.get(work) - before).norm()), seconds=time.perf_counter() - start - callback_seconds,
        n_train=data.n_train, k=data.k, diagnostics=diagnostics,
    )
    return work, report


@torch.no_grad()
def _restore(model, space: ParameterSpace, values: torch.Tensor) -> None:
    for p, v in zip(space.parameters(model), space.unflatten(values).values()):
        p.copy_(v)


# ----------------------------------------------------------------------------------- evaluation
def canary_forget_items(canary, target: str = "secret") -> list:
    """The forget set of one canary: its ``insertions`` training occurrences, each a (context,
    target) pair. ``target="secret"`` counts only the secret and what follows it (given "\n" and
    the prefix), ``"line"`` the whole line after the line break (the data-agnostic choice)."""
    if target == "secret":
        item = ("\n" + canary.prefix, canary.secret + canary.suffix)
    elif target == "line":
        item = ("\n", canary.text())
    else:
        raise ValueError(f"target must be 'secret' or 'line', got {target!r}")
    if canary.insertions < 1:
        raise ValueError(f"canary {canary.name!r} was never inserted: nothing to forget")
    return [item] * canary.insertions


@torch.no_grad()
def next_token_kl(model, reference, ids: torch.Tensor, block_size: int, max_blocks: int = 32, batch_size: int = 16) -> float:
    """Mean KL(reference ‖ model) of next-token distributions over non-overlapping blocks of ``ids`` (nats)."""
    n_blocks = min((len(ids) - 1) // block_size, max_blocks)
    if n_blocks < 1:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(ids)}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, n_blocks, batch_size):
        starts = torch.arange(i, min(i + batch_size, n_blocks)) * block_size
        block = ids[starts[:, None] + torch.arange(block_size)].to(device)
        p = torch.log_softmax(reference(input_ids=block).logits.double(), -1)
        q = torch.log_softmax(model(input_ids=block).logits.double(), -1)
        total += float((p.exp() * (p - q)).sum())
        count += block.numel()
    return total / count


def evaluate_unlearning(model, tokenizer, canaries, val_ids, retain_ids, forget_items, block_size: int,
                        reference=None, names=None, max_blocks: int = 64, candidates: int | None = None) -> dict:
    """Everything a method reports: exact exposure of each canary in ``names`` (default all; among
    ``candidates`` sampled secrets if given, see :func:`~tutorial_lib.exposure.compute_exposure`),
    validation and retain perplexity, loss on the forget items, and KL of next-token predictions
    from ``reference`` (the retrained model) on validation text."""
    from .evaluation import compute_loss
    from .exposure import compute_exposure
    from .per_sample import lm_outputs, sample_losses

    model.eval()
    out = {"exposure": {c.name: compute_exposure(model, tokenizer, c, candidates=candidates).exposure
                        for c in canaries if names is None or c.name in names}}
    out["val_loss"] = compute_loss(model, val_ids, block_size, max_blocks=max_blocks)
    out["val_perplexity"] = math.exp(out["val_loss"])
    out["retain_perplexity"] = math.exp(compute_loss(model, retain_ids, block_size, max_blocks=max_blocks))
    data = prepare_unlearning_data(model, tokenizer, forget_items, None, n_train=len(forget_items) + 1, block_size=block_size)
    with torch.no_grad():
        losses = sample_losses(lm_outputs(model, data.forget_batch))
    out["forget_loss"] = float((losses.double() @ data.counts) / data.counts.sum())
    if reference is not None:
        reference.eval()
        out["kl_to_reference"] = next_token_kl(model, reference, val_ids, block_size, max_blocks=min(max_blocks, 32))
    return out


def repeated_unlearning(model, tokenizer, requests, retain, method: str, config, evaluate: Callable, n_train: int,
                        seed: int = 0, progress: bool = True) -> tuple[object, list[dict]]:
    """Serve deletion requests one at a time: ``requests`` is a list of (name, forget items); after
    each cycle the model is evaluated with ``evaluate(model) -> dict`` and n shrinks by the k items
    just forgotten. Returns (final model, one row per cycle, the first being cycle 0 = before).
    Notebook 05, "Repeated requests"."""
    from tqdm.auto import tqdm

    if not requests:
        raise ValueError("no deletion requests")
    rows = [{"cycle": 0, "request": None, "seconds": 0.0, **evaluate(model)}]
    current = model
    for cycle, (name, items) in enumerate(tqdm(requests, desc=f"{method} cycles", **progress_options(progress)), start=1):
        current, report = unlearn(current, tokenizer, items, retain, method, config, n_train=n_train, seed=seed + 1000 * cycle)
        n_train -= report.k
        rows.append({"cycle": cycle, "request": name, "seconds": report.seconds, "update_norm": report.update_norm, **evaluate(current)})
    return current, rows


import_module(".baselines", __package__)  # registers the first-order methods in METHODS (notebook 06)
