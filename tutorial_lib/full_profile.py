"""The ``full`` profile: the course's experiments with a pretrained causal LM from a local folder
(GPT-2-small class, ~124 M parameters) on one CUDA GPU. Notebook 10, "The full profile"; notebook 00
explains the profiles.

:func:`resolve_full_profile` checks the machine and the model folder *before* anything heavy runs
and returns a :class:`FullProfilePlan`: the model, the device, the precision of each part of the
work, the parameter subset the Fisher is built over (all parameters when their Fisher fits the
memory budget, otherwise the MLPs of the last blocks) and the experiment configs, built from the
``full`` defaults of :class:`~tutorial_lib.memorization.MemorizationConfig`,
:class:`~tutorial_lib.unlearning.FisherRemovalConfig` and
:class:`~tutorial_lib.unlearning.FisherForgettingConfig`. When the profile cannot run here (no GPU,
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

    python -m tutorial_lib.full_profile [--model-path P] [--device D] [--dtype auto|bfloat16|float32]
                                        [--structure S] [--fisher-params A,B] [--memory-gib G] [--check]
    python -m tutorial_lib.full_profile --save-random-model DIR

prints the plan (exit 0), or the reason the profile cannot run here (exit 2, no traceback).
``--check`` also loads the weights and runs one training-shaped forward and backward pass and one
Fisher Removal step over the plan's subset (exit 1 if anything is not finite).
``--save-random-model`` saves a randomly initialised GPT-2-small-shaped model and the byte tokenizer
(a stand-in on a machine without a downloaded model; ``scripts/gpu_check.sh`` uses it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .memorization import MemorizationConfig
    from .unlearning import FisherForgettingConfig, FisherRemovalConfig

MODEL_PATH_ENV = "TUTORIAL_MODEL_PATH"
#: Fisher structures both Fisher Removal and Fisher Forgetting accept.
FISHER_STRUCTURES = ("kfac", "woodbury", "diagonal")
#: Fine-tuning a pretrained model, not training one from scratch: these replace the ``full``
#: TrainConfig's steps, learning rate, warm-up and evaluation interval (batch 64, block 256 stay).
#: A starting point: not yet measured on a GPU, and not the result of a sweep.
FINE_TUNE = dict(steps=1000, lr=1e-4, warmup_steps=100, eval_every=250)
_TRAIN_BLOCK = 256  # the full profile's block; shorter when the model's context is
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_DTYPE_NAMES = {"auto": "auto", "bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32"}


class FullProfileError(RuntimeError):
    """The full profile cannot run here; the message names the problem and the fix."""


# ----------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class FullProfilePlan:
    """Everything the full profile runs with, resolved by :func:`resolve_full_profile`.

    ``compute_dtype`` is the autocast dtype of training and evaluation forward passes ("bfloat16"
    or "float32"); ``fisher_dtype`` (always "float32") that of the weights, the per-sample gradients,
    the Fisher and the Newton solve. ``fisher_params`` are the subset patterns given to
    :func:`~tutorial_lib.per_sample.select_parameters` (``None``: every parameter),
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
        ``compute_dtype`` is bfloat16, else a no-op. Call :func:`~tutorial_lib.unlearning.unlearn`
        *outside* it: the Fisher and the Newton solve stay in float32."""
        import torch

        if self.compute_dtype == "bfloat16":
            return torch.autocast(device_type=_device_type(self.device), dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def cache_dir(self) -> Path | None:
        """Where models trained under bfloat16 autocast are cached: a folder of their own inside the
        cache root, because the cache key records the run config, not the autocast dtype. ``None``
        (the default cache) for float32."""
        from .cache import cache_root

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


# ----------------------------------------------------------------------------------- memory
def estimate_fisher_memory(structure: str, dim: int, m: int, layers=(), element_size: int = 4) -> int:
    """Bytes one Fisher Removal step holds beyond the model: the structure itself
    (:func:`~tutorial_lib.fisher.estimate_memory`), the m × d per-sample gradient matrix it is built
    from (every structure but ``kfac``, which accumulates its factors batch by batch), and three
    d-vectors (the forget gradient Δ, the update and the weights before it). ``layers`` lists the
    (out, in) shapes of the K-FAC layers. Activations are not counted. Notebook 10, "Memory"."""
    from .fisher import estimate_memory

    if structure not in FISHER_STRUCTURES:
        raise ValueError(f"unknown Fisher structure {structure!r}; the full profile takes one of {', '.join(FISHER_STRUCTURES)}")
    if dim < 1 or m < 1:
        raise ValueError(f"dim and m must be >= 1, got dim={dim}, m={m}")
    gradients = 0 if structure == "kfac" else m * dim * element_size
    return estimate_memory(structure, dim, m, element_size=element_size, layers=layers) + gradients + 3 * dim * element_size


def kfac_layer_shapes(model, space) -> list[tuple[int, int]]:
    """(out, in) of every layer K-FAC gives Kronecker factors for (a ``Linear``/``Conv1D`` weight in
    ``space`` not shared with another module), as :meth:`~tutorial_lib.fisher.KFACFisher.from_model`
    decides; the rest of the subset gets a diagonal. Works on a model on the meta device."""
    from .per_sample import module_kind, owning_modules

    owners = owning_modules(model, space)
    uses = Counter(name for _, _, own in owners for name in own.values())
    shapes = []
    for _, mod, own in owners:
        kind = module_kind(mod)
        if kind in ("linear", "conv1d") and "weight" in own and all(uses[n] == 1 for n in own.values()):
            w = mod.weight
            shapes.append((w.shape[0], w.shape[1]) if kind == "linear" else (w.shape[1], w.shape[0]))
    return shapes


def unsupported_modules(model, space) -> list[str]:
    """Names of the modules holding a parameter of ``space`` whose per-sample gradients the library
    cannot compute by hooks (neither ``Linear``, ``Conv1D``, ``Embedding`` nor ``LayerNorm``: an
    RMSNorm, for instance); a Fisher over such a subset raises ``NotImplementedError``."""
    from .per_sample import module_kind, owning_modules

    return [name or type(mod).__name__ for name, mod, _ in owning_modules(model, space) if module_kind(mod) == "other"]


def _subset_memory(model, subset, structure: str, m: int):
    from .per_sample import select_parameters

    space = select_parameters(model, list(subset) if subset is not None else None)
    layers = kfac_layer_shapes(model, space) if structure == "kfac" else ()
    return space, estimate_fisher_memory(structure, space.dim, m, layers)


def _check_supported(model, space, what: str) -> None:
    bad = unsupported_modules(model, space)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise FullProfileError(f"the Fisher over {what} would need per-sample gradients of {shown}, which the library "
                               "cannot compute (only Linear, Conv1D, Embedding and LayerNorm parameters); choose another subset")


def block_mlp_names(model, n_layer: int) -> list[str]:
    """Module names of the MLP of every transformer block, first to last (``transformer.h.11.mlp``
    for GPT-2, ``model.layers.11.mlp`` for Llama-style models): the children named ``mlp`` of the
    ``ModuleList`` of ``n_layer`` blocks, or the whole blocks where they have none."""
    from torch import nn

    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) == n_layer]
    if not lists:
        raise FullProfileError(
            f"cannot find the {n_layer} transformer blocks of {type(model).__name__} (no ModuleList of that length); "
            "pass fisher_params with the parameter names to build the Fisher over"
        )
    prefix, blocks = lists[0]
    return [f"{prefix}.{i}.mlp" if hasattr(block, "mlp") else f"{prefix}.{i}" for i, block in enumerate(blocks)]


def choose_fisher_subset(model, n_layer: int, structure: str, m: int, budget: int, fisher_params=None):
    """The parameter subset the Fisher is built over: ``fisher_params`` if given ("all" or names for
    :func:`~tutorial_lib.per_sample.select_parameters`), else every parameter when their Fisher fits
    ``budget`` bytes (and every module holding one is supported, see :func:`unsupported_modules`),
    else the MLPs of the last k blocks for the largest k that fits. Returns
    ``(patterns or None, space, bytes needed, bytes for all parameters)``; raises
    :class:`FullProfileError` when nothing fits. Notebook 10, "Which parameters"."""
    gib = 2**30
    all_space, all_bytes = _subset_memory(model, None, structure, m)
    if fisher_params is not None:
        patterns = None if fisher_params == "all" else ((fisher_params,) if isinstance(fisher_params, str) else tuple(fisher_params))
        space, need = (all_space, all_bytes) if patterns is None else _subset_memory(model, patterns, structure, m)
        _check_supported(model, space, "all parameters" if patterns is None else ", ".join(patterns))
        if need > budget:
            raise FullProfileError(
                f"a {structure} Fisher (m = {m}) over {'all parameters' if patterns is None else ', '.join(patterns)} "
                f"({space.dim:,} parameters) needs about {need / gib:.3g} GiB, more than the budget of {budget / gib:.3g} GiB; "
                f"choose fewer parameters, {_cheaper(structure)}fewer Fisher samples, or a larger memory budget"
            )
        return patterns, space, need, all_bytes
    if all_bytes <= budget and not unsupported_modules(model, all_space):
        return None, all_space, all_bytes, all_bytes
    mlps = block_mlp_names(model, n_layer)
    for k in range(len(mlps), 0, -1):
        patterns = tuple(mlps[-k:])
        space, need = _subset_memory(model, patterns, structure, m)
        if need <= budget:
            _check_supported(model, space, ", ".join(patterns))
            return patterns, space, need, all_bytes
    raise FullProfileError(
        f"even the last block's MLP ({space.dim:,} parameters) needs about {need / gib:.3g} GiB for a {structure} Fisher "
        f"(m = {m}), more than the budget of {budget / gib:.3g} GiB; {_cheaper(structure)}fewer Fisher samples (n_fisher), "
        "or a larger memory budget"
    )


def _cheaper(structure: str) -> str:
    others = [s for s in ("kfac", "diagonal") if s != structure]
    return f"use structure {' or '.join(repr(s) for s in others)}, " if structure != "diagonal" else ""


# ----------------------------------------------------------------------------------- checks
def _device_type(device: str) -> str:
    return device.split(":", 1)[0]


def _check_device(device):
    """(device string, problem or None). Bad values raise ValueError."""
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "cuda", None
        return "cuda", ("the full profile needs a CUDA GPU; none found (torch.cuda.is_available() is False). "
                        "Use the small profile (TUTORIAL_PROFILE=small, or --profile small), or pass device='cpu' "
                        "(--device cpu) to run the full configs slowly on the CPU")
    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device; the full profile runs on 'cuda', 'cuda:N' or 'cpu'") from None
    if parsed.type not in ("cuda", "cpu"):
        raise ValueError(f"device {device!r}: the full profile runs on 'cuda', 'cuda:N' or 'cpu'")
    name = str(parsed)
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return name, (f"device {device!r} asks for a CUDA GPU; none found (torch.cuda.is_available() is False). "
                          "Use the small profile (TUTORIAL_PROFILE=small), or device='cpu' to run the full configs slowly on the CPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return name, f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
    return name, None


def _check_folder(model_path):
    """(resolved path, problem or None): a folder with config.json, safetensors weights and a tokenizer."""
    if model_path is None:
        model_path = os.environ.get(MODEL_PATH_ENV) or None
    if model_path is None:
        return None, (f"the full profile needs a pretrained model folder; none given (no model_path and ${MODEL_PATH_ENV} "
                      "is not set). Save a Hugging Face causal LM (e.g. GPT-2) with model.save_pretrained(folder) and "
                      f"tokenizer.save_pretrained(folder) on a connected machine, copy the folder here and set "
                      f"{MODEL_PATH_ENV}=/path/to/folder (or --model-path); or use the small profile")
    path = Path(model_path).expanduser()
    if not path.exists():
        return str(path), f"the model folder {str(path)!r} does not exist; set {MODEL_PATH_ENV} (or --model-path) to a folder saved with save_pretrained"
    if not path.is_dir():
        return str(path), f"the model path {str(path)!r} is a file, not a folder; point {MODEL_PATH_ENV} at the folder saved with save_pretrained"
    if not (path / "config.json").is_file():
        return str(path), f"{str(path)!r} holds no config.json, so it is not a Hugging Face model folder (save one with model.save_pretrained(folder))"
    if not list(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
        return str(path), (f"{str(path)!r} holds no *.safetensors weights" + (f" (found {', '.join(found)})" if found else "")
                           + "; the library loads safetensors only: re-save with model.save_pretrained(folder, safe_serialization=True)")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return str(path), (f"{str(path)!r} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save it beside the "
                           "weights with tokenizer.save_pretrained(folder)")
    return str(path), None


def _problem(problems: list[str]) -> FullProfileError:
    if len(problems) == 1:
        return FullProfileError(problems[0])
    return FullProfileError("the full profile cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))


def _weights_dtype(folder: Path) -> str:
    """The most common tensor dtype in the safetensors headers (read without loading any weight)."""
    counts: Counter = Counter()
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with open(file, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(size))
        except (OSError, struct.error, ValueError) as err:
            raise FullProfileError(f"cannot read the safetensors header of {str(file)!r}: {err}") from None
        for name, entry in header.items():
            if name != "__metadata__":
                counts[entry["dtype"]] += 1
    if not counts:
        raise FullProfileError(f"the safetensors files in {str(folder)!r} hold no tensors")
    code = counts.most_common(1)[0][0]
    return _SAFETENSORS_DTYPES.get(code, code.lower())


def _load_skeleton(path: str):
    """(config, model on the meta device, tokenizer): shapes and names, no weights loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001 -- transformers raises many types; the message matters
        raise FullProfileError(f"cannot read the model config in {path!r}: {type(err).__name__}: {err}") from None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # noqa: BLE001
        raise FullProfileError(
            f"{path!r} holds a {getattr(config, 'model_type', '?')!r} model that AutoModelForCausalLM cannot build "
            f"({type(err).__name__}: {err}); the full profile needs a causal language model"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise FullProfileError(f"cannot load the tokenizer in {path!r}: {type(err).__name__}: {err}") from None
    return config, model, tokenizer


def _resolve_dtype(dtype, device: str) -> str:
    import torch

    name = dtype if dtype is None else (str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else str(dtype).lower())
    if name is None:
        name = "auto"
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r}: the full profile takes 'auto', 'bfloat16' or 'float32' (float16 would need "
                         "loss scaling, which the training loop does not do)")
    name = _DTYPE_NAMES[name]
    if _device_type(device) == "cpu":
        return "float32" if name == "auto" else name
    bf16 = torch.cuda.is_bf16_supported()
    if name == "auto":
        return "bfloat16" if bf16 else "float32"
    if name == "bfloat16" and not bf16:
        raise FullProfileError(f"this GPU ({torch.cuda.get_device_name(device)}) does not support bfloat16; pass dtype='float32'")
    return name


def _default_budget(device: str, n_parameters: int) -> int:
    """80 % of the free memory on ``device`` less three float32 copies of the model (the model, the
    copy ``unlearn`` works on, and the retrained oracle or reference beside it)."""
    from .fisher import available_memory

    return int(0.8 * available_memory(device)) - 3 * 4 * n_parameters


# ----------------------------------------------------------------------------------- resolution
def resolve_full_profile(model_path=None, device=None, dtype=None, fisher_params=None, memory_bytes: int | None = None,
                         structure: str | None = None) -> FullProfilePlan:
    """Resolve the full profile on this machine, without loading any weight.

    ``model_path``: a folder saved with ``save_pretrained`` (config.json, safetensors, tokenizer), else
    ``$TUTORIAL_MODEL_PATH``. ``device``: default "cuda" (required); "cpu" runs the full configs slowly,
    for checking them. ``dtype``: "auto" (default: bfloat16 autocast for training and evaluation on a
    GPU that supports it, else float32), "bfloat16" or "float32"; the Fisher and the Newton solve are
    float32 regardless. ``fisher_params``: None (choose: every parameter if the Fisher fits, else the MLPs
    of the last blocks), "all", or names for :func:`~tutorial_lib.per_sample.select_parameters`.
    ``memory_bytes``: the Fisher's budget (default: 80 % of the device's free memory less three
    float32 copies of the model). ``structure``: kfac (default), woodbury or diagonal.

    Raises :class:`FullProfileError` when the profile cannot run here (every problem found is named,
    with its fix), ``ValueError`` for a bad argument value. Notebook 10, "The full profile"."""
    from .memorization import MemorizationConfig
    from .models import ModelConfig
    from .unlearning import FisherForgettingConfig, FisherRemovalConfig

    if memory_bytes is not None and not (isinstance(memory_bytes, int) and memory_bytes > 0):
        raise ValueError(f"memory_bytes must be a positive integer, got {memory_bytes!r}")
    removal = FisherRemovalConfig.for_profile("full")
    structure = removal.structure if structure is None else structure
    if structure not in FISHER_STRUCTURES:
        raise ValueError(f"unknown Fisher structure {structure!r}; the full profile takes one of {', '.join(FISHER_STRUCTURES)}")
    if isinstance(fisher_params, (list, tuple)) and not fisher_params:
        raise ValueError("fisher_params is empty; pass None to choose, 'all', or parameter names")
    device, device_problem = _check_device(device)
    path, folder_problem = _check_folder(model_path)
    problems = [p for p in (device_problem, folder_problem) if p]
    if problems:
        raise _problem(problems)
    compute_dtype = _resolve_dtype(dtype, device)
    config, skeleton, tokenizer = _load_skeleton(path)
    from .models import count_parameters
    from .per_sample import select_parameters

    n_parameters = count_parameters(skeleton)
    vocab_size = skeleton.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise FullProfileError(f"the tokenizer in {path!r} has {len(tokenizer):,} tokens but the model's embedding has "
                               f"{vocab_size:,}: they do not belong together")
    n_layer = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0))
    n_positions = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or _TRAIN_BLOCK)
    budget = _default_budget(device, n_parameters) if memory_bytes is None else memory_bytes
    if budget <= 0:
        raise FullProfileError(f"{device} has too little free memory for three float32 copies of the {n_parameters:,}-parameter "
                               "model; free memory on the device or pass a smaller model")
    m = removal.n_fisher
    patterns, space, need, all_need = choose_fisher_subset(skeleton, n_layer, structure, m, budget, fisher_params)

    import torch

    device_name = torch.cuda.get_device_name(device) if _device_type(device) == "cuda" else "CPU"
    weights_dtype = _weights_dtype(Path(path))
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
    if _device_type(device) == "cpu":
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
    import torch

    from .canaries import make_canaries
    from .data import load_corpus
    from .evaluation import tokenize_lines
    from .models import load_pretrained
    from .unlearning import canary_forget_items, unlearn

    cuda = _device_type(plan.device) == "cuda"
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
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from .tokenization import make_byte_tokenizer

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
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python -m tutorial_lib.full_profile``: print the plan (0), the reason it cannot run (2), or
    with ``--check`` also the check's numbers (1 if anything is not finite)."""
    parser = argparse.ArgumentParser(prog="python -m tutorial_lib.full_profile", description=__doc__.splitlines()[0])
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
