"""DP-SGD through Opacus (notebook 08): clipping, the noise-free step, the accountant, GPT-2's
position embedding, errors, and the privacy effect on the tiny memorisation run."""
import copy
import math

import pytest
import torch

from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.core.training import TrainConfig
from tutorial_lib.experiments.dp_comparison import run_dp_study
from tutorial_lib.privacy.dp import (
    DPConfig,
    backward,
    check_opacus_compatible,
    epsilon_spent,
    make_private,
    noise_multiplier_for,
    train_dp_language_model,
    window_dataset,
    window_loss,
)


def tiny_gpt2(dtype=torch.float32):
    return make_model(ModelConfig(n_layer=2, n_embd=16, n_head=2, n_positions=16), vocab_size=32, seed=0, dtype=dtype)


def windows(n=6, length=9, seed=0):
    return torch.randint(0, 32, (n, length), generator=torch.Generator().manual_seed(seed))


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def private_sgd(model, data, batch_size, noise, clip, lr=1.0):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    return make_private(model, optimizer, loader, noise, clip, poisson_sampling=False)


def test_opacus_per_sample_gradients_match_a_loop():
    """Every parameter's per-sample gradient under Opacus (HF Conv1D through the library's grad
    sampler, embeddings, LayerNorm, the tied head) equals the gradient of that window's loss
    alone, in float64."""
    from transformers.pytorch_utils import Conv1D

    data = windows(3)
    model = tiny_gpt2(torch.float64)
    expected = [torch.autograd.grad(window_loss(model, data[i:i + 1]), list(model.parameters())) for i in range(3)]
    run = private_sgd(model, data, batch_size=3, noise=0.0, clip=1.0)
    private, loader = run.model, run.loader
    assert any(isinstance(m, Conv1D) for m in model.modules())
    (batch,) = next(iter(loader))
    backward(window_loss(private, batch))
    for j, p in enumerate(model.parameters()):
        assert p.grad_sample.shape == (3, *p.shape)
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], expected[i][j], rtol=1e-10, atol=1e-12)
    private._close()


def test_clipped_per_example_gradients_never_exceed_the_bound():
    bound = 1e-3  # far below these examples' gradient norms, so every one is clipped
    data = windows(5)
    for i in range(len(data)):
        model = tiny_gpt2(torch.float64)
        before = flat(model)
        raw = torch.autograd.grad(window_loss(model, data[i:i + 1]), list(model.parameters()))
        assert torch.sqrt(sum((g ** 2).sum() for g in raw)) > 10 * bound
        run = private_sgd(model, data[i:i + 1], batch_size=1, noise=0.0, clip=bound)
        private, optimizer, loader = run.model, run.optimizer, run.loader
        (batch,) = next(iter(loader))
        optimizer.zero_grad()
        backward(window_loss(private, batch))
        optimizer.step()  # SGD with lr 1, one example: the step is minus its clipped gradient
        step = torch.linalg.vector_norm(flat(model) - before)
        assert step <= bound * (1 + 1e-6)
        assert step > 0.99 * bound  # clipped to the bound, not to zero
        private._close()


def test_noise_free_unclipped_dp_step_equals_plain_sgd():
    data = windows(4)
    model = tiny_gpt2(torch.float64)
    plain = copy.deepcopy(model)
    run = private_sgd(model, data, batch_size=4, noise=0.0, clip=1e12, lr=0.1)
    private, optimizer, loader = run.model, run.optimizer, run.loader
    (batch,) = next(iter(loader))
    assert torch.equal(batch, data)
    optimizer.zero_grad()
    backward(window_loss(private, batch))
    optimizer.step()
    private._close()
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1)
    sgd.zero_grad()
    window_loss(plain, data).backward()
    sgd.step()
    assert torch.linalg.vector_norm(flat(plain) - flat(tiny_gpt2(torch.float64))) > 1e-3  # the step did something
    torch.testing.assert_close(flat(model), flat(plain), rtol=0, atol=1e-12)


def test_epsilon_falls_as_the_noise_grows_and_calibration_round_trips():
    eps = [epsilon_spent(sigma, sample_rate=0.01, steps=500, delta=1e-5) for sigma in (0.6, 0.8, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert epsilon_spent(0.0, 0.01, 500, 1e-5) == math.inf
    for target in (1.0, 3.0, 8.0):
        sigma = noise_multiplier_for(target, 1e-5, 0.01, 500)
        assert target - 0.05 <= epsilon_spent(sigma, 0.01, 500, 1e-5) <= target
    assert noise_multiplier_for(1.0, 1e-5, 0.01, 500) > noise_multiplier_for(8.0, 1e-5, 0.01, 500)


def test_position_embedding_per_sample_gradients_have_the_batch_dimension():
    data = windows(3)
    model = tiny_gpt2()
    run = private_sgd(model, data, batch_size=3, noise=0.0, clip=1.0)
    private, optimizer, loader = run.model, run.optimizer, run.loader
    (batch,) = next(iter(loader))
    backward(window_loss(private, batch))
    wpe = model.transformer.wpe.weight
    assert wpe.grad_sample.shape == (3, *wpe.shape)
    optimizer.zero_grad()
    # the pitfall the library avoids: without whole-batch position ids, GPT-2's positions have batch size 1
    backward(private(input_ids=batch[:, :-1], use_cache=False).logits.sum())
    assert wpe.grad_sample.shape[0] == 1
    private._close()


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_epsilon=0.0), "target_epsilon"), (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(target_epsilon=math.inf), "target_epsilon"), (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"),
    (dict(delta=1.5), "delta"), (dict(max_grad_norm=0.0), "max_grad_norm"), (dict(max_grad_norm=-1.0), "max_grad_norm"),
    (dict(max_grad_norm=math.inf), "max_grad_norm .*positive finite"),
    (dict(accountant="moments"), "moments"), (dict(target_epsilon=None), "target_epsilon or a noise_multiplier"),
    (dict(target_epsilon=None, noise_multiplier=-0.5), "noise_multiplier"),
])
def test_bad_privacy_settings_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPConfig(**kwargs)


def test_bad_values_in_the_accounting_functions_are_errors():
    with pytest.raises(ValueError, match="target_epsilon"):
        noise_multiplier_for(0.0, 1e-5, 0.01, 100)
    with pytest.raises(ValueError, match="delta"):
        noise_multiplier_for(1.0, 2.0, 0.01, 100)
    with pytest.raises(ValueError, match="sample_rate"):
        epsilon_spent(1.0, 0.0, 100, 1e-5)
    with pytest.raises(ValueError, match="max_grad_norm"):
        private_sgd(tiny_gpt2(), windows(2), 2, noise=1.0, clip=0.0)


def test_a_layer_opacus_cannot_handle_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\)"):
        check_opacus_compatible(model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3)), batch_size=2)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, 1.0, 1.0)
    check_opacus_compatible(tiny_gpt2())  # GPT-2 is fine


def test_window_dataset_and_its_errors():
    ds = window_dataset(torch.arange(50), block_size=9)
    assert len(ds) == 5 and ds[1][0].tolist() == list(range(10, 20))
    with pytest.raises(ValueError, match="fewer than 2 windows"):
        window_dataset(torch.arange(15), block_size=9)


def test_whole_line_windows_never_cut_a_protected_line():
    from tutorial_lib.privacy.dp import whole_line_windows

    lines = [[1] * 7, [2] * 4, [3] * 9, [4] * 4, [5] * 3]  # width 10: line 1 (2s) and line 3 (4s) are the canaries
    ds = whole_line_windows(lines, block_size=9, keep_whole={1, 3}, pad_id=0)
    windows, masks = ds.tensors
    assert windows.shape[1] == 10 and masks.shape == windows.shape
    for w, m in zip(windows.tolist(), masks.tolist()):
        real = [t for t, keep in zip(w, m) if keep]
        assert real == w[: len(real)] and all(t == 0 for t in w[len(real):])  # padding only at the end
        for canary in (2, 4):
            assert real.count(canary) in (0, 4)  # each protected line whole, in one window
    flat = [t for w, m in zip(windows.tolist(), masks.tolist()) for t, keep in zip(w, m) if keep]
    assert flat == [t for line in lines for t in line]  # every token, in order, once
    with pytest.raises(ValueError, match="cannot stay whole"):
        whole_line_windows([[1] * 12, [2] * 30], block_size=9, keep_whole={0})


def test_masked_window_loss_is_the_mean_over_real_targets():
    model = tiny_gpt2()
    windows = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(0))
    full = torch.ones_like(windows)
    assert torch.allclose(window_loss(model, windows, full), window_loss(model, windows))
    mask = full.clone()
    mask[0, 5:] = 0  # the first window has 5 real tokens: 4 targets
    expected = torch.stack([window_loss(model, windows[:1, :5]), window_loss(model, windows[1:2]), window_loss(model, windows[2:3])]).mean()
    assert torch.allclose(window_loss(model, windows, mask), expected, atol=1e-6)


def test_dp_training_is_seeded_and_reports_what_it_spent():
    ids = torch.randint(0, 32, (16 * 9 * 8,), generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=6, batch_size=8, block_size=8, lr=1e-2, warmup_steps=2, eval_every=3, eval_blocks=2)
    runs = []
    for _ in range(2):
        model = tiny_gpt2()
        history, privacy = train_dp_language_model(model, ids, ids[:200], cfg, DPConfig(target_epsilon=3.0), seed=4, progress=False)
        runs.append((flat(model), history, privacy))
    assert torch.equal(runs[0][0], runs[1][0])
    privacy = runs[0][2]
    assert privacy["n_windows"] == 128 and privacy["delta"] == pytest.approx(1 / 128)
    assert privacy["sample_rate"] == pytest.approx(8 / 128)
    assert 2.95 <= privacy["epsilon"] <= 3.0 and privacy["noise_multiplier"] > 0
    assert runs[0][1].val_steps == [3, 6]
    other = tiny_gpt2()
    train_dp_language_model(other, ids, ids[:200], cfg, DPConfig(target_epsilon=3.0), seed=5, progress=False)
    assert not torch.equal(flat(other), runs[0][0])
    with pytest.warns(UserWarning, match=r"delta = 0.1 is above 1/n = 0.00781 for n = 128 training windows"):
        train_dp_language_model(tiny_gpt2(), ids, ids[:200], cfg, DPConfig(target_epsilon=3.0, delta=0.1), seed=5, progress=False)


def test_privacy_lowers_the_exposure_of_the_100x_canary_at_tiny(tiny_cache, monkeypatch):
    """Notebook 08's claim at the tiny profile: at ε = 1 the 100×-inserted canary is far less
    exposed than without privacy, and validation perplexity is higher, against the ordinary run and
    against σ = 0 through the same pipeline (whose windows keep every canary occurrence whole)."""
    from tutorial_lib.experiments.memorization import MemorizationConfig

    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tiny_cache))
    cfg = MemorizationConfig.for_profile("tiny")
    result, _ = run_dp_study(cfg, epsilons=(1.0,), seed=0, progress=False)
    private, matched, dp1 = result["rows"]
    carol = next(c["name"] for c in result["canaries"] if c["insertions"] == 100)
    assert private["label"] == "non-private" and dp1["target_epsilon"] == 1.0
    assert matched["matched"] and matched["noise_multiplier"] == 0.0 and matched["epsilon"] is None
    assert 0.95 <= dp1["epsilon"] <= 1.0
    for baseline in (private, matched):
        assert dp1["exposure"][carol] <= baseline["exposure"][carol] - 3.0
        assert dp1["val_perplexity"] > baseline["val_perplexity"]
