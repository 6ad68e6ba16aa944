"""Membership-inference and extraction metrics (notebook 09), against hand-computed values."""
import math
import zlib

import numpy as np
import pytest
import torch

from tutorial_lib.privacy.mia import (
    attack_scores,
    generate_continuations,
    longest_common_prefix,
    membership_inference,
    min_k_score,
    roc_auc,
    roc_curve,
    rouge_l,
    token_logprobs,
    tpr_at_fpr,
    zlib_score,
)


def test_auc_of_a_perfect_score_is_one_and_of_a_constant_score_one_half():
    members, nonmembers = np.arange(10, 20), np.arange(0, 10)
    assert roc_auc(members, nonmembers) == 1.0
    assert roc_auc(nonmembers, members) == 0.0
    assert roc_auc(np.ones(7), np.ones(5)) == 0.5
    assert tpr_at_fpr(members, nonmembers, 0.01) == 1.0
    assert tpr_at_fpr(np.ones(7), np.ones(5), 0.01) == 0.0  # every threshold that admits a member admits all non-members


def test_auc_equals_the_pairwise_count_and_the_area_under_the_curve():
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # rounded: ties happen
    pairs = np.mean([(a > b) + 0.5 * (a == b) for a in m for b in n])
    assert roc_auc(m, n) == pytest.approx(pairs, abs=1e-12)
    fpr, tpr = roc_curve(m, n)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairs, abs=1e-12)
    # TPR at 10 % FPR by brute force over thresholds
    best = max([(m >= t).mean() for t in np.concatenate([m, n, [np.inf]]) if (n >= t).mean() <= 0.1])
    assert tpr_at_fpr(m, n, 0.1) == pytest.approx(best)


def test_min_k_with_k_100_percent_is_the_mean_log_likelihood():
    lp = np.log(np.array([0.5, 0.1, 0.9, 0.3, 0.05]))
    assert min_k_score(lp, 1.0) == pytest.approx(lp.mean())
    assert min_k_score(lp, 0.2) == pytest.approx(np.log(0.05))  # one token: the least likely
    assert min_k_score(lp, 0.4) == pytest.approx(np.log([0.05, 0.1]).mean())
    with pytest.raises(ValueError, match="k must lie"):
        min_k_score(lp, 0.0)


def test_zlib_score_is_the_log_likelihood_over_compressed_bits():
    lp, text = np.log(np.array([0.5, 0.25])), "hello hello hello"
    assert zlib_score(lp, text) == pytest.approx(lp.sum() / (8 * len(zlib.compress(text.encode()))))


def test_extraction_metrics_on_identical_strings_are_maximal():
    s = "In the beginning God created the heaven and the earth."
    assert longest_common_prefix(s, s) == len(s)
    assert rouge_l(s, s) == 1.0
    assert longest_common_prefix(s, "In the end") == 7
    assert rouge_l("a b c d", "x y z") == 0.0
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("", s) == 0.0


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="members and non-members"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([np.nan], [1.0])
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0], [0.0], 1.5)


@pytest.fixture(scope="module")
def tiny_lm():
    from tutorial_lib.core.models import ModelConfig, make_model
    from tutorial_lib.core.tokenization import make_byte_tokenizer

    tokenizer = make_byte_tokenizer()
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64), len(tokenizer), seed=0, dtype=torch.float64)
    return model.eval(), tokenizer


def test_token_logprobs_match_a_direct_computation_and_ignore_padding(tiny_lm):
    model, tokenizer = tiny_lm
    texts = ["short", "a somewhat longer text"]
    batched = token_logprobs(model, tokenizer, texts)
    for text, lp in zip(texts, batched):
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        logits = model(input_ids=ids).logits[0, :-1]
        direct = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        assert len(lp) == len(text) - 1
        np.testing.assert_allclose(lp, direct.detach().numpy(), rtol=0, atol=1e-10)
    scores = attack_scores(model, tokenizer, texts, reference=model)
    np.testing.assert_allclose(scores["loss"], [lp.mean() for lp in batched])
    np.testing.assert_allclose(scores["reference"], 0.0)  # a model against itself
    with pytest.raises(ValueError, match="unknown attack"):
        attack_scores(model, tokenizer, texts, attacks=("shadow",))
    with pytest.raises(ValueError, match="at least two tokens"):
        token_logprobs(model, tokenizer, ["x"])


def test_membership_inference_separates_trained_texts_from_fresh_ones(tiny_lm):
    """A few steps of training on 'members' make every attack score them above fresh texts."""
    import copy

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefgh"), 24)) for _ in range(16)]
    members, fresh = texts[:8], texts[8:]
    before = membership_inference(model, tokenizer, members, fresh, attacks=("loss",))["loss"]["auc"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"] for t in members])
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = membership_inference(model, tokenizer, members, fresh)
    assert set(result) == {"loss", "zlib", "min_k"}  # no reference model given
    assert result["loss"]["auc"] == 1.0 and result["loss"]["auc"] > before
    assert result["min_k"]["auc"] > 0.9 and result["loss"]["tpr_at_fpr"] == 1.0


def test_greedy_continuation_is_deterministic_and_sampling_is_seeded(tiny_lm):
    model, tokenizer = tiny_lm
    a = generate_continuations(model, tokenizer, ["abc"], 5)
    assert a == generate_continuations(model, tokenizer, ["abc"], 5) and len(a[0]) == 1
    s1 = generate_continuations(model, tokenizer, ["abc"], 5, greedy=False, n_samples=4, seed=3)
    assert s1 == generate_continuations(model, tokenizer, ["abc"], 5, greedy=False, n_samples=4, seed=3)
    assert len(s1[0]) == 4
    state = torch.random.get_rng_state()
    generate_continuations(model, tokenizer, ["abc"], 5, greedy=False, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left as it was
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_continuations(model, tokenizer, ["abc"], 0)
    assert math.isfinite(len(a[0][0]))
