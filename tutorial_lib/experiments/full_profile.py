"""The ``full`` profile: the course's experiments with a pretrained causal LM from a local folder
(GPT-2-small class, ~124 M parameters) on one CUDA GPU. Notebook 10, "The full profile"; notebook 00
explains the profiles.

:func:`resolve_full_profile` checks the machine and the model folder *before* anything heavy runs
and returns a :class:`FullProfilePlan`: the model, the device, the precision of each part of the
work, the parameter subset the Fisher is built over (all parameters when their Fisher fits the
memory budget, otherwise the MLPs of the last blocks) and the experiment configs, built from the
``full`` defaults of :class:`~tutorial_lib.experiments.memorization.MemorizationConfig`,
:class:`~tutorial_lib.unlearning.fisher_methods.FisherRemovalConfig` and
:class:`~tutorial_lib.unlearning.fisher_methods.FisherForgettingConfig`. When the profile cannot run here (no GPU,
no model folder, a folder without weights or tokenizer, a budget too small for any Fisher) it raises
:class:`FullProfileError` whose message names the problem and the fix; bad argument values raise
``ValueError`` naming the value.

Precision. Weights stay in float32 everywhere. Training and evaluation forward passes run under
``torch.autocast`` in bfloat16 where the GPU supports it (:meth:`FullProfilePlan.autocast`); the
per-sample gradients, the Fisher (K-FAC factors and their eigendecompositions) and the Newton solve
run in float32, outside autocast. The reason is the size of the step: Fisher Removal adds
η/(n−k) · F̂⁻¹Δ with a step scale η/(n−k) near 2e-7 at the defaults (notebook 04), while a bfloat16
number is only resolved to 2⁻⁸ ≈ 0.4 % of its value, so most of a small Newton step added to
bfloat16 weights would round away. float16 is not offered: the training loop has no loss scaling.

    python -m tutorial_lib.experiments.full_profile [--model-path P] [--device D] [--dtype auto|bfloat16|float32]
                                        [--structure S] [--fisher-params A,B] [--memory-gib G] [--check]
    python -m tutorial_lib.experiments.full_profile --save-random-model DIR

prints the plan (exit 0), or the reason the profile cannot run here (exit 2, no traceback).
``--check`` also loads the weights and runs one training-shaped forward and backward pass and one
Fisher Removal step over the plan's subset (exit 1 if anything is not finite).
``--save-random-model`` saves a randomly initialised GPT-2-small-shaped model and the byte tokenizer
(a stand-in on a machine without a downloaded model; ``scripts/gpu_check.sh`` uses it).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..core.cache import cache_root
from ..core.canaries import make_canaries
from ..core.data import load_corpus
from ..core.evaluation import tokenize_lines
from ..core.models import ModelConfig, count_parameters, load_pretrained, transformers_bars_off
from ..core.tokenization import make_byte_tokenizer
from ..curvature.per_sample import select_parameters
from ..unlearning.api import unlearn
from ..unlearning.base import canary_forget_items
from ..unlearning.fisher_methods import FisherForgettingConfig, FisherRemovalConfig
from .full_profile_checks import (
    FISHER_STRUCTURES,
    MODEL_PATH_ENV,
    FullProfileError,
    check_device,
    check_folder,
    choose_fisher_subset,
    default_budget,
    device_type,
    load_skeleton,
    profile_problem,
    resolve_dtype,
    stored_weights_dtype,
    unsupported_modules,
)
from .memorization import MemorizationConfig

#: Fine-tuning a pretrained model, not training one from scratch: these replace the ``full``
#: TrainConfig's steps, learning rate, warm-up and evaluation interval (batch 64, block 256 stay).
#: A starting point: not yet measured on a GPU, and not the result of a sweep.
FINE_TUNE = dict(steps=1000, lr=1e-4, warmup_steps=100, eval_every=250)


_TRAIN_BLOCK = 256  # the full profile's block; shorter when the model's context is










# ----------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class FullProfilePlan:
    """Everything the full profile runs with, resolved by :func:`resolve_full_profile`.

    ``compute_dtype`` is the autocast dtype of training and evaluation forward passes ("bfloat16"
    or "float32"); ``fisher_dtype`` (always "float32") that of the weights, the per-sample gradients,
    the Fisher and the Newton solve. ``fisher_params`` are the subset patterns given to
    :func:`~tutorial_lib.curvature.per_sample.select_parameters` (``None``: every parameter),
    ``fisher_tensors`` the parameter tensors they select and ``fisher_dim`` their size.
    ``fisher_memory_bytes`` is :func:`estimate_fisher_memory` for that subset, ``full_fisher_memory_bytes``
    the same for every parameter, ``memory_budget_bytes`` what the Fisher may use. Notebook 10."""

    model_path: str
    model_type: str
    architecture: str
    n_parameters: int
    n_layer: int
    n_positions: int
    vocab_size: int
    weights_dtype: str
    device: str
    device_name: str
    compute_dtype: str
    fisher_structure: str
    fisher_m: int
    fisher_params: tuple[str, ...] | None
    fisher_tensors: tuple[str, ...]
    fisher_dim: int
    fisher_memory_bytes: int
    full_fisher_memory_bytes: int
    memory_budget_bytes: int
    memorization: MemorizationConfig
    removal: FisherRemovalConfig
    forgetting: FisherForgettingConfig
    fisher_dtype: str = "float32"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def autocast(self):
        """The context for training and evaluation: ``torch.autocast`` in bfloat16 when
        ``compute_dtype`` is bfloat16, else a no-op. Call :func:`~tutorial_lib.unlearning.api.unlearn`
        *outside* it: the Fisher and the Newton solve stay in float32."""

        if self.compute_dtype == "bfloat16":
            return torch.autocast(device_type=device_type(self.device), dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def cache_dir(self) -> Path | None:
        """Where models trained under bfloat16 autocast are cached: a folder of their own inside the
        cache root, because the cache key records the run config, not the autocast dtype. ``None``
        (the default cache) for float32."""

        return None if self.compute_dtype == "float32" else cache_root() / f"autocast-{self.compute_dtype}"

    def summary(self) -> str:
        gib = 2**30
        train = self.memorization.train
        subset = "all parameters" if self.fisher_params is None else ", ".join(self.fisher_params)
        precision = ("training and evaluation under bfloat16 autocast" if self.compute_dtype == "bfloat16"
                     else "training and evaluation in float32")
        lines = [
            "full profile plan",
            f"  model       {self.model_path}",
            f"              {self.architecture} ({self.model_type}): {self.n_parameters:,} parameters, {self.n_layer} blocks, "
            f"context {self.n_positions}, vocabulary {self.vocab_size:,}, weights stored as {self.weights_dtype}",
            f"  device      {self.device} ({self.device_name})",
            f"  precision   {precision}; weights, per-sample gradients, Fisher and Newton solve in {self.fisher_dtype}",
            f"  fisher      {self.fisher_structure}, m = {self.fisher_m}: {subset}",
            f"              {len(self.fisher_tensors)} tensors, {self.fisher_dim:,} parameters; needs about "
            f"{self.fisher_memory_bytes / gib:.3g} GiB of a {self.memory_budget_bytes / gib:.3g} GiB budget "
            f"(all parameters: {self.full_fisher_memory_bytes / gib:.3g} GiB)",
            f"  training    {train.steps} steps of {train.batch_size} x {train.block_size} tokens, lr {train.lr:g}, "
            f"corpus {self.memorization.corpus}, secrets of {self.memorization.secret_length} digits",
            f"  removal     eta {self.removal.eta:g}, damping {self.removal.damping:g}, {self.removal.repeats} repeats",
            f"  forgetting  {self.forgetting.variant}, mu {self.forgetting.mu:g}, exponent {self.forgetting.exponent:g}",
        ]
        lines += [f"  note        {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["memorization"] = self.memorization.to_dict()
        return out


# ----------------------------------------------------------------------------------- resolution
def resolve_full_profile(model_path=None, device=None, dtype=None, fisher_params=None, memory_bytes: int | None = None,
                         structure: str | None = None) -> FullProfilePlan:
    """Resolve the full profile on this machine, without loading any weight.

    ``model_path``: a folder saved with ``save_pretrained`` (config.json, safetensors, tokenizer), else
    ``$TUTORIAL_MODEL_PATH``. ``device``: default "cuda" (required); "cpu" runs the full configs slowly,
    for checking them. ``dtype``: "auto" (default: bfloat16 autocast for training and evaluation on a
    GPU that supports it, else float32), "bfloat16" or "float32"; the Fisher and the Newton solve are
    float32 regardless. ``fisher_params``: None (choose: every parameter if the Fisher fits, else the MLPs
    of the last blocks), "all", or names for :func:`~tutorial_lib.curvature.per_sample.select_parameters`.
    ``memory_bytes``: the Fisher's budget (default: 80 % of the device's free memory less three
    float32 copies of the model). ``structure``: kfac (default), woodbury or diagonal.

    Raises :class:`FullProfileError` when the profile cannot run here (every problem found is named,
    with its fix), ``ValueError`` for a bad argument value. Notebook 10, "The full profile"."""

    if memory_bytes is not None and not (isinstance(memory_bytes, int) and memory_bytes > 0):
        raise ValueError(f"memory_bytes must be a positive integer, got {memory_bytes!r}")
    removal = FisherRemovalConfig.for_profile("full")
    structure = removal.structure if structure is None else structure
    if structure not in FISHER_STRUCTURES:
        raise ValueError(f"unknown Fisher structure {structure!r}; the full profile takes one of {', '.join(FISHER_STRUCTURES)}")
    if isinstance(fisher_params, (list, tuple)) and not fisher_params:
        raise ValueError("fisher_params is empty; pass None to choose, 'all', or parameter names")
    device, device_problem = check_device(device)
    path, folder_problem = check_folder(model_path)
    problems = [p for p in (device_problem, folder_problem) if p]
    if problems:
        raise profile_problem(problems)
    compute_dtype = resolve_dtype(dtype, device)
    loaded = load_skeleton(path)
    config, skeleton, tokenizer = loaded.config, loaded.model, loaded.tokenizer

    n_parameters = count_parameters(skeleton)
    vocab_size = skeleton.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise FullProfileError(f"the tokenizer in {path!r} has {len(tokenizer):,} tokens but the model's embedding has "
                               f"{vocab_size:,}: they do not belong together")
    n_layer = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0))
    n_positions = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or _TRAIN_BLOCK)
    budget = default_budget(device, n_parameters) if memory_bytes is None else memory_bytes
    if budget <= 0:
        raise FullProfileError(f"{device} has too little free memory for three float32 copies of the {n_parameters:,}-parameter "
                               "model; free memory on the device or pass a smaller model")
    m = removal.n_fisher
    subset = choose_fisher_subset(skeleton, n_layer, structure, m, budget, fisher_params)
    patterns, space, need, all_need = subset.patterns, subset.space, subset.need, subset.all_bytes


    device_name = torch.cuda.get_device_name(device) if device_type(device) == "cuda" else "CPU"
    weights_dtype = stored_weights_dtype(Path(path))
    mem = MemorizationConfig.for_profile("full")
    model_cfg = replace(ModelConfig.for_profile("full"), pretrained_path=path, n_layer=n_layer,
                        n_embd=int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", mem.model.n_embd)),
                        n_head=int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", mem.model.n_head)),
                        n_positions=n_positions)
    train = replace(mem.train, block_size=min(mem.train.block_size, n_positions), **FINE_TUNE)
    memorization = replace(mem, model=model_cfg, train=train)
    removal = replace(removal, structure=structure, params=patterns)
    forgetting = FisherForgettingConfig.for_profile("full", structure=structure, params=patterns)

    notes = []
    if device_type(device) == "cpu":
        notes.append("device 'cpu': the full configs run, slowly (hours for training); meant for checking them")
    if patterns is not None and fisher_params is None:
        why = (f"would need about {all_need / 2**30:.3g} GiB, more than the budget" if all_need > budget else
               f"would need per-sample gradients of unsupported modules ({unsupported_modules(skeleton, select_parameters(skeleton))[0]}, ...)")
        notes.append(f"the Fisher over all {n_parameters:,} parameters {why}: it is built over the MLPs of the last "
                     f"{len(patterns)} of {n_layer} blocks")
    if weights_dtype != "float32":
        notes.append(f"the checkpoint stores {weights_dtype} weights, and load_pretrained keeps the stored dtype: training and "
                     "the Newton step would run on them in that precision; load the model in float32 (see notebook 10)")
    return FullProfilePlan(
        model_path=path, model_type=str(getattr(config, "model_type", "?")), architecture=type(skeleton).__name__,
        n_parameters=n_parameters, n_layer=n_layer, n_positions=n_positions, vocab_size=vocab_size,
        weights_dtype=weights_dtype, device=device, device_name=device_name, compute_dtype=compute_dtype,
        fisher_structure=structure, fisher_m=m, fisher_params=patterns, fisher_tensors=tuple(space.names),
        fisher_dim=space.dim, fisher_memory_bytes=need, full_fisher_memory_bytes=all_need, memory_budget_bytes=budget,
        memorization=memorization, removal=removal, forgetting=forgetting, notes=tuple(notes),
    )


# ----------------------------------------------------------------------------------- running
def check_full_profile(plan: FullProfilePlan, seed: int = 0, max_chars: int = 50_000) -> dict:
    """Load the plan's model in float32 on its device and run, on the plan's corpus, one
    training-shaped forward and backward pass under :meth:`FullProfilePlan.autocast` (no optimiser
    step) and one Fisher Removal step over the plan's Fisher subset (float32) for a canary line,
    with the first ``max_chars`` characters of the corpus as training and retain text. Returns the
    loss, seconds, update norm, the updated tensors, peak GPU memory and ``finite``. Notebook 10, "A first check"."""


    cuda = device_type(plan.device) == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(plan.device)
    start = time.perf_counter()
    model, tokenizer = load_pretrained(plan.model_path, device=plan.device, dtype=torch.float32)
    load_seconds = time.perf_counter() - start
    train = plan.memorization.train
    splits = load_corpus(plan.memorization.corpus, max_chars=max_chars)
    ids = tokenize_lines(tokenizer, splits.train)
    need = train.block_size + 1
    if len(ids) <= need:
        raise FullProfileError(f"the corpus slice has {len(ids)} tokens, fewer than a block of {need}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - need, (train.batch_size,), generator=gen)
    batch = ids[starts[:, None] + torch.arange(need)].to(plan.device)
    model.train()
    start = time.perf_counter()
    with plan.autocast():
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
    loss.backward()
    loss = float(loss.detach())
    grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(plan.device)
    step_seconds = time.perf_counter() - start
    model.eval()
    canary = make_canaries((10,), 1, 0, plan.memorization.space, seed=seed)[0]
    forget = canary_forget_items(canary)
    cfg = replace(plan.removal, repeats=1)
    new, report = unlearn(model, tokenizer, forget, splits.train, "fisher_removal", cfg,
                          n_train=len(splits.train) + len(forget), seed=seed)
    if cuda:
        torch.cuda.synchronize(plan.device)
    weights_float32 = all(p.dtype == torch.float32 for p in new.parameters())
    out = {
        "load_seconds": load_seconds,
        "loss": loss,
        "train_step_seconds": step_seconds,
        "removal_seconds": report.seconds,
        "update_norm": report.update_norm,
        "updated": report.updated,
        "n_updated": report.n_parameters,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(plan.device)) if cuda else None,
        "weights_float32": weights_float32,
    }
    out["finite"] = math.isfinite(loss) and grads_finite and math.isfinite(report.update_norm)
    return out


def save_random_model(folder, n_layer: int = 12, n_embd: int = 768, n_head: int = 12, n_positions: int = 1024,
                      vocab_size: int = 50257, seed: int = 0) -> Path:
    """Save a randomly initialised GPT-2 (default: GPT-2-small-shaped, 124 M parameters) and the
    library's byte tokenizer into ``folder`` with ``save_pretrained``: a stand-in for a downloaded
    model, to check the full profile's path on a machine that has none. Notebook 10."""
    from transformers import GPT2Config, GPT2LMHeadModel


    tokenizer = make_byte_tokenizer()
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size must be at least the byte tokenizer's {len(tokenizer)} tokens, got {vocab_size}")
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=eos, eos_token_id=eos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python -m tutorial_lib.experiments.full_profile``: print the plan (0), the reason it cannot run (2), or
    with ``--check`` also the check's numbers (1 if anything is not finite)."""
    parser = argparse.ArgumentParser(prog="python -m tutorial_lib.experiments.full_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help=f"model folder (default: ${MODEL_PATH_ENV})")
    parser.add_argument("--device", default=None, help="cuda (default), cuda:N, or cpu (slow, for checking the configs)")
    parser.add_argument("--dtype", default=None, help="auto (default), bfloat16 or float32: training and evaluation precision")
    parser.add_argument("--structure", default=None, help=f"Fisher structure: {', '.join(FISHER_STRUCTURES)} (default kfac)")
    parser.add_argument("--fisher-params", default=None, help="comma-separated parameter names, or 'all' (default: choose)")
    parser.add_argument("--memory-gib", type=float, default=None, help="the Fisher's memory budget in GiB (default: from the device)")
    parser.add_argument("--check", action="store_true", help="also load the weights and run one training pass and one Fisher Removal step")
    parser.add_argument("--save-random-model", metavar="DIR", default=None,
                        help="save a randomly initialised GPT-2-small-shaped model and the byte tokenizer into DIR, then exit")
    args = parser.parse_args(argv)
    if args.save_random_model:
        folder = save_random_model(args.save_random_model)
        print(f"saved a randomly initialised GPT-2-small-shaped model and the byte tokenizer into {folder}")
        return 0
    params = args.fisher_params
    if params is not None and params != "all":
        params = tuple(p.strip() for p in params.split(",") if p.strip())
    memory = None if args.memory_gib is None else int(args.memory_gib * 2**30)
    try:
        plan = resolve_full_profile(args.model_path, args.device, args.dtype, params, memory, args.structure)
    except (FullProfileError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    print(plan.summary())
    if not args.check:
        return 0
    result = check_full_profile(plan)
    peak = result["peak_memory_bytes"]
    print(f"check: weights loaded in {result['load_seconds']:.1f} s; training-shaped pass: loss {result['loss']:.3f} in "
          f"{result['train_step_seconds']:.2f} s; Fisher Removal step over {result['n_updated']:,} parameters: update norm "
          f"{result['update_norm']:.3g} in {result['removal_seconds']:.2f} s"
          + (f"; peak GPU memory {peak / 2**30:.2f} GiB" if peak is not None else ""))
    if not result["finite"]:
        print("check failed: a loss, gradient or update is not finite", file=sys.stderr)
        return 1
    print("check passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
