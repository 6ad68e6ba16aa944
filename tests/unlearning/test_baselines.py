"""First-order baselines (notebook 06) through ``unlearn``: exact optimiser steps in float64, guards and
the direction each method moves the forget and retain losses, on a one-layer GPT-2."""
import pytest
import torch

from tutorial_lib.core.evaluation import compute_loss
from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.curvature.outputs import lm_outputs, sample_losses
from tutorial_lib.curvature.per_sample import select_parameters
from tutorial_lib.unlearning import baselines
from tutorial_lib.unlearning.api import METHODS, unlearn
from tutorial_lib.unlearning.base import UnlearningError, prepare_unlearning_data
from tutorial_lib.unlearning.baselines import (
    FineTuneConfig,
    GradientAscentConfig,
    GradientDifferenceConfig,
    NPOConfig,
    forget_loss,
)

RETAIN = [f"line {i}: to be or not to be, that is the question of line {i}" for i in range(60)]
HELD_OUT = [f"line {i}: to be or not to be, that is the question of line {i}" for i in range(60, 90)]
FORGET = [("the secret is ", "4242"), ("the secret is ", "4242"), "another private line"]
EQUAL_TARGETS = [("the secret is ", "4242"), ("the secret is ", "4242"), ("my pin is ", "9317")]  # 4 byte tokens each
CONFIGS = {"gradient_ascent": GradientAscentConfig, "gradient_difference": GradientDifferenceConfig, "npo": NPOConfig,
           "fine_tune": FineTuneConfig}


@pytest.fixture()
def micro(byte_tokenizer):
    return make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32), len(byte_tokenizer), seed=0, dtype=torch.float64)


def _cfg(method, **kw):
    return CONFIGS[method](**{"block_size": 16, "batch_size": 4, **kw})


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(model, before):
    return all(torch.equal(p, before[n]) or (torch.isnan(p).any() and torch.allclose(p, before[n], equal_nan=True))
               for n, p in model.named_parameters())


def _forget_loss(model, tok, items=FORGET):
    with torch.no_grad():
        return float(forget_loss(model, prepare_unlearning_data(model, tok, items, None, n_train=100, block_size=16)))


def test_registered_with_documented_defaults():
    assert {m: METHODS[m].config for m in CONFIGS} == CONFIGS
    assert not METHODS["gradient_ascent"].needs_retain and not METHODS["npo"].needs_retain
    assert METHODS["gradient_difference"].needs_retain and METHODS["fine_tune"].needs_retain
    for cls in CONFIGS.values():
        tiny, small, full = cls.for_profile("tiny"), cls.for_profile("small", steps=3), cls.for_profile("full")
        table = cls.PROFILE_DEFAULTS
        assert (tiny.lr, tiny.steps, tiny.optimizer) == (table["tiny"]["lr"], table["tiny"]["steps"], "adam") and tiny.repeats == tiny.steps
        assert (small.lr, small.steps, small.repeats, small.batch_size, small.max_update_norm) == (table["small"]["lr"], 3, 3, 8, 100.0)
        assert (full.lr, full.steps) == (table["small"]["lr"], table["small"]["steps"])  # full reuses small's values
    assert (NPOConfig().beta, NPOConfig().retain_weight) == (0.1, 0.0)
    assert (GradientDifferenceConfig().forget_weight, GradientDifferenceConfig().retain_weight) == (1.0, 1.0)
    assert FineTuneConfig(params="transformer.ln_f").params == ("transformer.ln_f",)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_each_method_returns_a_new_model(method, micro, byte_tokenizer):
    before = _params(micro)
    new, report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, method, _cfg(method, lr=1e-2, steps=2), seed=1)
    assert _same(micro, before) and not _same(new, before)
    assert report.method == method and report.k == 3 and report.update_norm > 0
    steps = report.diagnostics["per_repeat"]
    assert len(steps) == 2 and all("forget_loss" in s for s in steps)
    assert ("retain_loss" in steps[0]) == (method in ("gradient_difference", "fine_tune"))
    assert ("npo_loss" in steps[0]) == (method == "npo")


@pytest.mark.parametrize("method", ["gradient_ascent", "gradient_difference", "npo"])
def test_forgetting_methods_raise_the_forget_loss(method, micro, byte_tokenizer):
    new, report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, method, _cfg(method, lr=1e-2, steps=5))
    start = _forget_loss(micro, byte_tokenizer)
    assert _forget_loss(new, byte_tokenizer) > start + 0.1
    assert report.diagnostics["per_repeat"][0]["forget_loss"] == pytest.approx(start, rel=1e-12)


def test_fine_tune_lowers_the_held_out_retain_loss(micro, byte_tokenizer):
    held_out = torch.tensor(byte_tokenizer("\n".join(HELD_OUT), add_special_tokens=False)["input_ids"])
    new, report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fine_tune", _cfg("fine_tune", lr=1e-2, steps=8))
    assert compute_loss(new, held_out, 16, max_blocks=8) < compute_loss(micro, held_out, 16, max_blocks=8) - 0.2
    losses = [s["retain_loss"] for s in report.diagnostics["per_repeat"]]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_zero_learning_rate_changes_nothing(method, optimizer, micro, byte_tokenizer):
    before = _params(micro)
    new, report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, method, _cfg(method, lr=0.0, steps=2, optimizer=optimizer))
    assert all(torch.equal(p, before[n]) for n, p in new.named_parameters()) and report.update_norm == 0.0


def test_gradient_difference_without_forget_term_is_fine_tuning(micro, byte_tokenizer):
    gd, gd_report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, "gradient_difference",
                            _cfg("gradient_difference", lr=1e-2, steps=3, forget_weight=0.0), seed=7)
    ft, ft_report = unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fine_tune", _cfg("fine_tune", lr=1e-2, steps=3), seed=7)
    ft_params = dict(ft.named_parameters())
    assert all(torch.equal(p, ft_params[n]) for n, p in gd.named_parameters())
    assert [s["retain_loss"] for s in gd_report.diagnostics["per_repeat"]] == [s["retain_loss"] for s in ft_report.diagnostics["per_repeat"]]
    other, _ = unlearn(micro, byte_tokenizer, FORGET, RETAIN, "fine_tune", _cfg("fine_tune", lr=1e-2, steps=3), seed=8)
    assert not torch.equal(dict(other.named_parameters())["transformer.wte.weight"], ft_params["transformer.wte.weight"])


def _npo_loss(model, batch, counts, reference, beta):
    out = lm_outputs(model, batch)
    tokens = torch.zeros(out.n_samples, dtype=out.weight.dtype).index_add(0, out.sample, out.weight)
    ratio = -sample_losses(out) * tokens - reference
    return (counts * -(2 / beta) * torch.nn.functional.logsigmoid(-beta * ratio)).sum() / counts.sum()


@pytest.mark.parametrize("beta", [1e-3, 1.0])
def test_npo_steps_are_exact(beta, micro, byte_tokenizer):
    """First SGD step: for any β, NPO's gradient at π_θ = π_ref is that of −mean_i log π(y_i|x_i), i.e.
    T × gradient ascent's when every target has T tokens. Second step: the reference stays the start model."""
    sgd = {"lr": 0.05, "optimizer": "sgd", "params": ("transformer.h.0.mlp", "transformer.ln_f")}
    ga, _ = unlearn(micro, byte_tokenizer, EQUAL_TARGETS, RETAIN, "gradient_ascent", _cfg("gradient_ascent", steps=1, **sgd))
    one, _ = unlearn(micro, byte_tokenizer, EQUAL_TARGETS, RETAIN, "npo", _cfg("npo", steps=1, beta=beta, **sgd))
    two, _ = unlearn(micro, byte_tokenizer, EQUAL_TARGETS, RETAIN, "npo", _cfg("npo", steps=2, beta=beta, **sgd))
    space = select_parameters(micro, list(sgd["params"]))
    start, ga_step, npo_step = space.get(micro), space.get(ga) - space.get(micro), space.get(one) - space.get(micro)
    assert float(ga_step.norm()) > 0 and torch.allclose(npo_step, 4 * ga_step, rtol=1e-9, atol=1e-13)

    data = prepare_unlearning_data(micro, byte_tokenizer, EQUAL_TARGETS, None, n_train=100, block_size=16)
    with torch.no_grad():
        out = lm_outputs(micro, data.forget_batch)
        reference = -sample_losses(out) * 4
    grads = torch.autograd.grad(_npo_loss(one, data.forget_batch, data.counts, reference, beta), space.parameters(one))
    want = -0.05 * space.flatten(grads)
    assert torch.allclose(space.get(two) - space.get(one), want, rtol=1e-9, atol=1e-13)
    if beta == 1.0:  # the reweighting σ(β · log-ratio) matters: a reference re-taken at step 2 would differ
        assert float((want - npo_step).norm() / want.norm()) > 1e-3
    assert torch.equal(space.get(micro), start)


def test_a_nan_update_is_refused_and_the_weights_restored(micro, byte_tokenizer, monkeypatch):
    calls = []
    real = forget_loss

    def poisoned(model, data):
        calls.append(1)
        return real(model, data) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(baselines, "forget_loss", poisoned)
    before = _params(micro)
    with pytest.raises(UnlearningError, match="NaN or inf \\(repeat 3\\)"):
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, "gradient_ascent", _cfg("gradient_ascent", lr=1e-2, steps=4), inplace=True)
    assert len(calls) == 3 and _same(micro, before)


def test_bad_configs_and_missing_retain_are_errors(micro, byte_tokenizer):
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got -0.1"):
        GradientAscentConfig(lr=-0.1)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got nan"):
        FineTuneConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got inf"):
        NPOConfig(lr=float("inf"))
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        GradientDifferenceConfig(steps=0)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        NPOConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="beta must be a positive finite number, got 0"):
        NPOConfig(beta=0)
    with pytest.raises(ValueError, match="retain_weight must be a finite number >= 0, got -1"):
        GradientDifferenceConfig(retain_weight=-1.0)
    with pytest.raises(ValueError, match="forget_weight must be a finite number >= 0, got -0.5"):
        GradientDifferenceConfig(forget_weight=-0.5)
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        FineTuneConfig.for_profile("huge")
    with pytest.raises(ValueError, match="needs a retain set"):
        unlearn(micro, byte_tokenizer, FORGET, None, "fine_tune", _cfg("fine_tune"))
    with pytest.raises(ValueError, match="needs a retain set"):
        unlearn(micro, byte_tokenizer, FORGET, None, "npo", _cfg("npo", retain_weight=1.0), n_train=100)
    with pytest.raises(TypeError, match="takes a NPOConfig"):
        unlearn(micro, byte_tokenizer, FORGET, RETAIN, "npo", GradientAscentConfig())


def test_gradient_ascent_needs_no_retain_set_and_callback_traces_every_step(micro, byte_tokenizer):
    seen = []

    def callback(step, model):
        seen.append(step)
        return {"forget_loss": _forget_loss(model, byte_tokenizer)}

    new, report = unlearn(micro, byte_tokenizer, FORGET, None, "gradient_ascent", _cfg("gradient_ascent", lr=1e-2, steps=3),
                          n_train=100, callback=callback)
    trace = report.diagnostics["trace"]
    assert seen == [1, 2, 3] and [t["step"] for t in trace] == [1, 2, 3]
    assert trace[-1]["forget_loss"] == pytest.approx(_forget_loss(new, byte_tokenizer), rel=1e-12)
    assert trace[0]["forget_loss"] < trace[-1]["forget_loss"]
