"""GPT-2 models built from a config (tiny / small / full) and pretrained causal LMs from a local path.

Used by notebook 03 and every later notebook that trains or loads a model.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
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
    with transformers_bars_off():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32 if dtype is None else dtype,
                                                     use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(device), tokenizer


def count_parameters(model) -> int:
    """Number of distinct trainable parameters (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
