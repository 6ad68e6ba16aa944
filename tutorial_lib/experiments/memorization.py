"""The memorisation experiment of notebook 03: train a GPT-2 on a corpus with canaries inserted
1, 10 and 100 times, then measure exact exposure (and its skew-normal estimate) of every canary and
control, exposure over training steps, and perplexity. The reproduction command runs it too.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from tqdm.auto import tqdm

from ..core.cache import cache_root, cached_result, config_key, key_lock, load_run, save_run
from ..core.canaries import (
    Canary,
    InsertedCorpus,
    RandomnessSpace,
    insert_canaries,
    make_canaries,
)
from ..core.data import CORPORA, CorpusSplits, corpus_sha256, load_corpus
from ..core.evaluation import compute_perplexity, tokenize_lines
from ..core.models import ModelConfig, count_parameters, load_pretrained, make_model, pretrained_fingerprint
from ..core.profiles import (
    config_for_profile,
    progress_options,
    resolve_device,
    resolve_profile,
)
from ..core.tokenization import make_byte_tokenizer
from ..core.training import TrainConfig, TrainedModel, train_language_model
from ..privacy.exposure import compute_exposure, estimate_exposure


@dataclass(frozen=True)
class MemorizationConfig:
    """Everything that defines a memorisation run except the seed and the device."""

    profile: str = "small"
    corpus: str = "shakespeare"
    max_chars: int | None = None
    insertions: tuple[int, ...] = (1, 10, 100)
    per_insertion: int = 1
    n_controls: int = 3
    secret_length: int = 6
    estimate_samples: int = 5000
    track_exposure: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"max_chars": 60_000, "secret_length": 4, "n_controls": 2, "estimate_samples": 500},
        "small": {},
        "full": {"per_insertion": 2, "n_controls": 4, "estimate_samples": 20_000},
    }

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; expected one of {', '.join(CORPORA)}")
        for k in self.insertions:
            if k < 0:
                raise ValueError(f"insertions must be >= 0, got k = {k}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "MemorizationConfig":
        """Defaults for ``tiny`` (seconds), ``small`` (CPU, minutes) and ``full`` (GPU): the profile's
        row of ``PROFILE_DEFAULTS`` with the profile's model and training, then ``overrides``."""
        profile = resolve_profile(profile)
        return config_for_profile(cls, profile, overrides, profile=profile, model=ModelConfig.for_profile(profile),
                                  train=TrainConfig.for_profile(profile))

    @property
    def space(self) -> RandomnessSpace:
        return RandomnessSpace(self.secret_length)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["insertions"] = list(self.insertions)
        out["train"]["eval_steps"] = list(self.train.eval_steps)
        return out


@dataclass
class MemorizationResult:
    """What :func:`run_memorization` measured. Exposures in bits; perplexities per token."""

    config: dict
    seed: int
    canaries: list[dict]
    exposures: list[dict]
    estimates: list[dict]
    trajectory: dict[str, list[list[float]]]
    history: dict
    val_perplexity: float
    test_perplexity: float
    n_parameters: int
    train_seconds: float
    exposure_seconds: float
    from_cache: bool = False

    @property
    def max_bits(self) -> float:
        return math.log2(self.exposures[0]["space_size"])

    def exposure_of(self, insertions: int) -> list[float]:
        """Exact exposures of the canaries inserted ``insertions`` times (0 = controls)."""
        return [e["exposure"] for e in self.exposures if e["insertions"] == insertions]

    def rows(self) -> list[dict]:
        """One row per canary: name, insertions, exact and estimated exposure, estimate error, rank."""
        rows = []
        for e, est in zip(self.exposures, self.estimates):
            rows.append(
                dict(name=e["name"], insertions=e["insertions"], exposure=e["exposure"], estimate=est["exposure"],
                     estimate_error=est["exposure"] - e["exposure"], rank=e["rank"], seconds=e["seconds"])
            )
        return rows

    def table_markdown(self) -> str:
        lines = [
            f"Exposure of canaries (|R| = {self.exposures[0]['space_size']:,}, max {self.max_bits:.2f} bits); "
            f"validation perplexity {self.val_perplexity:.2f}, test perplexity {self.test_perplexity:.2f}.",
            "",
            "| canary | inserted | exact exposure (bits) | skew-normal estimate (bits) | estimate error (bits) | rank | exact time (s) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows():
            lines.append(
                f"| {r['name']} | {r['insertions']}x | {r['exposure']:.2f} | {r['estimate']:.2f} | "
                f"{r['estimate_error']:+.2f} | {r['rank']:,} | {r['seconds']:.1f} |"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        parts = [f"{k}x: " + ", ".join(f"{x:.1f}" for x in self.exposure_of(k)) for k in sorted({e["insertions"] for e in self.exposures})]
        return (
            f"{self.n_parameters:,}-parameter GPT-2 on {self.config['corpus']}, seed {self.seed}: exposure (bits) "
            + "; ".join(parts)
            + f"; val ppl {self.val_perplexity:.2f}; trained in {self.train_seconds:.0f} s"
            + (" (measurements loaded from the cache)" if self.from_cache else "")
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _tracked(canaries: list[Canary]) -> list[Canary]:
    """The first canary of each non-zero insertion count: tracked over training."""
    seen, out = set(), []
    for c in canaries:
        if c.insertions and c.insertions not in seen:
            seen.add(c.insertions)
            out.append(c)
    return out


@dataclass
class MemorizationData:
    """What a memorisation run trains on: the corpus ``splits``, the ``tokenizer``, the ``canaries`` and
    the training lines with the canaries ``inserted`` (with each canary's line positions)."""

    splits: CorpusSplits
    tokenizer: Any
    canaries: list[Canary]
    inserted: InsertedCorpus


def prepare_memorization(cfg: MemorizationConfig, seed: int = 0, tokenizer=None) -> MemorizationData:
    """Corpus splits, tokenizer, canaries and the training lines with canaries inserted."""
    splits = load_corpus(cfg.corpus, cfg.max_chars)
    tokenizer = tokenizer or make_byte_tokenizer()
    canaries = make_canaries(cfg.insertions, cfg.per_insertion, cfg.n_controls, cfg.space, seed=seed)
    inserted = insert_canaries(splits.train, canaries, seed=seed)
    return MemorizationData(splits, tokenizer, canaries, inserted)


def train_memorization_model(cfg: MemorizationConfig, seed: int = 0, device: str | None = None, cache_dir=None, progress: bool = True,
                             without: tuple[str, ...] = ()) -> TrainedModel:
    """Train (or load from the cache) the model of a memorisation run.
    Returns a :class:`~tutorial_lib.core.training.TrainedModel`. Notebook 03, "Training".

    ``without`` names canaries whose inserted lines are dropped from the training text, everything
    else (seed, budget, the other lines and their order) unchanged: the **retrained oracle** that
    unlearning is measured against (notebook 04). See :func:`train_retrained_model`."""
    device = resolve_device(device)
    pretrained = None
    if cfg.model.pretrained_path:
        pretrained = load_pretrained(cfg.model.pretrained_path, device=device)
    data = prepare_memorization(cfg, seed, pretrained[1] if pretrained else None)
    splits, tokenizer, canaries, inserted = data.splits, data.tokenizer, data.canaries, data.inserted
    names = {c.name for c in canaries}
    unknown = sorted(set(without) - names)
    if unknown:
        raise ValueError(f"unknown canary names {unknown}; this run has {sorted(names)}")
    run_config = {"kind": "memorization", "seed": seed, "data_sha256": corpus_sha256(cfg.corpus)[1], **cfg.to_dict()}
    run_config.pop("estimate_samples")  # evaluation setting only
    if cfg.model.pretrained_path:  # keyed by the weights, not the folder's path
        run_config["pretrained_sha256"] = pretrained_fingerprint(cfg.model.pretrained_path)
    if without:
        run_config["without"] = sorted(without)
    folder = cache_root(cache_dir) / f"memorization-{config_key(run_config)}"
    with key_lock(folder):  # a second process asking for this checkpoint waits, then loads it
        if (folder / "run.json").is_file():
            run = load_run(folder, run_config, device=device)
            return TrainedModel(run.model, run.tokenizer, run.record, True, canaries, splits)
        model = pretrained[0] if pretrained else make_model(cfg.model, len(tokenizer), seed=seed, device=device)
        train_lines = inserted.lines_without(*without)
        train_ids = tokenize_lines(tokenizer, train_lines)
        val_ids = tokenize_lines(tokenizer, splits.validation)
        tracked = [c for c in _tracked(canaries)] if cfg.track_exposure and not without else []
        trajectory: dict[str, list[list[float]]] = {c.name: [] for c in tracked}

        def on_eval(step, current):
            for c in tracked if step < cfg.train.steps else []:
                trajectory[c.name].append([step, compute_exposure(current, tokenizer, c, device=device, progress=progress).exposure])

        start = time.perf_counter()
        history = train_language_model(model, train_ids, val_ids, cfg.train, seed=seed, device=device, on_eval=on_eval, progress=progress)
        train_seconds = time.perf_counter() - start
        record = {"history": history.to_dict(), "trajectory": trajectory, "train_seconds": train_seconds, "train_lines": len(train_lines)}
        save_run(folder, model, tokenizer, run_config, record)
        return TrainedModel(model, tokenizer, record, False, canaries, splits)


def train_retrained_model(cfg: MemorizationConfig, without: tuple[str, ...], seed: int = 0, device: str | None = None, cache_dir=None,
                          progress: bool = True) -> TrainedModel:
    """The gold standard of unlearning: the same run retrained from scratch without the canaries
    named in ``without`` (same seed, same number of steps), cached like the original. Returns what
    :func:`train_memorization_model` returns. Notebook 04, "The retrained oracle"."""
    if not without:
        raise ValueError("name at least one canary to retrain without")
    return train_memorization_model(cfg, seed, device, cache_dir, progress, without=tuple(without))


def run_memorization(cfg: MemorizationConfig, seed: int = 0, device: str | None = None, cache_dir=None, progress: bool = True,
                     use_cache: bool = True) -> MemorizationResult:
    """Train (or load) the model, then measure exact exposure of every canary and control, the
    skew-normal estimate beside it, and validation / test perplexity. The measurements are cached
    like the studies (keyed by the run, the seed, the corpus file and the library's code), so a warm
    cache serves them at once, with the wall times of the run that measured them; ``from_cache`` says
    so. ``use_cache=False`` measures again (the model still comes from the model cache).
    Notebook 03, "The experiment"."""

    device = resolve_device(device)

    def compute() -> dict:
        run = train_memorization_model(cfg, seed, device, cache_dir, progress)
        model, tokenizer, canaries, splits, record = run.model, run.tokenizer, run.canaries, run.splits, run.record
        start = time.perf_counter()
        exposures, estimates = [], []
        for c in tqdm(canaries, desc="exposure", **progress_options(progress)):
            exposures.append(compute_exposure(model, tokenizer, c, device=device, progress=progress).to_dict())
            estimates.append(estimate_exposure(model, tokenizer, c, n_samples=cfg.estimate_samples, seed=seed, device=device).to_dict())
        exposure_seconds = time.perf_counter() - start
        trajectory = {name: list(points) for name, points in record["trajectory"].items()}
        for name in trajectory:  # the last point of every trajectory is the final exact exposure
            trajectory[name].append([cfg.train.steps, next(e["exposure"] for e in exposures if e["name"] == name)])
        block = cfg.train.block_size
        return MemorizationResult(
            config=cfg.to_dict(),
            seed=seed,
            canaries=[c.to_dict() for c in canaries],
            exposures=exposures,
            estimates=estimates,
            trajectory=trajectory,
            history=record["history"],
            val_perplexity=compute_perplexity(model, tokenize_lines(tokenizer, splits.validation), block, device=device),
            test_perplexity=compute_perplexity(model, tokenize_lines(tokenizer, splits.test), block, device=device),
            n_parameters=count_parameters(model),
            train_seconds=record["train_seconds"],
            exposure_seconds=exposure_seconds,
        ).to_dict()

    key = {"run": cfg.to_dict(), "seed": seed, "data_sha256": corpus_sha256(cfg.corpus)[1]}
    data, cached = cached_result("memorization", key, compute, cache_dir=cache_dir, use_cache=use_cache)
    return MemorizationResult(**{**data, "from_cache": cached})
