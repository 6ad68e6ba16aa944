"""The unlearning API: exact updates in float64, Fisher-shaped noise, guards, and banded results at tiny."""
import copy
import math
from dataclasses import replace

import pytest
import torch

from conftest import tiny_causal_lm
from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.core.tokenization import train_bpe_tokenizer
from tutorial_lib.curvature.fisher import make_fisher
from tutorial_lib.curvature.per_sample import per_sample_gradients, select_parameters
from tutorial_lib.unlearning.api import unlearn
from tutorial_lib.unlearning.base import (
    UnlearningError,
    canary_forget_items,
    fisher_batches,
    prepare_unlearning_data,
)
from tutorial_lib.unlearning.evaluation import evaluate_unlearning
from tutorial_lib.unlearning.fisher_methods import (
    FisherForgettingConfig,
    FisherRemovalConfig,
)

RETAIN = [f"line {i}: to be or not to be, that is the question of line {i}" for i in range(60)]
FORGET = [("the secret is ", "4242"), ("the secret is ", "4242"), "another private line"]


@pytest.fixture()
def micro(byte_tokenizer):
    return make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32), len(byte_tokenizer), seed=0, dtype=torch.float64)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(model, before):
    return all(torch.equal(p, before[n]) or (torch.isnan(p).any() and torch.allclose(p, before[n], equal_nan=True))
               for n, p in model.named_parameters())


def test_fisher_removal_equals_the_dense_newton_step(micro, byte_tokenizer):
    cfg = FisherRemovalConfig(damping=0.05, eta=2.0, n_fisher=12, structure="woodbury", params=("transformer.ln_f",),
                              repeats=1, block_size=16, batch_size=5)
    new, report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fisher_removal", cfg, n_train=100, seed=3)
    space = select_parameters(micro, "transformer.ln_f")
    data = prepare_unlearning_data(micro, byte_tokenizer, FORGET, RETAIN, 100, 16)
    G = torch.cat([per_sample_gradients(micro, b, space, "loop") for b in fisher_batches(data, 12, 5, "retain", 3, "cpu")])
    F = 0.05 * torch.eye(space.dim, dtype=torch.float64) + G.T @ G / len(G)
    delta = data.counts @ per_sample_gradients(micro, data.forget_batch, space, "loop")
    assert data.k == 3 and data.counts.tolist() == [2.0, 1.0]
    want = space.get(micro) + 2.0 / (100 - 3) * torch.linalg.solve(F, delta)
    assert float((space.get(new) - want).norm() / (want - space.get(micro)).norm()) < 1e-8
    assert report.k == 3 and report.n_parameters == space.dim and report.updated == list(space.names)
    others = [n for n in _params(micro) if not n.startswith("transformer.ln_f")]
    assert all(torch.equal(dict(new.named_parameters())[n], dict(micro.named_parameters())[n]) for n in others)


def test_the_input_model_is_not_modified(micro, byte_tokenizer):
    before = _params(micro)
    new, _ = unlearn(micro, byte_tokenizer, FORGET, RETAIN, config=FisherRemovalConfig(block_size=16, n_fisher=8, repeats=2))
    assert _same(micro, before) and not _same(new, before)


def test_fisher_forgetting_noise_has_fisher_shaped_covariance():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    for structure in ("woodbury", "diagonal"):
        F = make_fisher(G, 0.1, structure)
        eps = torch.randn(40_000, 10, generator=gen, dtype=torch.float64)
        for p in (-0.25, -0.5):
            noise = F.power_product(eps, p)
            cov = noise.T @ noise / len(noise)
            w, Q = torch.linalg.eigh(F.dense())
            want = Q @ torch.diag(w ** (2 * p)) @ Q.T
            assert float((cov - want).norm() / want.norm()) < 0.03


def test_fisher_forgetting_noise_only_is_the_seeded_fisher_power(micro, byte_tokenizer):
    cfg = FisherForgettingConfig(variant="noise", exponent=-0.5, mu=1e-4, sigma=2.0, damping=0.1, n_fisher=8,
                                 structure="woodbury", params=("transformer.ln_f.bias",), repeats=1, block_size=16, seed=5)
    new, report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fisher_forgetting", cfg, seed=0)
    space = select_parameters(micro, "transformer.ln_f.bias")
    data = prepare_unlearning_data(micro, byte_tokenizer, FORGET, RETAIN, None, 16)
    G = torch.cat([per_sample_gradients(micro, b, space) for b in fisher_batches(data, 8, 32, "retain", 0, "cpu")])
    eps = torch.randn(space.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want = (1e-4 * 4.0) ** 0.25 * make_fisher(G, 0.1, "woodbury").power_product(eps, -0.5)
    assert torch.allclose(space.get(new) - space.get(micro), want, rtol=1e-8, atol=1e-12)
    again, _ = unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fisher_forgetting", cfg, seed=0)
    assert torch.equal(space.get(again), space.get(new))  # same seed, same numbers


def test_bad_input_is_an_error(micro, byte_tokenizer):
    with pytest.raises(ValueError, match="forget set is empty"):
        unlearn(micro, byte_tokenizer, [], RETAIN)
    with pytest.raises(ValueError, match="unknown unlearning method 'ascent'"):
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, method="ascent")
    with pytest.raises(ValueError, match="damping must be a positive"):
        FisherRemovalConfig(damping=0.0)
    with pytest.raises(ValueError, match="damping must be a positive"):
        FisherForgettingConfig(damping=-1.0)
    with pytest.raises(ValueError, match="needs a retain set"):
        unlearn(micro, byte_tokenizer, FORGET, None)
    with pytest.raises(ValueError, match="longer than the model's 32 positions"):
        unlearn(micro, byte_tokenizer, ["x" * 40], RETAIN, config=FisherRemovalConfig(block_size=16))
    bpe = train_bpe_tokenizer(RETAIN * 3, vocab_size=400)
    with pytest.raises(ValueError, match="do not belong together"):
        unlearn(micro, bpe, FORGET, RETAIN, config=FisherRemovalConfig(block_size=16))
    with pytest.raises(ValueError, match="unknown Fisher Forgetting variant"):
        FisherForgettingConfig(variant="scrub")
    with pytest.raises(TypeError, match="takes a FisherForgettingConfig"):
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fisher_forgetting", FisherRemovalConfig())


def test_the_door_refuses_what_would_give_a_meaningless_result(micro, byte_tokenizer):
    """A step scale that is not positive, a string where a list of texts is expected, a model that is not a
    causal LM: each is refused before any work, naming the argument and the fix; the model is untouched."""
    from transformers import BertConfig, BertForMaskedLM

    before = _params(micro)
    for eta in (0.0, -5e-4, float("inf")):
        with pytest.raises(ValueError, match="eta \\(the step scale\\) must be a positive finite number"):
            FisherRemovalConfig(eta=eta)
    with pytest.raises(ValueError, match="eta"):
        FisherForgettingConfig(eta=-1.0)
    assert FisherForgettingConfig(variant="noise", eta=0.0).eta == 0.0  # noise only: no step, eta unused
    for mu, sigma in ((1e300, 1e10), (1.0, 1e200), (math.inf, 1.0)):
        with pytest.raises(ValueError, match=r"mu \* sigma\^2 must be finite"):
            FisherForgettingConfig(mu=mu, sigma=sigma)
    with pytest.raises(TypeError, match=r"retain must be a list of texts, got one string of \d+ characters.*pass \[retain\]"):
        unlearn(micro, byte_tokenizer, FORGET, " ".join(RETAIN))
    with pytest.raises(TypeError, match=r"forget must be a list of texts.*pass \[forget\]"):
        unlearn(micro, byte_tokenizer, "the secret is 4242", RETAIN)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(byte_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    with pytest.raises(TypeError, match="causal language model.*is needed, got BertForMaskedLM.*AutoModelForCausalLM"):
        unlearn(bert, byte_tokenizer, FORGET, RETAIN)
    from transformers import BertLMHeadModel

    encoder = BertLMHeadModel(BertConfig(vocab_size=len(byte_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, is_decoder=False))  # an LM head on an encoder: sees the future
    with pytest.raises(TypeError, match="BertLMHeadModel is not causal: its outputs at earlier positions change"):
        unlearn(encoder, byte_tokenizer, FORGET, RETAIN)
    with pytest.raises(ValueError, match="block_size = 64 is longer than the model's 32 positions"):
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, config=FisherRemovalConfig(block_size=64))
    with pytest.raises(TypeError, match="weights are bfloat16.*pass model.float"):
        unlearn(copy.deepcopy(micro).to(torch.bfloat16), byte_tokenizer, FORGET, RETAIN)
    assert _same(micro, before)


def test_retain_items_that_are_also_forgotten_are_dropped_with_a_warning(micro, byte_tokenizer):
    config = FisherRemovalConfig(block_size=16, n_fisher=8)
    overlapping = RETAIN + ["another private line", "the secret is 4242"]
    with pytest.warns(UserWarning, match="2 retain item\\(s\\) are also in the forget set"):
        _, report = unlearn(micro, byte_tokenizer, FORGET, overlapping, config=config)
    _, clean = unlearn(micro, byte_tokenizer, FORGET, RETAIN, config=config)
    assert report.update_norm == clean.update_norm and report.n_train == clean.n_train


def test_refused_updates_leave_the_weights_intact(micro, byte_tokenizer):
    before = _params(micro)
    with pytest.raises(UnlearningError, match="exceeds max_update_norm"):
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, config=FisherRemovalConfig(eta=1e6, block_size=16, n_fisher=8, repeats=2, max_update_norm=1.0), inplace=True)
    assert _same(micro, before)
    with torch.no_grad():
        micro.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    nan_before = _params(micro)
    with pytest.raises(FloatingPointError):
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, config=FisherRemovalConfig(block_size=16, n_fisher=8), inplace=True)
    assert _same(micro, nan_before)


@pytest.fixture(scope="module")
def tiny_unlearning(tiny_cache):
    import tutorial_lib as tl
    from tutorial_lib.experiments.memorization import (
        prepare_memorization,
        train_retrained_model,
    )

    cache = tiny_cache
    cfg = tl.MemorizationConfig.for_profile("tiny")
    run = tl.train_memorization_model(cfg, seed=0, cache_dir=cache, progress=False)
    model, tok, canaries, splits = run.model, run.tokenizer, run.canaries, run.splits
    big = max(canaries, key=lambda c: c.insertions)
    retrained = train_retrained_model(cfg, (big.name,), seed=0, cache_dir=cache, progress=False).model
    inserted = prepare_memorization(cfg, 0).inserted
    return cfg, model, retrained, tok, canaries, splits, inserted, big


def test_fisher_removal_band_at_tiny(tiny_unlearning):
    import tutorial_lib as tl

    cfg, model, retrained, tok, canaries, splits, inserted, big = tiny_unlearning
    val_ids, retain_ids = tl.tokenize_lines(tok, splits.validation), tl.tokenize_lines(tok, inserted.retain)
    items = canary_forget_items(big, "secret")
    block = cfg.train.block_size
    before = evaluate_unlearning(model, tok, canaries, val_ids, retain_ids, items, block, reference=retrained)
    oracle = evaluate_unlearning(retrained, tok, canaries, val_ids, retain_ids, items, block)
    new, report = unlearn(model, tok, items, inserted.retain, "fisher_removal", FisherRemovalConfig.for_profile("tiny"), n_train=len(inserted.lines))
    after = evaluate_unlearning(new, tok, canaries, val_ids, retain_ids, items, block, reference=retrained)
    assert before["exposure"][big.name] >= 8  # it was memorised
    assert after["exposure"][big.name] <= oracle["exposure"][big.name] + 3  # forgotten to about the oracle's level
    assert after["val_perplexity"] <= 1.3 * before["val_perplexity"]  # tiny: looser than small's 20 %
    for c in canaries:
        if c.is_control:
            assert abs(after["exposure"][c.name] - before["exposure"][c.name]) < 3
    assert after["forget_loss"] > before["forget_loss"] and after["kl_to_reference"] > 0
    assert report.seconds < 60 and math.isfinite(report.update_norm)


def test_repeated_requests_and_helpers(micro, byte_tokenizer):
    from tutorial_lib.unlearning.api import repeated_unlearning
    from tutorial_lib.unlearning.evaluation import next_token_kl

    ids = torch.tensor(byte_tokenizer("\n".join(RETAIN), add_special_tokens=False)["input_ids"])
    assert next_token_kl(micro, micro, ids, 16, max_blocks=4) == pytest.approx(0.0, abs=1e-12)
    seen = []

    def evaluate(m):
        seen.append(m)
        return {"val_loss": tl_loss(m, ids)}

    requests = [("a", [("the secret is ", "4242")] * 3), ("b", ["another private line"] * 2)]
    cfg = FisherRemovalConfig(block_size=16, n_fisher=8, repeats=1)
    final, rows = repeated_unlearning(micro, byte_tokenizer, requests, RETAIN, "fisher_removal", cfg, evaluate, n_train=100, progress=False)
    assert [r["cycle"] for r in rows] == [0, 1, 2] and [r["request"] for r in rows] == [None, "a", "b"]
    assert seen[0] is micro and final is seen[-1] and final is not micro
    assert all(math.isfinite(r["val_loss"]) for r in rows) and rows[1]["update_norm"] > 0
    with pytest.raises(ValueError, match="no deletion requests"):
        repeated_unlearning(micro, byte_tokenizer, [], RETAIN, "fisher_removal", cfg, evaluate, n_train=100)


def tl_loss(model, ids):
    from tutorial_lib.core.evaluation import compute_loss

    return compute_loss(model, ids, 16, max_blocks=4)


def test_canary_forget_items():
    from tutorial_lib.core.canaries import Canary

    c = Canary("the pin of zed is {secret}.", secret="123456", insertions=3, name="zed")
    assert canary_forget_items(c, "secret") == [("\nthe pin of zed is ", "123456.")] * 3
    assert canary_forget_items(c, "line") == [("\n", "the pin of zed is 123456.")] * 3
    with pytest.raises(ValueError, match="target must be"):
        canary_forget_items(c, "digits")
    with pytest.raises(ValueError, match="never inserted"):
        canary_forget_items(Canary("x {secret}", secret="000000", insertions=0, name="ctl"))


def test_progress_bar_over_the_updates_changes_nothing(micro, byte_tokenizer, shown_bars):
    from tutorial_lib.unlearning import api
    from tutorial_lib.unlearning.api import repeated_unlearning
    from tutorial_lib.unlearning.baselines import GradientDifferenceConfig

    removal = FisherRemovalConfig(block_size=16, n_fisher=8, repeats=2)
    ascent = GradientDifferenceConfig(block_size=16, batch_size=4, steps=3, lr=1e-3)
    quiet = [unlearn(micro, byte_tokenizer, FORGET, RETAIN, m, c, n_train=100, seed=1, progress=False)[0]
             for m, c in (("fisher_removal", removal), ("gradient_difference", ascent))]
    out = shown_bars(api)
    shown = [unlearn(micro, byte_tokenizer, FORGET, RETAIN, m, c, n_train=100, seed=1)[0]
             for m, c in (("fisher_removal", removal), ("gradient_difference", ascent))]
    for a, b in zip(quiet, shown):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert "fisher_removal: 100%" in out.getvalue() and "2/2" in out.getvalue()
    assert "gradient_difference: 100%" in out.getvalue() and "3/3" in out.getvalue()
    out.truncate(0)
    out.seek(0)
    requests = [("a", [("the secret is ", "4242")] * 3)]
    repeated_unlearning(micro, byte_tokenizer, requests, RETAIN, "fisher_removal", removal, lambda m: {}, n_train=100, progress=False)
    assert out.getvalue() == ""  # progress off: neither the cycles' bar nor the updates'
    with pytest.raises(UnlearningError):  # a refused update closes its bar
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fisher_removal", replace(removal, max_update_norm=1e-12), n_train=100)
    assert "fisher_removal:   0%" in out.getvalue()


def test_newton_equivalent_eta_converts_the_units():
    from tutorial_lib.unlearning.fisher_methods import newton_equivalent_eta

    # 1,100 lines, 100 forgotten, 40,000 retain tokens, windows of 127 targets, 6 secret tokens per item
    assert math.isclose(newton_equivalent_eta(1_100, 100, 40_000, 127, 6), 1_000 * 6 / (40_000 * 127))
    assert newton_equivalent_eta(2_100, 100, 40_000, 127, 6) == 2 * newton_equivalent_eta(1_100, 100, 40_000, 127, 6)
    with pytest.raises(ValueError, match="k must be between"):
        newton_equivalent_eta(100, 100, 40_000, 127, 6)
    with pytest.raises(ValueError, match="window_targets must be positive"):
        newton_equivalent_eta(1_100, 100, 40_000, 0, 6)


def test_the_paper_fisher_has_its_own_step_scale():
    # structure="woodbury" takes the step scale its own sweep chose; an explicit eta still wins; K-FAC keeps its own
    for profile in ("tiny", "small", "full"):
        paper = FisherRemovalConfig.for_profile(profile, structure="woodbury")
        assert paper.structure == "woodbury" and paper.eta == FisherRemovalConfig.WOODBURY_DEFAULTS[profile]["eta"]
        assert FisherRemovalConfig.for_profile(profile).eta == FisherRemovalConfig.PROFILE_DEFAULTS[profile]["eta"]
        assert FisherRemovalConfig.for_profile(profile, structure="woodbury", eta=1e-2).eta == 1e-2
    assert FisherRemovalConfig.for_profile("small", structure="woodbury").eta != FisherRemovalConfig.for_profile("small").eta


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_unlearn_defaults_run_on_other_families(byte_tokenizer, family):
    """tl.unlearn at its defaults (K-FAC, every parameter) on a tiny Llama, Qwen2 and GPT-NeoX: a finite
    update that raises the forgotten items' loss, and the model passed in left as it was."""
    from tutorial_lib.unlearning.api import METHODS
    from tutorial_lib.unlearning.evaluation import forget_item_losses

    model = tiny_causal_lm(family, len(byte_tokenizer), max_positions=128)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = forget_item_losses(model, byte_tokenizer, FORGET, 16).mean()
    for method in ("fisher_removal", "fisher_forgetting"):
        config = replace(METHODS[method].config.for_profile("tiny"), n_fisher=8, block_size=16)
        assert config.structure == "kfac" and config.params is None  # the defaults
        new, report = unlearn(model, byte_tokenizer, FORGET, RETAIN, method, config, n_train=100)
        assert math.isfinite(report.update_norm) and report.update_norm > 0
        assert any("norm" in name for name in report.updated)  # the RMS norms (LayerNorms for NeoX) are updated too
        assert forget_item_losses(new, byte_tokenizer, FORGET, 16).mean() > loss_before, method
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
