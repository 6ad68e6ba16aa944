import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One model cache for the whole session: the tiny memorisation run and its retrained oracle
    are trained once and shared by the tests that use them."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_run(tiny_cache):
    """One tiny-profile memorisation run, shared by the tests that only read its result."""
    from tutorial_lib.experiments.memorization import (
        MemorizationConfig,
        run_memorization,
    )

    cache = tiny_cache
    cfg = MemorizationConfig.for_profile("tiny")
    return cfg, cache, run_memorization(cfg, seed=0, device="cpu", cache_dir=cache, progress=False)


@pytest.fixture(scope="session")
def byte_tokenizer():
    from tutorial_lib.core.tokenization import make_byte_tokenizer

    return make_byte_tokenizer()


@pytest.fixture()
def shown_bars(monkeypatch):
    """``shown_bars(module, ...)``: those modules' progress bars drawn into the returned buffer even
    under ``TQDM_DISABLE=1`` (how the tests run); a bar asked for with ``disable=True`` (progress
    off) still draws nothing."""
    import functools
    import io

    from tqdm.std import tqdm

    out = io.StringIO()

    def show(*modules):
        for module in modules:
            monkeypatch.setattr(module, "tqdm", functools.partial(tqdm, disable=False, file=out, mininterval=0))
        return out

    return show


def tiny_causal_lm(family: str, vocab: int, max_positions: int = 64):
    """A two-layer causal LM of another family, in eval mode: Llama and Qwen2 (RMS norms,
    rotary positions, 4 query heads over 2 key/value heads, Qwen2 with biased projections) or GPT-NeoX
    (LayerNorm, fused QKV). Seeded; the caller picks the dtype."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=max_positions)
    if family == "gpt_neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**common)).eval()
    config_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[family]
    return model_cls(config_cls(**common, num_key_value_heads=2)).eval()
