"""The checks behind the ``full`` profile's plan (:mod:`tutorial_lib.experiments.full_profile`), made
before anything heavy runs: the memory one Fisher Removal step needs (:func:`estimate_fisher_memory`,
:func:`kfac_layer_shapes`), the parameter subset the Fisher is built over under a memory budget
(:func:`choose_fisher_subset`: all parameters when they fit, else the MLPs of the last blocks), the
device (:func:`check_device`), the local model folder (config.json, safetensors weights, tokenizer:
:func:`check_folder`), the stored and the chosen precision (:func:`stored_weights_dtype`,
:func:`resolve_dtype`) and a skeleton of the model on the meta device (:func:`load_skeleton`). A plan
that cannot run here raises :class:`FullProfileError`, naming the problem and the fix.

Notebook 10, section 5 ("Scaling up: the ``full`` profile").
"""
from __future__ import annotations

import json
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..curvature.memory import available_memory, estimate_memory
from ..curvature.per_sample import module_kind, owning_modules, select_parameters

MODEL_PATH_ENV = "TUTORIAL_MODEL_PATH"


#: Fisher structures both Fisher Removal and Fisher Forgetting accept.
FISHER_STRUCTURES = ("kfac", "woodbury", "diagonal")


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


_DTYPE_NAMES = {"auto": "auto", "bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32"}


class FullProfileError(RuntimeError):
    """The full profile cannot run here; the message names the problem and the fix."""


# ----------------------------------------------------------------------------------- memory
def estimate_fisher_memory(structure: str, dim: int, m: int, layers=(), element_size: int = 4) -> int:
    """Bytes one Fisher Removal step holds beyond the model: the structure itself
    (:func:`~tutorial_lib.curvature.memory.estimate_memory`), the m × d per-sample gradient matrix it is built
    from (every structure but ``kfac``, which accumulates its factors batch by batch), and three
    d-vectors (the forget gradient Δ, the update and the weights before it). ``layers`` lists the
    (out, in) shapes of the K-FAC layers. Activations are not counted. Notebook 10, "Memory"."""

    if structure not in FISHER_STRUCTURES:
        raise ValueError(f"unknown Fisher structure {structure!r}; the full profile takes one of {', '.join(FISHER_STRUCTURES)}")
    if dim < 1 or m < 1:
        raise ValueError(f"dim and m must be >= 1, got dim={dim}, m={m}")
    gradients = 0 if structure == "kfac" else m * dim * element_size
    return estimate_memory(structure, dim, m, element_size=element_size, layers=layers) + gradients + 3 * dim * element_size


def kfac_layer_shapes(model, space) -> list[tuple[int, int]]:
    """(out, in) of every layer K-FAC gives Kronecker factors for (a ``Linear``/``Conv1D`` weight in
    ``space`` not shared with another module), as :meth:`~tutorial_lib.curvature.kfac.KFACFisher.from_model`
    decides; the rest of the subset gets a diagonal. Works on a model on the meta device."""

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
    cannot compute by hooks (none of ``Linear``, ``Conv1D``, ``Embedding``, ``LayerNorm`` or an RMS norm,
    or one of those with a changed forward, like Gemma's scaled embedding); a Fisher over such a subset
    raises ``NotImplementedError``."""

    return [name or type(mod).__name__ for name, mod, _ in owning_modules(model, space) if module_kind(mod) == "other"]


def _subset_memory(model, subset, structure: str, m: int):
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

    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) == n_layer]
    if not lists:
        raise FullProfileError(
            f"cannot find the {n_layer} transformer blocks of {type(model).__name__} (no ModuleList of that length); "
            "pass fisher_params with the parameter names to build the Fisher over"
        )
    prefix, blocks = lists[0]
    return [f"{prefix}.{i}.mlp" if hasattr(block, "mlp") else f"{prefix}.{i}" for i, block in enumerate(blocks)]


@dataclass
class FisherSubset:
    """The parameters a Fisher is built over: name ``patterns`` (None: all), the selected ``space``,
    the estimated bytes it ``needs`` and the bytes all parameters would need (``all_bytes``)."""

    patterns: list | None
    space: Any
    need: int
    all_bytes: int


def choose_fisher_subset(model, n_layer: int, structure: str, m: int, budget: int, fisher_params=None) -> FisherSubset:
    """The parameter subset the Fisher is built over: ``fisher_params`` if given ("all" or names for
    :func:`~tutorial_lib.curvature.per_sample.select_parameters`), else every parameter when their Fisher fits
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
        return FisherSubset(patterns, space, need, all_bytes)
    if all_bytes <= budget and not unsupported_modules(model, all_space):
        return FisherSubset(None, all_space, all_bytes, all_bytes)
    mlps = block_mlp_names(model, n_layer)
    for k in range(len(mlps), 0, -1):
        patterns = tuple(mlps[-k:])
        space, need = _subset_memory(model, patterns, structure, m)
        if need <= budget:
            _check_supported(model, space, ", ".join(patterns))
            return FisherSubset(patterns, space, need, all_bytes)
    raise FullProfileError(
        f"even the last block's MLP ({space.dim:,} parameters) needs about {need / gib:.3g} GiB for a {structure} Fisher "
        f"(m = {m}), more than the budget of {budget / gib:.3g} GiB; {_cheaper(structure)}fewer Fisher samples (n_fisher), "
        "or a larger memory budget"
    )


def _cheaper(structure: str) -> str:
    others = [s for s in ("kfac", "diagonal") if s != structure]
    return f"use structure {' or '.join(repr(s) for s in others)}, " if structure != "diagonal" else ""


# ----------------------------------------------------------------------------------- checks
def device_type(device: str) -> str:
    return device.split(":", 1)[0]


def check_device(device):
    """(device string, problem or None). Bad values raise ValueError."""

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


def check_folder(model_path):
    """(resolved path, problem or None): a folder with config.json, safetensors weights and a tokenizer. Without
    ``model_path`` and ``$TUTORIAL_MODEL_PATH``: SmolLM2-135M (:func:`~tutorial_lib.core.smollm2.smollm2_path`,
    obtained on first use)."""
    if model_path is None:
        model_path = os.environ.get(MODEL_PATH_ENV) or None
    if model_path is None:
        from ..core.smollm2 import PretrainedModelError, smollm2_path

        try:
            model_path = smollm2_path(progress=False)
        except PretrainedModelError as err:
            return None, (f"no model_path and ${MODEL_PATH_ENV} is not set, and the default model could not be obtained: {err}. "
                          f"Set {MODEL_PATH_ENV}=/path/to/folder (or --model-path) to a folder saved with save_pretrained, "
                          "or use the small profile")
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


def profile_problem(problems: list[str]) -> FullProfileError:
    if len(problems) == 1:
        return FullProfileError(problems[0])
    return FullProfileError("the full profile cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))


def stored_weights_dtype(folder: Path) -> str:
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


@dataclass
class Skeleton:
    """A model folder read without its weights: the HF ``config``, a ``model`` on the meta device and
    the ``tokenizer``."""

    config: Any
    model: Any
    tokenizer: Any


def load_skeleton(path: str) -> Skeleton:
    """(config, model on the meta device, tokenizer): shapes and names, no weights loaded."""
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
    return Skeleton(config, model, tokenizer)


def resolve_dtype(dtype, device: str) -> str:
    name = dtype if dtype is None else (str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else str(dtype).lower())
    if name is None:
        name = "auto"
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r}: the full profile takes 'auto', 'bfloat16' or 'float32' (float16 would need "
                         "loss scaling, which the training loop does not do)")
    name = _DTYPE_NAMES[name]
    if device_type(device) == "cpu":
        return "float32" if name == "auto" else name
    bf16 = torch.cuda.is_bf16_supported()
    if name == "auto":
        return "bfloat16" if bf16 else "float32"
    if name == "bfloat16" and not bf16:
        raise FullProfileError(f"this GPU ({torch.cuda.get_device_name(device)}) does not support bfloat16; pass dtype='float32'")
    return name


def default_budget(device: str, n_parameters: int) -> int:
    """80 % of the free memory on ``device`` less three float32 copies of the model (the model, the
    copy ``unlearn`` works on, and the retrained oracle or reference beside it)."""

    return int(0.8 * available_memory(device)) - 3 * 4 * n_parameters
