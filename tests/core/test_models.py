import functools
from dataclasses import replace

import pytest
import torch

from tutorial_lib.core.cache import load_run, save_run
from tutorial_lib.core.models import ModelConfig, load_pretrained, make_model, transformers_bars_off
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


@pytest.fixture()
def transformers_bars(monkeypatch):
    """transformers' own bars switched on and drawn even under TQDM_DISABLE=1 and
    HF_HUB_DISABLE_PROGRESS_BARS=1 (how CI runs); the previous state is put back afterwards."""
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from tqdm import std
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(sys.modules["huggingface_hub.utils.tqdm"], "HF_HUB_DISABLE_PROGRESS_BARS", None)  # read from the environment at import
    was_on, hub_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    monkeypatch.setattr(hf_logging.tqdm_lib, "tqdm", functools.partial(std.tqdm, disable=False))
    hf_logging.enable_progress_bar()
    yield hf_logging
    (hf_logging.enable_progress_bar if was_on else hf_logging.disable_progress_bar)()
    if hub_off:
        disable_progress_bars()


def test_saving_and_loading_a_cached_model_draws_no_progress_bar(tmp_path, byte_tokenizer, transformers_bars, capfd):
    model = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=0)
    model.save_pretrained(tmp_path / "plain")  # the control: transformers draws its bar
    assert "Writing model shards" in capfd.readouterr().err
    save_run(tmp_path / "run", model, byte_tokenizer, {"kind": "test"}, {})
    run = load_run(tmp_path / "run", {"kind": "test"})
    loaded, _ = load_pretrained(tmp_path / "run")
    printed = capfd.readouterr()
    assert "Writing model shards" not in printed.err and "Loading weights" not in printed.err and "%|" not in printed.err + printed.out
    assert all((a == b).all() and (a == c).all() for a, b, c in zip(model.parameters(), run.model.parameters(), loaded.parameters()))
    assert transformers_bars.is_progress_bar_enabled()  # switched back on afterwards


def test_transformers_bars_off_restores_the_previous_state(transformers_bars):
    with pytest.raises(RuntimeError):
        with transformers_bars_off():
            assert not transformers_bars.is_progress_bar_enabled()
            raise RuntimeError("inside")
    assert transformers_bars.is_progress_bar_enabled()
    transformers_bars.disable_progress_bar()
    with transformers_bars_off():
        pass
    assert not transformers_bars.is_progress_bar_enabled()  # off before, off after


def test_a_pretrained_model_is_cached_by_its_weights_not_its_folder(tmp_path, byte_tokenizer):
    """Refilling the same folder with other weights must not serve the model fine-tuned from the old ones."""
    from tutorial_lib.experiments.memorization import train_memorization_model

    folder = tmp_path / "local-lm"
    cfg = MemorizationConfig.for_profile("tiny")
    cfg = replace(cfg, model=replace(cfg.model, pretrained_path=str(folder)), train=replace(cfg.train, steps=5, eval_every=5),
                  track_exposure=False)
    runs = []
    for seed in (3, 3, 4):  # the same weights twice, then new weights in the same folder
        make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=seed).save_pretrained(folder)
        byte_tokenizer.save_pretrained(folder)
        runs.append(train_memorization_model(cfg, seed=0, device="cpu", cache_dir=tmp_path / "cache", progress=False))
    assert [r.from_cache for r in runs] == [False, True, False]
    assert not torch.equal(runs[0].model.lm_head.weight, runs[2].model.lm_head.weight)


def test_an_encoder_folder_is_refused_as_a_causal_lm(tmp_path, byte_tokenizer):
    """The full profile's loader: a BERT checkpoint loads as ``BertLMHeadModel`` through AutoModelForCausalLM,
    but sees later tokens; it is refused with the reason, before any training."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=len(byte_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    with pytest.raises(TypeError, match=r"the model in .*bert: BertLMHeadModel is not causal"):
        load_pretrained(folder)


def test_the_causality_probe_catches_every_small_random_encoder_and_passes_decoders():
    """A tiny random encoder's earlier outputs move by 1e-4 of their scale or less when a later token
    changes (below a fixed atol); a decoder's do not move at all. The probe compares against the scale."""
    from transformers import BertConfig, BertLMHeadModel, GPT2Config, GPT2LMHeadModel

    from tutorial_lib.core.models import check_causal_lm

    for seed in range(10):
        torch.manual_seed(seed)
        bert = BertLMHeadModel(BertConfig(vocab_size=257, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
        with pytest.raises(TypeError, match="BertLMHeadModel is not causal"):
            check_causal_lm(bert)
        check_causal_lm(GPT2LMHeadModel(GPT2Config(vocab_size=257, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)))
