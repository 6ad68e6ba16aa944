import json

import pytest

from tutorial_lib.core.cache import CheckpointMismatchError, load_run
from tutorial_lib.experiments.memorization import MemorizationConfig, run_memorization


def test_tiny_run_memorises_the_most_repeated_canary(tiny_run):
    cfg, _, result = tiny_run
    bits = result.max_bits
    assert result.max_bits == pytest.approx(13.29, abs=0.01)  # |R| = 10^4 at the tiny profile
    top = max(result.exposure_of(100))
    assert top >= 0.75 * bits, result.summary()
    assert max(result.exposure_of(0)) <= 6.0, result.summary()  # controls: a random rank
    assert top > max(result.exposure_of(1))
    assert result.val_perplexity < 40  # learned the corpus (uniform over bytes would be 257)


def test_tiny_run_reports_estimates_and_trajectory(tiny_run):
    cfg, _, result = tiny_run
    rows = result.rows()
    assert len(rows) == len(cfg.insertions) * cfg.per_insertion + cfg.n_controls
    for r in rows:
        assert r["estimate_error"] == pytest.approx(r["estimate"] - r["exposure"])
    steps = [s for s, _ in next(iter(result.trajectory.values()))]
    t = cfg.train
    assert steps == sorted(set(t.eval_steps) | set(range(t.eval_every, t.steps + 1, t.eval_every)))
    assert steps == result.history["val_steps"]
    json.dumps(result.to_dict())
    assert "| carol | 100x |" in result.table_markdown()


def test_same_seed_twice_gives_identical_numbers(tiny_run, tmp_path):
    cfg, _, first = tiny_run
    second = run_memorization(cfg, seed=0, device="cpu", cache_dir=tmp_path, progress=False)
    assert not second.from_cache
    assert [e["exposure"] for e in second.exposures] == [e["exposure"] for e in first.exposures]
    assert second.val_perplexity == first.val_perplexity
    assert second.history["train_loss"] == first.history["train_loss"]


def test_second_run_loads_from_cache_with_the_same_numbers(tiny_run):
    cfg, cache, first = tiny_run
    again = run_memorization(cfg, seed=0, device="cpu", cache_dir=cache, progress=False)
    assert again.from_cache
    assert [e["exposure"] for e in again.exposures] == [e["exposure"] for e in first.exposures]
    assert again.val_perplexity == first.val_perplexity


def test_checkpoint_with_another_config_is_refused(tiny_run):
    _, cache, _ = tiny_run
    folder = next(cache.glob("memorization-*"))
    meta = json.loads((folder / "run.json").read_text())
    wanted = dict(meta["config"], seed=99)
    with pytest.raises(CheckpointMismatchError, match="seed"):
        load_run(folder, wanted)
    loaded = load_run(folder, meta["config"])
    model, tokenizer, record = loaded.model, loaded.tokenizer, loaded.record
    assert "history" in record and len(tokenizer) == model.config.vocab_size
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))


def test_config_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown corpus 'news'"):
        MemorizationConfig(corpus="news")
    with pytest.raises(ValueError, match="k = -2"):
        MemorizationConfig(insertions=(1, -2))
    with pytest.raises(ValueError, match="unknown profile"):
        MemorizationConfig.for_profile("medium")
