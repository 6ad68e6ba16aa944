"""Exact exposure that prunes the trie: the same rank as the full trie and brute force, at no more forward
positions, and far fewer for a memorised canary."""
import math

import numpy as np
import pytest
import torch
from conftest import tiny_causal_lm

from tutorial_lib.core.canaries import Canary, RandomnessSpace
from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.core.tokenization import train_bpe_tokenizer
from tutorial_lib.privacy.exposure import ExposureResult, canary_trie, compute_exposure
from tutorial_lib.privacy.trie import score_candidates_bruteforce, score_trie

BOB = Canary("the secret number of bob is {secret}", "427", space=RandomnessSpace(3), name="bob", insertions=4)
ALICE = Canary("the code of alice is {secret}", "8312", space=RandomnessSpace(4), name="alice", insertions=4)
DAVE = Canary("the pin of dave is {secret} ok", "517", space=RandomnessSpace(3), name="dave")  # never inserted


def _gpt2(tokenizer, seed=0):
    return make_model(ModelConfig(n_layer=2, n_embd=16, n_head=2, n_positions=64), len(tokenizer), seed=seed)


def _lines(*canaries: Canary, fillers: int = 12) -> list[str]:
    """Each canary ``insertions`` times, plus filler lines with other numbers in other formats."""
    rng = np.random.default_rng(0)
    lines = [f"\nthe number of {name} is {rng.integers(0, 1000):03d}" for name in ("ann", "eve", "joe", "sue") for _ in range(fillers // 4)]
    return lines + [f"\n{c.text()}" for c in canaries for _ in range(c.insertions)]


def _memorise(model, tokenizer, lines: list[str], steps: int = 80, lr: float = 3e-2):
    """Full-batch Adam on ``lines`` (float32), returned in float64 eval mode: a model that has memorised
    the lines, canaries included."""
    torch.manual_seed(0)
    ids = [tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]
    width = max(map(len, ids))
    inputs = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    labels = inputs.masked_fill(mask == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.double().eval()


def _three_ways(model, tokenizer, canary, **kwargs) -> dict[str, ExposureResult]:
    """Exposure by every method; their ranks and exposures agree, and the pruned search takes no more
    forward positions than the full trie, which takes the shared prefix plus every internal node."""
    out = {m: compute_exposure(model, tokenizer, canary, method=m, progress=False, **kwargs) for m in ("pruned", "trie", "bruteforce")}
    assert out["pruned"].rank == out["trie"].rank == out["bruteforce"].rank
    assert out["pruned"].exposure == out["trie"].exposure == out["bruteforce"].exposure
    assert math.isclose(out["pruned"].log_perplexity_bits, out["bruteforce"].log_perplexity_bits, rel_tol=0, abs_tol=1e-9)
    if "candidates" not in kwargs:
        trie = canary_trie(tokenizer, canary)
        assert out["trie"].positions == len(trie.shared_ids) + trie.n_internal
    assert out["pruned"].positions <= out["trie"].positions
    return out


@pytest.fixture(scope="module")
def byte_model(byte_tokenizer):
    return _memorise(_gpt2(byte_tokenizer), byte_tokenizer, _lines(BOB, ALICE))


@pytest.fixture(scope="module")
def bpe_tokenizer():
    rng = np.random.default_rng(0)
    numbers = [" ".join(str(x) for x in rng.integers(0, 10 ** rng.integers(1, 5), size=20)) for _ in range(500)]
    return train_bpe_tokenizer(numbers + [BOB.format, DAVE.format] * 10, vocab_size=400)


@pytest.fixture(scope="module")
def digit_tokenizer():
    """SentencePiece/Llama-style: words carry a '▁' prefix, every digit is its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=list("0123456789"),
                                  show_progress=False)
    tok.train_from_iterator(_lines(BOB) + [DAVE.text()], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("canary", [BOB, DAVE, Canary(BOB.format, "900", space=BOB.space, name="bob")],
                         ids=["memorised", "control", "other-secret"])
def test_pruned_equals_trie_and_bruteforce_byte_level(byte_model, byte_tokenizer, canary):
    out = _three_ways(byte_model, byte_tokenizer, canary)
    if canary is BOB:
        assert out["pruned"].rank == 1
        assert 3 * out["pruned"].positions < out["trie"].positions


def test_memorised_canary_above_10_bits_takes_20x_fewer_positions(byte_model, byte_tokenizer):
    pruned = compute_exposure(byte_model, byte_tokenizer, ALICE, method="pruned", progress=False)
    full = compute_exposure(byte_model, byte_tokenizer, ALICE, progress=False)
    assert pruned.rank == full.rank and pruned.exposure == full.exposure >= 10
    assert 20 * pruned.positions <= full.positions


def test_pruned_equals_trie_and_bruteforce_bpe_with_multi_digit_pieces(bpe_tokenizer):
    pieces = {len(p) for s in ("042", "427", "900", "517") for p in bpe_tokenizer.tokenize(BOB.text(s)) if p.strip("Ġ").isdigit()}
    assert max(pieces) >= 2, "the BPE must merge digits"
    assert len(set(canary_trie(bpe_tokenizer, BOB).depth)) >= 2, "secrets must end at different depths of the trie"
    model = _memorise(_gpt2(bpe_tokenizer), bpe_tokenizer, _lines(BOB))
    memorised = _three_ways(model, bpe_tokenizer, BOB)
    assert memorised["pruned"].rank == 1 and memorised["pruned"].positions < memorised["trie"].positions
    _three_ways(model, bpe_tokenizer, DAVE)


def test_pruned_equals_trie_and_bruteforce_digit_tokens_on_llama(digit_tokenizer):
    assert digit_tokenizer.tokenize(" 427") == ["▁", "4", "2", "7"]
    seen = Canary(DAVE.format, "081", space=DAVE.space, insertions=4)
    model = _memorise(tiny_causal_lm("llama", len(digit_tokenizer)), digit_tokenizer, _lines(BOB, seen))
    memorised = _three_ways(model, digit_tokenizer, BOB)
    assert memorised["pruned"].rank == 1 and 3 * memorised["pruned"].positions < memorised["trie"].positions
    _three_ways(model, digit_tokenizer, DAVE)  # the format was seen, with another secret: a deep trie (the suffix)


def test_a_uniform_model_ties_every_candidate(byte_tokenizer):
    """Zero output weights: every candidate scores the same, so every one counts against the secret
    (rank |R|), nothing can be pruned, and the pruned search still takes no more positions."""
    model = _gpt2(byte_tokenizer).double()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    out = _three_ways(model, byte_tokenizer, BOB)
    assert out["pruned"].rank == BOB.space.size and out["pruned"].exposure == 0
    assert out["pruned"].positions == out["trie"].positions


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prune_above_scores_exactly_what_it_keeps(byte_tokenizer, family):
    """Explicit thresholds, several batches per level (holes where nodes were pruned): every candidate at
    or below the threshold gets the full trie's score, every other one inf, and exactly the internal
    nodes whose partial score (scored by brute force as texts of their own) is within it are expanded."""
    model = _gpt2(byte_tokenizer, seed=1).double() if family == "gpt2" else tiny_causal_lm("llama", len(byte_tokenizer)).double()
    trie = canary_trie(byte_tokenizer, BOB)
    full_stats = {}
    full = score_trie(model, trie, progress=False, stats=full_stats)
    head = "\n" + BOB.prefix
    partial = [score_candidates_bruteforce(model, byte_tokenizer, [head + s for s in RandomnessSpace(n).all_secrets()]) for n in (1, 2)]
    every = np.sort(np.concatenate([full, *partial]))
    for q in (0.1, 0.5, 0.9):  # through the two-digit nodes' partial scores: some expanded, some not
        i = int(np.searchsorted(every, np.quantile(partial[1], q)))
        threshold = float(every[i - 1] + every[i]) / 2  # between two scores: rounding cannot decide
        stats = {}
        pruned = score_trie(model, trie, memory_budget_mb=0.04, progress=False, prune_above=threshold, stats=stats)
        keep = full <= threshold
        assert np.all(np.isinf(pruned[~keep]))
        np.testing.assert_allclose(pruned[keep], full[keep], rtol=0, atol=1e-9)
        assert stats["expanded"] == 1 + sum(int(np.count_nonzero(p <= threshold)) for p in partial)
        assert stats["positions"] == len(trie.shared_ids) + stats["expanded"] < full_stats["positions"]
        assert stats["internal"] == trie.n_internal == full_stats["expanded"]


def test_pruned_search_always_scores_the_secret(byte_model, byte_tokenizer):
    """``prune_at``: the candidates the secret's score keeps get the full trie's scores, its own path's keys
    and values serving the nodes below it (a deep trie: the suffix; several batches per level); its path is
    expanded even below a threshold that excludes it, and its score kept."""
    trie = canary_trie(byte_tokenizer, DAVE)
    position = DAVE.space.index(DAVE.secret)
    full = score_trie(byte_model, trie, progress=False)
    pruned = score_trie(byte_model, trie, memory_budget_mb=0.5, progress=False, prune_at=position)
    kept = np.isfinite(pruned)
    np.testing.assert_allclose(pruned[kept], full[kept], rtol=0, atol=1e-9)
    assert np.all(full[~kept] > full[position]) and np.count_nonzero(full[kept] > full[position]) < 10
    stats = {}
    pruned = score_trie(byte_model, trie, progress=False, prune_above=float(full.min()), prune_at=position, stats=stats)
    assert pruned[position] == pytest.approx(full[position], abs=1e-9) and np.count_nonzero(np.isfinite(pruned)) <= 2
    with pytest.raises(ValueError, match="prune_at must index one of the 1,000 candidates, got 1000"):
        score_trie(byte_model, trie, prune_at=1000)


def test_pruned_among_sampled_candidates(byte_model, byte_tokenizer):
    out = _three_ways(byte_model, byte_tokenizer, ALICE, candidates=300, seed=2)
    assert out["pruned"].space_size == 300 and out["pruned"].rank == 1


def test_pruned_bar_ends_full(byte_model, byte_tokenizer, shown_bars):
    from tutorial_lib.privacy import trie

    out = shown_bars(trie)
    compute_exposure(byte_model, byte_tokenizer, BOB, method="pruned")
    assert "exposure of bob: 100%" in out.getvalue() and "1.00k/1.00k" in out.getvalue()


def test_positions_are_recorded_and_old_results_still_load(byte_model, byte_tokenizer):
    brute = compute_exposure(byte_model, byte_tokenizer, BOB, method="bruteforce", progress=False)
    assert brute.positions == sum(len(byte_tokenizer("\n" + BOB.text(s))["input_ids"]) for s in BOB.space.all_secrets())
    old = ExposureResult("bob", 4, "427", 9.9, 1, 1000, 2.0, 0.1)  # a result recorded before positions were
    assert old.positions is None and ExposureResult(**old.to_dict()) == old


def test_unknown_method_names_the_three(byte_model, byte_tokenizer):
    with pytest.raises(ValueError, match="unknown exposure method 'fast'; expected one of 'trie', 'pruned', 'bruteforce'"):
        compute_exposure(byte_model, byte_tokenizer, BOB, method="fast")
