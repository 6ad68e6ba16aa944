"""Per-sample gradients against a batch-1 loop, in float64, for a tiny GPT-2 and a small MLP."""
import pytest
import torch
from torch import nn

from conftest import tiny_causal_lm
from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.curvature.outputs import (
    classifier_outputs,
    lm_outputs,
    make_lm_batch,
    sample_losses,
)
from tutorial_lib.curvature.per_sample import (
    gradient_matrix,
    per_sample_gradients,
    select_parameters,
)


@pytest.fixture(scope="module")
def gpt2():
    return make_model(ModelConfig.for_profile("tiny"), vocab_size=257, seed=0, dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def padded_batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 257, (4, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[3, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.LayerNorm(7), nn.Linear(7, 3)).double()


@pytest.mark.parametrize("method", ["hooks", "vmap", "opacus"])
def test_every_parameter_of_tiny_gpt2_matches_the_loop(gpt2, padded_batch, method):
    space = select_parameters(gpt2)
    assert "transformer.wte.weight" in space.names and "lm_head.weight" not in space.names  # tied: once
    ref = space.unflatten(per_sample_gradients(gpt2, padded_batch, space, "loop"))
    got = space.unflatten(per_sample_gradients(gpt2, padded_batch, space, method))
    for name in space.names:
        scale = ref[name].norm()
        assert scale > 0, name
        assert float((got[name] - ref[name]).norm() / scale) < 1e-6, name


def test_loop_equals_autograd_on_one_unpadded_example(gpt2, padded_batch):
    """The reference itself: example 3 alone, trimmed to its 6 tokens, through plain autograd."""
    space = select_parameters(gpt2)
    row = per_sample_gradients(gpt2, padded_batch, space, "loop")[3]
    ids = padded_batch["input_ids"][3:4, :6]
    gpt2.zero_grad()
    logits = gpt2(input_ids=ids).logits[0, :-1]  # (Hugging Face's own loss upcasts to float32)
    nn.functional.cross_entropy(logits, ids[0, 1:]).backward()
    want = space.flatten([p.grad for p in space.parameters(gpt2)])
    gpt2.zero_grad(set_to_none=True)
    assert float((row - want).norm() / want.norm()) < 1e-10


def test_per_sample_gradients_sum_to_the_batch_gradient(gpt2, padded_batch):
    space = select_parameters(gpt2, ["transformer.h.1", "lm_head"])
    G = per_sample_gradients(gpt2, padded_batch, space)
    loss = sample_losses(lm_outputs(gpt2, padded_batch)).sum()
    want = space.flatten(torch.autograd.grad(loss, space.parameters(gpt2)))
    assert float((G.sum(0) - want).norm() / want.norm()) < 1e-10


def test_small_torch_model_matches_the_loop():
    model = _mlp()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(6, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (6,), generator=gen))
    ref = per_sample_gradients(model, batch, method="loop", outputs_fn=classifier_outputs)
    for method in ["hooks", "vmap", "opacus"]:
        got = per_sample_gradients(model, batch, method=method, outputs_fn=classifier_outputs)
        assert float((got - ref).norm() / ref.norm()) < 1e-10, method


def test_parameter_subsets(gpt2):
    assert select_parameters(gpt2, "lm_head").names == ("transformer.wte.weight",)
    sub = select_parameters(gpt2, ["transformer.h.1.mlp", "transformer.ln_f.bias"])
    assert sub.names == ("transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias",
                         "transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.bias")
    v = sub.get(gpt2)
    assert torch.equal(sub.flatten(sub.unflatten(v)), v)


def test_bad_input_is_an_error(gpt2, padded_batch):
    with pytest.raises(ValueError, match="'transformer.h.9' names no trainable parameter"):
        select_parameters(gpt2, ["transformer.h.9"])
    with pytest.raises(ValueError, match="subset is empty"):
        select_parameters(gpt2, [])
    with pytest.raises(ValueError, match="unknown per-sample gradient method 'jax'"):
        per_sample_gradients(gpt2, padded_batch, method="jax")
    empty = {k: v[:0] for k, v in padded_batch.items()}
    with pytest.raises(ValueError, match="batch is empty"):
        per_sample_gradients(gpt2, empty)
    with pytest.raises(ValueError, match="gradient set would be empty"):
        gradient_matrix(gpt2, [])


def test_unsupported_module_names_itself():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(3, dtype=torch.float64))

        def forward(self, x):
            return x * self.s

    model = nn.Sequential(nn.Linear(4, 3).double(), Scale())
    batch = (torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 2]))
    with pytest.raises(NotImplementedError, match="do not support Scale"):
        per_sample_gradients(model, batch, outputs_fn=classifier_outputs)
    G = per_sample_gradients(model, batch, method="loop", outputs_fn=classifier_outputs)
    assert G.shape == (2, 4 * 3 + 3 + 3)


def test_model_is_left_as_it_was(gpt2, padded_batch):
    before = {n: p.detach().clone() for n, p in gpt2.named_parameters()}
    for method in ["hooks", "opacus"]:
        per_sample_gradients(gpt2, padded_batch, method=method)
    assert not gpt2.training
    for n, p in gpt2.named_parameters():
        assert p.grad is None and not hasattr(p, "grad_sample") and torch.equal(p, before[n])
    assert not any(m._forward_hooks or m._backward_hooks for m in gpt2.modules())


def test_make_lm_batch_and_gradient_matrix(gpt2, byte_tokenizer):
    batch = make_lm_batch(byte_tokenizer, ["to be or not", "a longer line of text here"], max_length=16)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"][0].sum() == 12
    G, space = gradient_matrix(gpt2, [batch, batch], "transformer.ln_f")
    assert G.shape == (4, space.dim) and torch.equal(G[:2], G[2:])
    with pytest.raises(ValueError, match="at least two tokens"):
        make_lm_batch(byte_tokenizer, ["a"], max_length=8)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_other_families_match_the_loop(family):
    model = tiny_causal_lm(family, 64).double()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    space = select_parameters(model)
    norms = [n for n in space.names if "norm" in n]
    assert norms, "the family's norms are among the parameters"
    ref = space.unflatten(per_sample_gradients(model, batch, space, "loop"))
    got = space.unflatten(per_sample_gradients(model, batch, space, "hooks"))
    for name in space.names:
        scale = ref[name].norm()
        assert scale > 0, name
        assert float((got[name] - ref[name]).norm() / scale) < 1e-10, name


def test_rms_norms_and_a_changed_forward():
    # torch's own RMSNorm inside a small classifier: the hooks match the loop
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.RMSNorm(7, eps=1e-6), nn.Tanh(), nn.Linear(7, 3)).double()
    batch = (torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 1]))
    ref = per_sample_gradients(model, batch, method="loop", outputs_fn=classifier_outputs)
    got = per_sample_gradients(model, batch, outputs_fn=classifier_outputs)
    assert float((got - ref).norm() / ref.norm()) < 1e-12

    class ScaledEmbedding(nn.Embedding):  # as in Gemma: the forward scales the rows, which the hooks would miss
        def forward(self, ids):
            return super().forward(ids) * 3.0

    scaled = nn.Sequential(ScaledEmbedding(10, 4), nn.Flatten(), nn.Linear(8, 3)).double()
    with pytest.raises(NotImplementedError, match="do not support ScaledEmbedding"):
        per_sample_gradients(scaled, (torch.tensor([[1, 2], [3, 4]]), torch.tensor([0, 2])), outputs_fn=classifier_outputs)
