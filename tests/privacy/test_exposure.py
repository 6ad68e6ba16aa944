import math

import numpy as np
import pytest
import torch

from tutorial_lib.core.canaries import Canary, RandomnessSpace
from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.core.tokenization import train_bpe_tokenizer
from tutorial_lib.privacy.exposure import canary_texts, canary_trie, compute_exposure, estimate_exposure, exposure_from_scores
from tutorial_lib.privacy.trie import build_trie, score_candidates, score_candidates_bruteforce, score_trie


def _model(tokenizer, seed=0):
    return make_model(ModelConfig(n_layer=2, n_embd=16, n_head=2, n_positions=64), len(tokenizer), seed=seed).double()


@pytest.fixture(scope="module")
def bpe_tokenizer():
    rng = np.random.default_rng(0)
    numbers = [" ".join(str(x) for x in rng.integers(0, 10 ** rng.integers(1, 7), size=20)) for _ in range(2000)]
    return train_bpe_tokenizer(numbers + ["the secret number of bob is"] * 20, vocab_size=400)


def test_rank_and_exposure_by_hand():
    scores = np.array([5.0, 1.0, 3.0, 3.0, 9.0, 2.0, 7.0, 8.0])
    assert exposure_from_scores(scores, 1) == (1, 3.0)  # the most likely: full log2|R|
    assert exposure_from_scores(scores, 2)[0] == 4  # ties count against the secret
    assert exposure_from_scores(scores, 4) == (8, 0.0)


def test_bruteforce_matches_the_models_own_loss(byte_tokenizer):
    model = _model(byte_tokenizer)
    texts = ["\nthe pin is 0123", "\nthe pin is 9", "\nhello"]
    ours = score_candidates_bruteforce(model, byte_tokenizer, texts)
    for text, bits in zip(texts, ours):
        ids = torch.tensor([byte_tokenizer(text)["input_ids"]])
        loss = model(input_ids=ids, labels=ids).loss.item()
        assert math.isclose(bits, loss * (ids.shape[1] - 1) / math.log(2), rel_tol=1e-6)  # the model upcasts its loss to float32


@pytest.mark.parametrize("length", [3, 4])
def test_trie_equals_bruteforce_byte_level(byte_tokenizer, length):
    model = _model(byte_tokenizer)
    canary = Canary("the secret number of bob is {secret}", "0" * length, space=RandomnessSpace(length))
    trie_scores = score_trie(model, canary_trie(byte_tokenizer, canary))
    brute = score_candidates_bruteforce(model, byte_tokenizer, canary_texts(canary), batch_size=2048)
    np.testing.assert_allclose(trie_scores, brute, rtol=0, atol=1e-9)
    assert np.all(np.argsort(trie_scores, kind="stable") == np.argsort(brute, kind="stable"))


@pytest.mark.parametrize("length", [3, 4])
def test_trie_equals_bruteforce_bpe_with_multi_digit_pieces(bpe_tokenizer, length):
    canary = Canary("the secret number of bob is {secret} and that is all", "1" * length, space=RandomnessSpace(length))
    texts = canary_texts(canary)
    lengths = {len(bpe_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts}
    assert len(lengths) >= 2, "the BPE must split secrets into pieces of different lengths"
    pieces = {len(p) for t in texts[:200] for p in bpe_tokenizer.tokenize(t) if p.strip("Ġ").isdigit()}
    assert max(pieces) >= 2
    model = _model(bpe_tokenizer)
    trie_scores = score_trie(model, canary_trie(bpe_tokenizer, canary))
    brute = score_candidates_bruteforce(model, bpe_tokenizer, texts, batch_size=2048)
    np.testing.assert_allclose(trie_scores, brute, rtol=0, atol=1e-9)
    whole = score_trie(model, build_trie(bpe_tokenizer, texts))
    np.testing.assert_allclose(whole, brute, rtol=0, atol=1e-9)


def _tiny_llama(vocab: int):
    """A two-layer Llama with grouped key heads (4 query heads over 2 key/value heads) and rotary positions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(config).double().eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shared_prefix_attention_is_used_and_equals_the_plain_cache(byte_tokenizer, family, monkeypatch):
    """The trie's nodes attend to one copy of the prefix (a registered attention function): the scores equal
    those of the plain cached forward and of brute force, on GPT-2 and on a grouped-head, rotary Llama, and
    the model's own attention is back afterwards."""
    from tutorial_lib.privacy import trie

    model = _model(byte_tokenizer) if family == "gpt2" else _tiny_llama(len(byte_tokenizer))
    own = model.config._attn_implementation
    calls = []
    original = trie._shared_prefix_attention
    monkeypatch.setattr(trie, "_shared_prefix_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    canary = Canary("the secret number of bob is {secret}", "042", space=RandomnessSpace(3))
    candidates = canary_trie(byte_tokenizer, canary)
    shared = score_trie(model, candidates, memory_budget_mb=0.01)  # several batches per level
    assert calls, "the shared-prefix attention was not used"
    assert model.config._attn_implementation == own
    plain = score_trie(model, candidates, shared_prefix=False)
    brute = score_candidates_bruteforce(model, byte_tokenizer, canary_texts(canary))
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-9)
    np.testing.assert_allclose(shared, brute, rtol=0, atol=1e-9)


def test_shared_prefix_attention_falls_back_where_it_disagrees(byte_tokenizer, monkeypatch):
    """A shared-prefix attention that gets the numbers wrong is caught on the first batch, and the plain
    cached forward scores everything."""
    from tutorial_lib.privacy import trie

    original = trie._shared_prefix_attention

    def wrong(*args, **kwargs):
        out, weights = original(*args, **kwargs)
        return out + 0.5, weights

    monkeypatch.setattr(trie, "_shared_prefix_attention", wrong)
    model = _model(byte_tokenizer)
    canary = Canary("the secret number of bob is {secret}", "042", space=RandomnessSpace(3))
    brute = score_candidates_bruteforce(model, byte_tokenizer, canary_texts(canary))
    np.testing.assert_allclose(score_trie(model, canary_trie(byte_tokenizer, canary)), brute, rtol=0, atol=1e-9)


def test_trie_visits_far_fewer_positions_than_candidates_times_length(byte_tokenizer):
    canary = Canary("the secret number of bob is {secret}", "0000", space=RandomnessSpace(4))
    trie = canary_trie(byte_tokenizer, canary)
    assert trie.n_candidates == 10_000
    assert trie.n_internal == 1 + 10 + 100 + 1000  # the root (prefix and space), then 1, 2, 3 digits
    naive = sum(len(byte_tokenizer(t)["input_ids"]) for t in canary_texts(canary))
    assert naive / (trie.n_internal + len(trie.shared_ids)) > 10


def test_no_shared_prefix_uses_a_start_token(byte_tokenizer):
    model = _model(byte_tokenizer)
    canary = Canary("{secret} is the code", "12", space=RandomnessSpace(2))
    texts = canary_texts(canary, context="")
    np.testing.assert_allclose(
        score_candidates(model, byte_tokenizer, texts),
        score_candidates_bruteforce(model, byte_tokenizer, texts), atol=1e-9,
    )


def test_compute_exposure_methods_agree(byte_tokenizer):
    model = _model(byte_tokenizer, seed=3)
    canary = Canary("the pin of carol is {secret}", "4711", space=RandomnessSpace(4))
    a = compute_exposure(model, byte_tokenizer, canary)
    b = compute_exposure(model, byte_tokenizer, canary, method="bruteforce")
    assert a.rank == b.rank and math.isclose(a.exposure, b.exposure)
    assert 0 <= a.exposure <= math.log2(10_000)
    with pytest.raises(ValueError, match="unknown exposure method 'fast'"):
        compute_exposure(model, byte_tokenizer, canary, method="fast")


def test_compute_exposure_leaves_model_mode_alone(byte_tokenizer):
    model = _model(byte_tokenizer).train()
    compute_exposure(model, byte_tokenizer, Canary("pin {secret}", "12", space=RandomnessSpace(2)))
    assert model.training


def test_estimate_needs_samples(byte_tokenizer):
    with pytest.raises(ValueError, match="n_samples"):
        estimate_exposure(_model(byte_tokenizer), byte_tokenizer, Canary("pin {secret}", "12", space=RandomnessSpace(2)), n_samples=3)


def test_estimate_is_close_for_an_unremarkable_secret(byte_tokenizer):
    model = _model(byte_tokenizer, seed=1)
    canary = Canary("the secret number of bob is {secret}", "5821", space=RandomnessSpace(4))
    exact = compute_exposure(model, byte_tokenizer, canary)
    est = estimate_exposure(model, byte_tokenizer, canary, n_samples=2000, seed=0)
    assert est.n_samples == 2000
    assert abs(est.exposure - exact.exposure) < 1.0


def test_sampled_exposure_ranks_among_the_sampled_candidates(byte_tokenizer):
    model = _model(byte_tokenizer, seed=3)
    canary = Canary("the pin of carol is {secret}", "4711", space=RandomnessSpace(4))
    full = score_candidates_bruteforce(model, byte_tokenizer, canary_texts(canary))
    sub = compute_exposure(model, byte_tokenizer, canary, candidates=1000, seed=5)
    again = compute_exposure(model, byte_tokenizer, canary, candidates=1000, seed=5, method="bruteforce")
    # ground truth: the same sample drawn by hand, ranked within the full space's scores
    index = canary.space.index(canary.secret)
    others = np.random.default_rng(5).choice(9999, size=999, replace=False)
    others = others + (others >= index)
    assert index not in others and len(set(others)) == 999
    rank = 1 + int(np.count_nonzero(full[others] <= full[index]))
    assert sub.rank == again.rank == rank and sub.space_size == 1000
    assert math.isclose(sub.exposure, math.log2(1000) - math.log2(rank))
    assert compute_exposure(model, byte_tokenizer, canary, candidates=10_000).rank == compute_exposure(model, byte_tokenizer, canary).rank
    with pytest.raises(ValueError, match="candidates must be at least 2, got 1"):
        compute_exposure(model, byte_tokenizer, canary, candidates=1)


def test_exposure_bar_counts_every_candidate_and_changes_nothing(byte_tokenizer, bpe_tokenizer, shown_bars):
    from tutorial_lib.privacy import trie

    model = _model(byte_tokenizer, seed=3)
    canary = Canary("the pin of carol is {secret}", "4711", space=RandomnessSpace(4), name="carol")
    quiet = compute_exposure(model, byte_tokenizer, canary, progress=False)
    out = shown_bars(trie)
    assert out.getvalue() == ""  # progress off: no bar
    shown = compute_exposure(model, byte_tokenizer, canary)
    assert (shown.rank, shown.exposure, shown.log_perplexity_bits) == (quiet.rank, quiet.exposure, quiet.log_perplexity_bits)
    assert "exposure of carol: 100%" in out.getvalue() and "10.0k/10.0k" in out.getvalue()
    compute_exposure(model, byte_tokenizer, canary, method="bruteforce", candidates=600)
    assert "600/600" in out.getvalue()
    # BPE: secrets end at different depths of the trie, and every one is counted once
    texts = [f"the secret number of bob is {n}" for n in (7, 42, 4242, 424242, 99, 123456)]
    out.truncate(0)
    bpe_model = _model(bpe_tokenizer)
    np.testing.assert_array_equal(score_candidates(bpe_model, bpe_tokenizer, texts),
                                  score_candidates(bpe_model, bpe_tokenizer, texts, progress=False))
    assert "scoring candidates: 100%" in out.getvalue() and "6.00/6.00" in out.getvalue()


def test_exact_exposure_refuses_a_space_too_large_to_score(byte_tokenizer):
    """|R| = 10^8 would hold every candidate in memory: refused up front, naming the sampled and estimated
    alternatives; both of those work, even for |R| = 10^30, beyond what int64 can count."""
    model = _model(byte_tokenizer)
    huge = Canary("pin {secret}", "1" * 8, space=RandomnessSpace(8), name="x")
    with pytest.raises(ValueError, match=r"100,000,000 candidates.*GiB.*candidates=100_000.*estimate_exposure"):
        compute_exposure(model, byte_tokenizer, huge)
    vast = Canary("pin {secret}", "7" * 30, space=RandomnessSpace(30), name="y")
    sampled = compute_exposure(model, byte_tokenizer, vast, candidates=64, seed=1)
    assert sampled.space_size == 64 and 1 <= sampled.rank <= 64
    assert estimate_exposure(model, byte_tokenizer, vast, n_samples=64).n_samples == 64


def test_sampled_secrets_are_distinct_uniform_and_skip_the_secret():
    from tutorial_lib.privacy.exposure import sample_secrets

    space = RandomnessSpace(3)
    rng = np.random.default_rng(0)
    drawn = sample_secrets(space, 999, rng, exclude="123")
    assert len(set(drawn)) == 999 and "123" not in drawn and drawn == sorted(drawn)
    with pytest.raises(ValueError, match="cannot draw 1,000 distinct secrets from a space of 999"):
        sample_secrets(space, 1000, rng, exclude="123")
    big = sample_secrets(RandomnessSpace(30), 2000, rng)
    first_digits = np.array([int(s[0]) for s in big])
    assert len(set(big)) == 2000 and abs(first_digits.mean() - 4.5) < 0.3  # uniform digits
