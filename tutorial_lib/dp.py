"""DP-SGD on the same GPT-2s, data and canaries (notebook 08): Opacus' ``PrivacyEngine`` with
per-example clipping, Poisson sampling, Gaussian noise and the RDP accountant.

Training with differential privacy from the start is the alternative to unlearning afterwards. A run
is defined by the memorisation run it replaces (:class:`~tutorial_lib.memorization.MemorizationConfig`:
corpus, canaries, model, optimiser, steps) plus a :class:`DPConfig` (target ε, δ, clipping bound).
The training text is cut into non-overlapping windows of ``block_size + 1`` tokens, the *examples*
that ε and δ are about; each step takes every window with probability q = batch_size / n (Poisson
sampling), so a step sees ``batch_size`` windows on average and ``steps`` steps make
``steps * batch_size / n`` epochs, the same budget as the non-private run.

Two details matter for GPT-2 under Opacus (1.6) and transformers (5.x):

* the model must be called with ``position_ids`` for the whole batch, shape (B, T). Without them
  GPT-2 builds positions of shape (1, T), and the position embedding's per-sample gradients come
  out with a batch dimension of 1 instead of B (:func:`position_ids`);
* HF's ``Conv1D`` (GPT-2's attention and MLP projections) has no Opacus grad sampler, so Opacus
  would fall back to ``torch.func`` for it. :func:`register_conv1d_grad_sampler` registers one
  (a Linear layer with its weight transposed: one einsum per parameter); ``bench/dp_step.py``
  measures both against a plain step.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass

import torch

from .cache import cache_root, cached_result, config_key, load_run, save_run
from .data import corpus_path, sha256_file
from .evaluation import compute_loss, tokenize_lines
from .memorization import MemorizationConfig, prepare_memorization, train_memorization_model
from .models import load_pretrained, make_model
from .profiles import progress_options, resolve_device
from .training import TrainConfig, TrainHistory, lr_at

ACCOUNTANTS = ("rdp", "prv", "gdp")
EPSILONS = (1.0, 3.0, 8.0)  # the targets of notebook 08 and the reproduction's DP table


@dataclass(frozen=True)
class DPConfig:
    """Privacy settings of a DP-SGD run.

    ``target_epsilon``: the ε the noise multiplier is calibrated to (by the accountant, for the run's
    sampling rate and number of steps). ``delta``: δ, default 1/n for n training windows.
    ``max_grad_norm``: the per-example clipping bound C. ``noise_multiplier``: set σ directly
    instead of a target ε (then ε is only reported). ``accountant``: Opacus' ``"rdp"`` (default),
    ``"prv"`` or ``"gdp"``."""

    target_epsilon: float | None = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    accountant: str = "rdp"

    def __post_init__(self):
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("give a target_epsilon or a noise_multiplier")
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(f"give a target_epsilon or a noise_multiplier, not both "
                             f"(got {self.target_epsilon} and {self.noise_multiplier})")
        if self.target_epsilon is not None and not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise ValueError(f"target_epsilon must be a positive finite number, got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm (the clipping bound) must be positive, got {self.max_grad_norm}")
        if self.noise_multiplier is not None and not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {self.accountant!r}; expected one of {', '.join(ACCOUNTANTS)}")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- accounting
def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The noise multiplier σ that spends ``target_epsilon`` at ``delta`` over ``steps`` Poisson-sampled
    steps at ``sample_rate`` (Opacus' ``get_noise_multiplier``)."""
    from opacus.accountants.utils import get_noise_multiplier

    DPConfig(target_epsilon=target_epsilon, delta=delta, accountant=accountant)  # validates
    _check_rate(sample_rate, steps)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is valid, if loose
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                                          accountant=accountant))


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε after ``steps`` steps with noise ``noise_multiplier`` at ``sample_rate``, for ``delta``
    (``inf`` without noise). Notebook 08, "What (ε, δ) promises"."""
    from opacus.accountants import create_accountant

    DPConfig(target_epsilon=None, noise_multiplier=noise_multiplier, delta=delta, accountant=accountant)  # validates
    _check_rate(sample_rate, steps)
    if noise_multiplier == 0:
        return math.inf
    accountant_ = create_accountant(accountant)
    accountant_.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(accountant_.get_epsilon(delta=delta))


def _check_rate(sample_rate: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


# ----------------------------------------------------------------------------------- Opacus plumbing
def conv1d_grad_sample(layer, activations, backprops) -> dict:
    """Per-sample gradients of Hugging Face's ``Conv1D`` (y = x W + b with W of shape (in, out)):
    for example n, ∂ℓ_n/∂W = Σ_t x_{n,t} g_{n,t}ᵀ and ∂ℓ_n/∂b = Σ_t g_{n,t}, where g are the
    gradients at the layer's output (Opacus' grad-sampler signature)."""
    x = activations[0]
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...j->nj", backprops)
    return out


def register_conv1d_grad_sampler() -> None:
    """Register :func:`conv1d_grad_sample` with Opacus (idempotent); :func:`make_private` calls it."""
    from opacus.grad_sample import GradSampleModule
    from transformers.pytorch_utils import Conv1D

    GradSampleModule.GRAD_SAMPLERS[Conv1D] = conv1d_grad_sample


def check_opacus_compatible(model) -> None:
    """Raise ``ValueError`` naming every layer that Opacus cannot train privately (batch norm, for
    example, mixes examples of a batch), with Opacus' own reason."""
    from opacus.validators import ModuleValidator

    errors = [f"layer {name!r} ({type(module).__name__}): {error}" for name, module in model.named_modules()
              if not any(module.children()) for error in ModuleValidator.validate(module, strict=False)]
    if errors:
        raise ValueError("Opacus cannot train this model with DP-SGD: " + "; ".join(errors))


def position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """Position ids of shape (B, T) for a batch of windows: what GPT-2 must be called with under
    Opacus, so that the position embedding's per-sample gradients have the batch dimension."""
    B, T = input_ids.shape
    return torch.arange(T, device=input_ids.device).expand(B, T)


def window_dataset(ids: torch.Tensor, block_size: int) -> torch.utils.data.TensorDataset:
    """The training text as non-overlapping windows of ``block_size + 1`` tokens: DP's examples."""
    n = len(ids) // (block_size + 1)
    if n < 2:
        raise ValueError(f"training text has {len(ids)} tokens: fewer than 2 windows of {block_size + 1}")
    return torch.utils.data.TensorDataset(ids[: n * (block_size + 1)].reshape(n, block_size + 1))


def make_private(model, optimizer, loader, noise_multiplier: float, max_grad_norm: float, accountant: str = "rdp",
                 seed: int = 0, poisson_sampling: bool = True):
    """Opacus' ``PrivacyEngine.make_private`` with a seeded noise generator (so that the same seed
    gives the same run). Returns ``(engine, private model, DP optimiser, Poisson data loader)``;
    call the private model with :func:`position_ids`. ``private_model._close()`` removes the hooks."""
    from opacus import PrivacyEngine

    check_opacus_compatible(model)
    register_conv1d_grad_sampler()
    DPConfig(target_epsilon=None, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, accountant=accountant)  # validates
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant=accountant)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        private, dp_optimizer, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, poisson_sampling=poisson_sampling,
            noise_generator=torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 1),
        )
    return engine, private, dp_optimizer, dp_loader


def window_loss(model, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch of windows (B, T + 1), calling ``model`` with
    whole-batch position ids. Every window has the same length, so this is the mean over the batch
    of per-window mean losses: Opacus' ``loss_reduction="mean"``."""
    inputs, labels = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, position_ids=position_ids(inputs), use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` through an Opacus model, without the warning PyTorch gives because the
    first layer's input (token ids) needs no gradient: harmless here, since Opacus' hooks read the
    layers' outputs' gradients."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()


# ----------------------------------------------------------------------------------- training
def train_dp_language_model(model, train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: TrainConfig, dp: DPConfig, seed: int = 0,
                            device: str = "cpu", progress: bool = True) -> tuple[TrainHistory, dict]:
    """Train ``model`` in place with DP-SGD (AdamW as in :func:`~tutorial_lib.training.train_language_model`,
    same learning-rate schedule and number of steps; per-example clipping to ``dp.max_grad_norm``
    replaces batch clipping). Returns the history and the privacy record: n windows, sample rate,
    steps, σ, δ, the target and the spent ε (from the engine's accountant). Notebook 08."""
    from tqdm.auto import tqdm

    dataset = window_dataset(train_ids, cfg.block_size)
    n = len(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, generator=torch.Generator().manual_seed(seed))
    sample_rate = 1 / len(loader)  # what Opacus' Poisson loader uses: about batch_size / n
    delta = dp.delta if dp.delta is not None else 1.0 / n
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    sigma = dp.noise_multiplier if dp.noise_multiplier is not None else noise_multiplier_for(
        dp.target_epsilon, delta, sample_rate, cfg.steps, dp.accountant)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    engine, private, dp_optimizer, dp_loader = make_private(model, optimizer, loader, sigma, dp.max_grad_norm, dp.accountant, seed)
    history, step, empty = TrainHistory(), 0, 0
    bar = tqdm(total=cfg.steps, desc=f"DP-SGD (sigma {sigma:.2f})", **progress_options(progress))
    try:
        while step < cfg.steps:
            for (windows,) in dp_loader:
                if step == cfg.steps:
                    break
                for group in dp_optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg)
                if len(windows) == 0:  # Poisson sampling drew no window: the step happened, nothing to learn
                    empty += 1
                    step += 1
                    bar.update()
                    continue
                loss = window_loss(private, windows.to(device))
                dp_optimizer.zero_grad(set_to_none=True)
                backward(loss)
                dp_optimizer.step()
                history.train_loss.append(loss.item())
                step += 1
                bar.update()
                if step % cfg.eval_every == 0 or step == cfg.steps or step in cfg.eval_steps:
                    val = compute_loss(model, val_ids, cfg.block_size, max_blocks=cfg.eval_blocks, device=device)
                    history.val_steps.append(step)
                    history.val_loss.append(val)
                    bar.set_postfix(loss=f"{loss.item():.3f}", val_ppl=f"{math.exp(val):.2f}")
                    model.train()
    finally:
        bar.close()
        private._close()
    model.eval()
    # empty steps did not call the optimiser, so the engine's accountant missed them: account for all
    spent = epsilon_spent(sigma, sample_rate, cfg.steps, delta, dp.accountant)
    if not empty and sigma > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")
            engine_eps = engine.get_epsilon(delta)
        assert math.isclose(engine_eps, spent, rel_tol=1e-6), f"the engine's accountant says {engine_eps}, not {spent}"
    privacy = {"n_windows": n, "sample_rate": sample_rate, "steps": cfg.steps, "epochs": cfg.steps * sample_rate,
               "noise_multiplier": sigma, "max_grad_norm": dp.max_grad_norm, "delta": delta,
               "target_epsilon": dp.target_epsilon, "epsilon": spent, "accountant": dp.accountant, "empty_batches": empty}
    return history, privacy


def train_dp_model(cfg: MemorizationConfig, dp: DPConfig, seed: int = 0, device: str | None = None, cache_dir=None,
                   progress: bool = True):
    """Train (or load from the cache) the DP-SGD counterpart of the memorisation run ``cfg``: same
    corpus, canaries, model and steps. Returns ``(model, tokenizer, canaries, splits, record,
    from_cache)``; ``record["privacy"]`` holds σ, δ and the spent ε. Notebook 08."""
    device = resolve_device(device)
    pretrained = load_pretrained(cfg.model.pretrained_path, device=device) if cfg.model.pretrained_path else None
    splits, tokenizer, canaries, inserted = prepare_memorization(cfg, seed, pretrained[1] if pretrained else None)
    run_config = {"kind": "dp-sgd", "seed": seed, "data_sha256": sha256_file(corpus_path(cfg.corpus)), **cfg.to_dict(),
                  "dp": dp.to_dict()}
    run_config.pop("estimate_samples")
    folder = cache_root(cache_dir) / f"dp-{config_key(run_config)}"
    if (folder / "run.json").is_file():
        model, tokenizer, record = load_run(folder, run_config, device=device)
        return model, tokenizer, canaries, splits, record, True
    model = pretrained[0] if pretrained else make_model(cfg.model, len(tokenizer), seed=seed, device=device)
    train_ids = tokenize_lines(tokenizer, inserted.lines)
    val_ids = tokenize_lines(tokenizer, splits.validation)
    start = time.perf_counter()
    history, privacy = train_dp_language_model(model, train_ids, val_ids, cfg.train, dp, seed=seed, device=device, progress=progress)
    record = {"history": history.to_dict(), "privacy": privacy, "train_seconds": time.perf_counter() - start}
    save_run(folder, model, tokenizer, run_config, record)
    return model, tokenizer, canaries, splits, record, False


# ----------------------------------------------------------------------------------- the study
def dp_study(cfg: MemorizationConfig, epsilons: tuple[float, ...] = EPSILONS, seed: int = 0, device=None, max_grad_norm: float = 1.0,
             candidates: int | None = None, use_cache: bool = True, progress: bool = True) -> tuple[dict, bool]:
    """DP-SGD at each target ε (δ = 1/n) next to the non-private run, on the memorisation run ``cfg``:
    exposure of every canary (exact, or among ``candidates`` sampled secrets), validation
    perplexity, σ and the spent ε (``None`` for the non-private run: ε = ∞), training time. Cached:
    ``(result, from_cache)``. Rows are in the order non-private, then decreasing ε. Notebook 08 and the reproduction's DP table."""
    from .exposure import compute_exposure

    epsilons = tuple(sorted({float(e) for e in epsilons}, reverse=True))
    for e in epsilons:
        DPConfig(target_epsilon=e, max_grad_norm=max_grad_norm)  # validates before any training

    def evaluate(model, tokenizer, canaries, splits) -> dict:
        val_ids = tokenize_lines(tokenizer, splits.validation)
        val = compute_loss(model, val_ids, cfg.train.block_size, max_blocks=64)
        return {"exposure": {c.name: compute_exposure(model, tokenizer, c, candidates=candidates).exposure for c in canaries},
                "val_loss": val, "val_perplexity": math.exp(val)}

    def compute():
        model, tokenizer, canaries, splits, record, _ = train_memorization_model(cfg, seed=seed, device=device, progress=progress)
        rows = [{"label": "non-private", "target_epsilon": None, "epsilon": None, "noise_multiplier": 0.0,
                 "train_seconds": record["train_seconds"], **evaluate(model, tokenizer, canaries, splits)}]
        for eps in epsilons:
            model, tokenizer, canaries, splits, record, _ = train_dp_model(
                cfg, DPConfig(target_epsilon=eps, max_grad_norm=max_grad_norm), seed=seed, device=device, progress=progress)
            p = record["privacy"]
            rows.append({"label": f"eps = {eps:g}", "target_epsilon": eps, "epsilon": p["epsilon"], "noise_multiplier": p["noise_multiplier"],
                         "delta": p["delta"], "sample_rate": p["sample_rate"], "epochs": p["epochs"],
                         "train_seconds": record["train_seconds"], **evaluate(model, tokenizer, canaries, splits)})
        return {"corpus": cfg.corpus, "canaries": [c.to_dict() for c in canaries], "rows": rows}

    return cached_result("dp_study", _study_key(cfg, epsilons, seed, max_grad_norm, candidates), compute, use_cache=use_cache,
                         modules=("dp.py",))


def _study_key(cfg: MemorizationConfig, epsilons, seed: int, max_grad_norm: float, candidates: int | None) -> dict:
    return {"run": cfg.to_dict(), "seed": seed, "epsilons": sorted({float(e) for e in epsilons}, reverse=True),
            "max_grad_norm": max_grad_norm, "candidates": candidates}


def dp_study_cached(cfg: MemorizationConfig, epsilons: tuple[float, ...] = EPSILONS, seed: int = 0, max_grad_norm: float = 1.0,
                    candidates: int | None = None) -> bool:
    """Whether :func:`dp_study` with these arguments is already in the result cache."""
    from .cache import result_path

    return result_path("dp_study", _study_key(cfg, epsilons, seed, max_grad_norm, candidates), modules=("dp.py",)).is_file()


def dp_for_profile(profile: str) -> dict:
    """Which runs notebook 08 and the reproduction make at each profile: the corpora of the
    per-corpus curve and the profile of their memorisation runs, and whether the notebook's own
    profile gets a Shakespeare run at its model scale too (``small``: tiny-scale models for the
    four corpora, like the benchmark, plus the small model on Shakespeare in the reproduction)."""
    from .data import CORPORA
    from .profiles import resolve_profile

    profile = resolve_profile(profile)
    return {"tiny": {"corpora": ("shakespeare",), "run_profile": "tiny"},
            "small": {"corpora": tuple(CORPORA), "run_profile": "tiny"},
            "full": {"corpora": tuple(CORPORA), "run_profile": "small"}}[profile]



# ----------------------------------------------------------------------------------- notebook 08's comparison
@dataclass(frozen=True)
class DPComparisonConfig:
    """The DP-SGD runs of notebook 08 and the reproduction: the privacy–utility curve (``epsilons``)
    on each of ``corpora`` at the ``run_profile`` model scale, next to the unlearning methods of the
    four-corpus benchmark on the same models (its one-seed cells), and, when ``own_scale`` is set,
    DP-SGD at ``own_scale_epsilons`` on Shakespeare at the profile's own model scale, next to the
    unlearning methods on notebook 04's model.

    ``small``: the tiny-scale models of the benchmark for the four corpora (CPU), plus the small
    model on Shakespeare at ε = 1 in the reproduction (a DP run of the small model takes about
    3 minutes on 2 cores); ``tiny``: Shakespeare only; ``full``: the small-scale models for the
    four corpora, plus the full model at every ε."""

    profile: str = "small"
    corpora: tuple[str, ...] = ()
    run_profile: str = "tiny"
    epsilons: tuple[float, ...] = EPSILONS
    max_grad_norm: float = 1.0
    own_scale: bool = True
    own_scale_epsilons: tuple[float, ...] = (1.0,)

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "DPComparisonConfig":
        from .data import CORPORA
        from .profiles import resolve_profile

        profile = resolve_profile(profile)
        base = {"tiny": dict(corpora=("shakespeare",), run_profile="tiny", own_scale=False),
                "small": dict(corpora=tuple(CORPORA), run_profile="tiny"),
                "full": dict(corpora=tuple(CORPORA), run_profile="small", own_scale_epsilons=EPSILONS)}[profile]
        return cls(profile=profile, **{**base, **overrides})

    def run_config(self, corpus: str) -> MemorizationConfig:
        return MemorizationConfig.for_profile(self.run_profile, corpus=corpus)

    def to_dict(self) -> dict:
        return asdict(self)


def dp_comparison(cfg: DPComparisonConfig, seed: int = 0, device=None, own_scale: bool | None = None, progress: bool = True) -> dict:
    """Every DP study of ``cfg`` and, per corpus, the unlearning benchmark's cell on the same model
    (original, retrained, Fisher Removal, Fisher Forgetting, the baselines): ``{"config", "curves":
    {corpus: dp_study}, "unlearning": {corpus: benchmark rows}, "own_scale": dp_study or None}``.
    Everything is cached; ``own_scale`` overrides ``cfg.own_scale``."""
    import dataclasses

    from tqdm.auto import tqdm

    from .benchmark import BenchmarkConfig, benchmark_cell

    bench = dataclasses.replace(BenchmarkConfig.for_profile(cfg.profile), corpora=cfg.corpora, seeds=(seed,),
                                run_profile=cfg.run_profile)
    curves, unlearning = {}, {}
    for corpus in tqdm(cfg.corpora, desc="DP-SGD (corpus)", **progress_options(progress)):
        curves[corpus] = dp_study(cfg.run_config(corpus), cfg.epsilons, seed, device, cfg.max_grad_norm, progress=False)[0]
        cell = benchmark_cell(bench, corpus, seed, device)[0]
        unlearning[corpus] = {"target": cell["target"], "rows": cell["rows"]}
    own = own_unlearning = None
    if cfg.own_scale if own_scale is None else own_scale:
        from .reproduce import unlearning_experiment

        own_cfg = MemorizationConfig.for_profile(cfg.profile)
        own = dp_study(own_cfg, cfg.own_scale_epsilons, seed, device, cfg.max_grad_norm, progress=progress)[0]
        methods = unlearning_experiment(own_cfg, seed, device)
        names = {"retrained oracle": "retrained"}
        own_unlearning = {"target": methods["target"], "rows": {names.get(k, k): v for k, v in methods["results"].items()}}
    return {"config": cfg.to_dict(), "seed": seed, "curves": curves, "unlearning": unlearning, "own_scale": own,
            "own_scale_unlearning": own_unlearning}


def _by_insertions(study: dict) -> list[tuple[str, int]]:
    return sorted(((c["name"], c["insertions"]) for c in study["canaries"]), key=lambda t: -t[1] if t[1] else 1)


def dp_markdown(study: dict, title: str | None = None) -> str:
    """One DP study as a markdown table: every run's spent ε, σ, validation perplexity and the
    exposure of every canary (inserted counts in the header)."""
    canaries = _by_insertions(study)
    base = study["rows"][0]["val_perplexity"]
    lines = [f"**{title or study['corpus']}**", "",
             "| run | ε spent | σ | val ppl | " + " | ".join(f"{n} ({k}x)" if k else f"{n} (control)" for n, k in canaries) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(canaries)]
    for r in study["rows"]:
        eps = "∞" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        lines.append(f"| {r['label']} | {eps} | {r['noise_multiplier']:.2f} | {r['val_perplexity']:.2f} ({r['val_perplexity'] / base - 1:+.0%}) | "
                     + " | ".join(f"{r['exposure'][n]:.2f}" for n, _ in canaries) + " |")
    return "\n".join(lines) + "\n"


UNLEARNING_POINTS = ("original", "retrained", "fisher_removal", "fisher_forgetting", "gradient_ascent", "gradient_difference")


def plot_dp_vs_unlearning(study: dict, unlearning: dict | None = None, ax=None, insertions: int | None = None):
    """Exposure of the most-inserted canary (or the one inserted ``insertions`` times) against
    validation perplexity: the DP-SGD runs as a curve over ε, and, when ``unlearning`` (a benchmark
    cell's rows on the same model) is given, the unlearning methods in the benchmark's colours and
    the retrained model as the star. Notebook 08."""
    import matplotlib.pyplot as plt

    from .benchmark import COLOURS

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    canaries = _by_insertions(study)
    name, k = next(((n, k) for n, k in canaries if k == insertions), canaries[0]) if insertions else canaries[0]
    rows = study["rows"]
    dp_rows = [r for r in rows if r["target_epsilon"] is not None]
    ax.plot([r["val_perplexity"] for r in dp_rows], [r["exposure"][name] for r in dp_rows], "D-", color="C5", label="DP-SGD")
    for r in dp_rows:
        ax.annotate(f"ε={r['target_epsilon']:g}", (r["val_perplexity"], r["exposure"][name]), fontsize="x-small",
                    xytext=(4, 4), textcoords="offset points")
    if unlearning is None or unlearning["target"] != name:
        ax.plot(rows[0]["val_perplexity"], rows[0]["exposure"][name], "ks", ms=8, label="non-private (original)")
    else:
        for model in UNLEARNING_POINTS:
            r = unlearning["rows"][model]
            ax.plot(r["val_perplexity"], r["exposure"][name], "*" if model == "retrained" else ("s" if model == "original" else "o"),
                    ms=14 if model == "retrained" else 7, color=COLOURS[model],
                    label="non-private (original)" if model == "original" else model.replace("_", " "))
    ax.set(xlabel="validation perplexity", ylabel=f"exposure of {name} ({k}x, bits)", title=study["corpus"])
    ax.legend(fontsize="x-small")
    return ax
