"""GPT-2 models built from a config (tiny / small / full) and pretrained causal LMs from a local path.

Used by notebook 03 and every later notebook that trains or loads a model.
"""
from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .profiles import config_for_profile, resolve_profile


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a GPT-2 trained from scratch, or ``pretrained_path`` to load any causal LM instead."""

    n_layer: int = 4
    n_embd: int = 96
    n_head: int = 4
    n_positions: int = 128
    pretrained_path: str | None = None

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64},
        "small": {"n_layer": 4, "n_embd": 96, "n_head": 4, "n_positions": 128},
        "full": {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_positions": 256},
    }

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "ModelConfig":
        """The profile's row of ``PROFILE_DEFAULTS``, then ``overrides``; ``full`` loads the
        pretrained model at ``$TUTORIAL_MODEL_PATH`` when it is set."""
        profile = resolve_profile(profile)
        computed = {"pretrained_path": os.environ.get("TUTORIAL_MODEL_PATH")} if profile == "full" else {}
        return config_for_profile(cls, profile, overrides, **computed)

    def to_dict(self) -> dict:
        return asdict(self)


def make_model(cfg: ModelConfig, vocab_size: int, seed: int = 0, device: str = "cpu", dtype=torch.float32):
    """A freshly initialised ``GPT2LMHeadModel`` (no dropout, tied LM head), seeded.
    Notebook 03, "A small GPT-2"."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
        tie_word_embeddings=True,
        activation_function="gelu",  # exact GELU: one fused op, ~20 % faster on CPU than the tanh form
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.to(device=device, dtype=dtype)


@contextmanager
def transformers_bars_off():
    """Turn off transformers' own progress bars ("Loading weights", "Writing model shards") inside the
    ``with`` block and restore their previous state after it. The library wraps its ``from_pretrained``
    and ``save_pretrained`` calls in it: the course's models load and save in a fraction of a second,
    so the bars would only be noise."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hub_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # transformers' bars, and huggingface_hub's with them
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        if hub_disabled:
            disable_progress_bars()


def load_pretrained(path: str | os.PathLike, device: str = "cpu", dtype=None):
    """Load any ``AutoModelForCausalLM`` and its tokenizer from a local folder (the ``full`` profile).
    Nothing is downloaded: the folder must hold the weights (safetensors) and the tokenizer. ``dtype``
    None loads float32, not the checkpoint's stored dtype (the Newton step needs float32 weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"pretrained model folder not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} holds no config.json: give a folder written by save_pretrained "
                                "(config, safetensors weights and the tokenizer)")
    with transformers_bars_off():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32 if dtype is None else dtype,
                                                     use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    check_causal_lm(model, f"the model in {path}")
    return model.to(device), tokenizer


def max_positions(model) -> int | None:
    """The longest sequence ``model`` takes (its config's ``n_positions`` or ``max_position_embeddings``), or None."""
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


_CAUSAL: "weakref.WeakSet" = weakref.WeakSet()  # models that passed check_causal_lm (causality is the architecture's)


@torch.no_grad()
def check_causal_lm(model, argument: str = "model") -> None:
    """Raise ``TypeError`` unless ``model`` is a causal language model: a transformers ``*ForCausalLM`` /
    ``*LMHeadModel`` class whose outputs at earlier positions do not change when a later token does
    (an encoder such as BERT loaded as ``BertLMHeadModel`` without ``is_decoder`` fails that probe)."""
    if model in _CAUSAL:
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    classes = [c.__name__ for c in type(model).__mro__]
    fix = "load it with AutoModelForCausalLM.from_pretrained(...) from a decoder-only checkpoint"
    if not any(name in causal or name.endswith(("ForCausalLM", "LMHeadModel")) for name in classes):
        raise TypeError(f"{argument}: a causal language model (a transformers *ForCausalLM) is needed, got {classes[0]}; {fix}")
    embeddings = model.get_input_embeddings()
    device = embeddings.weight.device
    ids = torch.randint(0, embeddings.num_embeddings, (1, 6), generator=torch.Generator().manual_seed(0)).to(device)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % embeddings.num_embeddings
    was_training = model.training
    model.eval()
    try:
        before, after = model(input_ids=ids).logits[0, :-1], model(input_ids=changed).logits[0, :-1]
    finally:
        model.train(was_training)
    # a causal model's earlier outputs do not move at all (the later key weighs exactly 0 after the mask); an
    # encoder's move by a fraction of their scale, which can be below any fixed atol for a small random model
    moved = float(torch.nan_to_num(before - after).abs().max())
    if moved > 1e-5 * float(torch.nan_to_num(before).abs().max()):
        raise TypeError(f"{argument}: {classes[0]} is not causal: its outputs at earlier positions change with a later token "
                        f"(an encoder, or a decoder without its causal mask); {fix}")
    _CAUSAL.add(model)


def pretrained_fingerprint(path: str | os.PathLike) -> str:
    """Short sha256 of a local pretrained model folder's contents (every file's name and bytes, sorted),
    so that a cache keyed by it notices new weights in the same folder; the folder's path plays no part."""
    import hashlib

    from .data import sha256_file

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"pretrained model folder not found: {folder}")
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(folder).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()[:16]


def count_parameters(model) -> int:
    """Number of distinct trainable parameters (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
