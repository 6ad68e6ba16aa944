import math

import pytest
import torch

from tutorial_lib.core.evaluation import (
    compute_loss,
    compute_perplexity,
    compute_text_perplexity,
    tokenize_lines,
)
from tutorial_lib.core.models import ModelConfig, count_parameters, make_model
from tutorial_lib.core.training import TrainConfig, lr_at, train_language_model


def _ids(tokenizer):
    text = [f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(200)]
    return tokenize_lines(tokenizer, text)


def test_parameter_counts_match_the_profiles(byte_tokenizer):
    tiny = count_parameters(make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer)))
    small = count_parameters(make_model(ModelConfig.for_profile("small"), len(byte_tokenizer)))
    assert 80_000 <= tiny <= 150_000
    assert 350_000 <= small <= 550_000


def test_same_seed_same_weights_and_global_rng_untouched(byte_tokenizer):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=5)
    assert torch.rand(1) == before
    b = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=5)
    c = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(10, cfg) > lr_at(50, cfg) > lr_at(99, cfg)


def test_training_lowers_validation_loss_and_is_reproducible(byte_tokenizer):
    ids = _ids(byte_tokenizer)
    cfg = TrainConfig(steps=60, batch_size=8, block_size=32, lr=5e-3, warmup_steps=5, eval_every=20, eval_blocks=8)
    runs = []
    for _ in range(2):
        model = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=0)
        start = compute_loss(model, ids, 32, max_blocks=8)
        history = train_language_model(model, ids, ids, cfg, seed=0, progress=False)
        runs.append((start, history))
    (start, history), (_, again) = runs
    assert history.val_steps == [20, 40, 60]
    assert history.val_loss[-1] < start - 1.0
    assert history.val_loss == again.val_loss and history.train_loss == again.train_loss


def test_perplexity_is_exp_loss(byte_tokenizer):
    ids = _ids(byte_tokenizer)
    model = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=0)
    assert compute_perplexity(model, ids, 32) == pytest.approx(math.exp(compute_loss(model, ids, 32)))
    assert compute_perplexity(model, ids, 32) == pytest.approx(len(byte_tokenizer), rel=0.3)  # untrained: near uniform
    text = [f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(200)]
    assert compute_text_perplexity(model, byte_tokenizer, text, 32) == compute_perplexity(model, ids, 32)


def test_too_little_text_is_an_error(byte_tokenizer):
    model = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer))
    ids = torch.arange(10)
    with pytest.raises(ValueError, match="block_size"):
        train_language_model(model, ids, ids, TrainConfig(steps=1, block_size=32), progress=False)
    with pytest.raises(ValueError, match="block_size=32"):
        compute_loss(model, ids, 32)


@pytest.mark.parametrize("field, value, match", [
    ("grad_clip", 0.0, "grad_clip must be positive.*never trains"), ("eval_every", 0, "eval_every must be an integer >= 1"),
    ("steps", 0, "steps must be an integer >= 1"), ("lr", -1e-3, "lr must be a positive finite"), ("lr", float("nan"), "lr must be"),
    ("batch_size", 2.5, "batch_size must be an integer"), ("min_lr_ratio", 2.0, "min_lr_ratio"),
])
def test_a_training_config_that_would_train_nothing_or_crash_is_refused(field, value, match):
    from tutorial_lib.core.training import TrainConfig

    with pytest.raises(ValueError, match=f"TrainConfig.{match}" if not match.startswith("min") else match):
        TrainConfig(**{field: value})


def test_a_block_longer_than_the_models_positions_is_named(byte_tokenizer):
    model = make_model(ModelConfig(n_layer=1, n_embd=8, n_head=2, n_positions=16), len(byte_tokenizer), seed=0)
    ids = torch.arange(200) % 50
    with pytest.raises(ValueError, match="block_size = 32 is longer than the model's 16 positions"):
        train_language_model(model, ids, ids, TrainConfig(steps=2, block_size=32, batch_size=2, eval_blocks=1), progress=False)
