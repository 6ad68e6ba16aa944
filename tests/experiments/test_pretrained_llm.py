"""Notebook 11's study: its config, fine-tuning a parameter subset, and (slow) the whole study at ``tiny``
on the real SmolLM2, checked by bands."""
import pytest
import torch

from tests.conftest import tiny_causal_lm
from tutorial_lib.core.training import TrainConfig
from tutorial_lib.experiments.pretrained_llm import (
    PRETRAINED_BANDS,
    PretrainedLLMConfig,
    fine_tune,
    pretrained_summary,
    run_pretrained_study,
    trainable_names,
)


def test_config_rejects_bad_values_and_scales_with_the_profile():
    with pytest.raises(ValueError, match="unknown corpus 'wiki'"):
        PretrainedLLMConfig(corpus="wiki")
    with pytest.raises(ValueError, match="insertions must be counts >= 1"):
        PretrainedLLMConfig(insertions=(0, 10))
    with pytest.raises(ValueError, match="trainable_blocks must be >= 1 or None"):
        PretrainedLLMConfig(trainable_blocks=0)
    with pytest.raises(ValueError, match="unknown unlearning method 'newton'"):
        PretrainedLLMConfig(methods=("newton",))
    tiny, small, full = (PretrainedLLMConfig.for_profile(p) for p in ("tiny", "small", "full"))
    assert (small.secret_length, small.trainable_blocks, full.secret_length, full.trainable_blocks) == (4, 2, 6, None)
    assert tiny.train.steps < small.train.steps < full.train.steps and len(tiny.methods) < len(small.methods)
    removal = small.method_config("fisher_removal", ("model.layers.29.mlp",))
    assert removal.params == ("model.layers.29.mlp",) and removal.block_size == small.train.block_size == 32


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fine_tune_trains_only_the_last_mlps_and_leaves_the_input_alone(family):
    if family == "gpt2":
        from tutorial_lib.core.models import ModelConfig, make_model

        model = make_model(ModelConfig(n_layer=3, n_embd=32, n_head=4, n_positions=64), 97, seed=0)
    else:
        model = tiny_causal_lm("llama", 97)
    names = trainable_names(model, PretrainedLLMConfig(trainable_blocks=1))
    assert names == (("model.layers.1.mlp",) if family == "llama" else ("transformer.h.2.mlp",))
    assert trainable_names(model, PretrainedLLMConfig(trainable_blocks=None)) is None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 97, (400,), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=3, batch_size=4, block_size=16, lr=1e-2, warmup_steps=0, eval_every=3, eval_blocks=2)
    tuned = fine_tune(model, ids, ids[:100], cfg, names, seed=0, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad, n  # the input is untouched
    moved = {n for n, p in tuned.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith(names[0] + ".") for n in moved), moved
    assert all(p.requires_grad for p in tuned.model.parameters()) and len(tuned.history.train_loss) == 3 and tuned.seconds > 0


@pytest.mark.slow
def test_the_study_on_smollm2_holds_its_bands():
    """The real pretrained model, notebook 11's fine-tuning of its last two MLPs (the ``small`` study, from the
    shared cache: the warm-up computes it before the tests, about 6 min without it): the canary stands out
    after fine-tuning and not before, the oracle does not know it, and Fisher Removal lands within 2 bits of
    the oracle with perplexity at most 10 % above the fine-tuned model's (the tiny profile's study only
    checks that the reproduction runs end to end)."""
    cfg = PretrainedLLMConfig.for_profile("small")
    result, _ = run_pretrained_study(cfg, seed=0, device="cpu", progress=False)
    assert result["model_class"] == "LlamaForCausalLM" and set(result["models"]) == {"pretrained", "fine_tuned", "oracle", *cfg.methods}
    s = pretrained_summary(result)
    controls = [result["models"]["fine_tuned"]["exposure"][c["name"]] for c in result["canaries"] if c["insertions"] == 0]
    assert s["fine_tuned"]["target"] >= 10 and controls and max(controls) <= 4  # memorised; every control low
    assert s["pretrained"]["target"] < 4 and s["oracle"]["target"] < 4  # neither ever saw it
    assert abs(s["fisher_removal"]["gap_to_oracle"]) <= PRETRAINED_BANDS.exposure_bits == 2
    assert s["fisher_removal"]["perplexity_ratio"] <= 1.10 and s["fisher_removal"]["verdict"] == "at the retrained model"
    assert 0 < result["n_trainable"] < 0.1 * result["n_parameters"]
