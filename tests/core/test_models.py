from dataclasses import replace

import pytest

from tutorial_lib.core.models import ModelConfig, load_pretrained, make_model
from tutorial_lib.experiments.memorization import MemorizationConfig, run_memorization


def test_missing_pretrained_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")


def test_full_profile_path_runs_on_a_local_pretrained_model(tmp_path, byte_tokenizer):
    """The ``full`` profile's loader: any causal LM and its tokenizer from a local folder (safetensors)."""
    folder = tmp_path / "local-lm"
    model = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=3)
    model.save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    loaded, tokenizer = load_pretrained(folder)
    assert tokenizer("pin 42")["input_ids"] == byte_tokenizer("pin 42")["input_ids"]
    assert all((a == b).all() for a, b in zip(model.parameters(), loaded.parameters()))
    cfg = MemorizationConfig.for_profile("tiny")
    cfg = replace(cfg, model=replace(cfg.model, pretrained_path=str(folder)), train=replace(cfg.train, steps=50), track_exposure=False)
    result = run_memorization(cfg, seed=0, device="cpu", cache_dir=tmp_path / "cache", progress=False)
    assert result.n_parameters == sum(p.numel() for p in model.parameters())
    assert len(result.exposures) == len(cfg.insertions) + cfg.n_controls
