"""At the door of every public function that takes texts or a language model: one string where a list of
texts belongs, and a model that is not a causal LM, are refused with the argument's name and the fix."""
import numpy as np
import pytest
import torch

import tutorial_lib as tl
from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.experiments.robustness import RelearningConfig, relearning_attack, relearning_texts
from tutorial_lib.privacy.trie import build_trie, score_candidates, score_candidates_bruteforce, score_trie


@pytest.fixture(scope="module")
def gpt2(byte_tokenizer):
    return make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32), len(byte_tokenizer), seed=0)


@pytest.fixture(scope="module")
def encoder(byte_tokenizer):
    """An encoder with an LM head: a ``*LMHeadModel`` by name, but it sees later tokens."""
    from transformers import BertConfig, BertLMHeadModel

    return BertLMHeadModel(BertConfig(vocab_size=len(byte_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, is_decoder=False)).eval()


TEXT = "the secret number of bob is 1234"
CANARY = tl.Canary("the secret number of bob is {secret}", "12", space=tl.RandomnessSpace(2), name="bob")


def _string_calls(model, tok):
    """(argument name, call with one string where a list of texts belongs)."""
    relearn = RelearningConfig(steps=1, checkpoints=(1,))
    return [
        ("texts", lambda: tl.attack_scores(model, tok, TEXT)),
        ("members", lambda: tl.membership_inference(model, tok, TEXT, [TEXT])),
        ("nonmembers", lambda: tl.membership_inference(model, tok, [TEXT], TEXT)),
        ("prefixes", lambda: tl.generate_continuations(model, tok, TEXT, 2)),
        ("texts", lambda: score_candidates_bruteforce(model, tok, TEXT)),
        ("texts", lambda: score_candidates(model, tok, TEXT)),
        ("texts", lambda: build_trie(tok, TEXT)),
        ("retain", lambda: relearning_texts([CANARY], TEXT, relearn)),
        ("texts", lambda: relearning_attack(model, tok, TEXT, relearn, block_size=8)),
        ("lines", lambda: tl.tokenize_lines(tok, TEXT)),
        ("lines", lambda: tl.insert_canaries(TEXT, [CANARY])),
        ("texts", lambda: tl.make_lm_batch(tok, TEXT, 16)),
        ("texts", lambda: tl.train_bpe_tokenizer(TEXT)),
        ("forget", lambda: tl.unlearn(model, tok, TEXT, [TEXT] * 40)),
        ("retain", lambda: tl.unlearn(model, tok, [TEXT], TEXT)),
    ]


def test_one_string_where_a_list_of_texts_belongs_is_refused(gpt2, byte_tokenizer):
    calls = _string_calls(gpt2, byte_tokenizer)
    assert len(calls) == 15
    for argument, call in calls:
        with pytest.raises(TypeError, match=rf"^{argument} must be a list of texts, got one string of \d+ characters.*pass \[{argument}\]"):
            call()


def test_a_model_that_is_not_a_causal_lm_is_refused(encoder, byte_tokenizer):
    tok = byte_tokenizer
    ids = torch.arange(40) % 30
    trie = tl.canary_trie(tok, CANARY)
    calls = [
        lambda: tl.compute_exposure(encoder, tok, CANARY),
        lambda: score_trie(encoder, trie),
        lambda: score_candidates_bruteforce(encoder, tok, [TEXT]),
        lambda: tl.attack_scores(encoder, tok, [TEXT]),
        lambda: tl.generate_continuations(encoder, tok, [TEXT], 2),
        lambda: relearning_attack(encoder, tok, [TEXT], RelearningConfig(steps=1, checkpoints=(1,)), block_size=8),
        lambda: tl.train_language_model(encoder, ids, ids, tl.TrainConfig(steps=1, block_size=8, batch_size=2, eval_blocks=1), progress=False),
        lambda: tl.unlearn(encoder, tok, [TEXT], [TEXT] * 40),
    ]
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    for call in calls:
        with pytest.raises(TypeError, match="BertLMHeadModel is not causal.*AutoModelForCausalLM"):
            call()
    assert all(torch.equal(p, before[n]) for n, p in encoder.named_parameters())


def test_a_causal_lm_passes_the_probe_in_every_precision(gpt2, byte_tokenizer):
    from tutorial_lib.core.models import check_causal_lm

    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        check_causal_lm(gpt2.to(dtype))
    gpt2.float()
    with torch.no_grad():  # a model full of NaN is causal too: its failure is for the unlearning guards to report
        broken = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32), len(byte_tokenizer), seed=1)
        broken.transformer.wte.weight.fill_(float("nan"))
    check_causal_lm(broken)
    assert np.isfinite(gpt2.lm_head.weight.detach().numpy()).all()
