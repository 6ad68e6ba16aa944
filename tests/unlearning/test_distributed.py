"""Distributed per-sample gradients and Fisher products: two gloo processes against one, in float64.

One spawned group of two ranks computes everything (module fixture ``two_ranks``); the parent
compares it with the single-process library on the same tiny GPT-2, and with dense solves.
"""
import pytest
import torch

from tutorial_lib.curvature.fisher import DenseFisher, DiagonalFisher, WoodburyFisher
from tutorial_lib.curvature.per_sample import gradient_matrix, select_parameters
from tutorial_lib.unlearning.base import fisher_batches, prepare_unlearning_data
from tutorial_lib.unlearning.distributed import (
    check_replicated,
    gather_rows,
    require_process_group,
    run_distributed,
    shard,
    shard_batch,
    shard_bounds,
    world_info,
)
from tutorial_lib.unlearning.distributed_fisher import (
    DistributedFisher,
    distributed_forget_gradient,
    distributed_gradient_matrix,
    distributed_newton_step,
)
from tutorial_lib.unlearning.fisher_methods import (
    FisherRemovalConfig,
    build_fisher,
    forget_gradient,
)

SUBSET = ["transformer.h.1.ln_2", "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f"]  # d = 320
DAMPING = 1e-3
SEED = 0


def _problem():
    """The same model, data, parameter space and Fisher batches in every process."""
    from tutorial_lib.core.models import ModelConfig, make_model
    from tutorial_lib.core.tokenization import make_byte_tokenizer

    tokenizer = make_byte_tokenizer()
    model = make_model(ModelConfig.for_profile("tiny"), len(tokenizer), seed=SEED, dtype=torch.float64).eval()
    retain = [f"line {i}: the river runs under the old stone bridge, {i * 7 % 13} boats" for i in range(30)]
    forget = [("\nmy pin is ", "4187"), ("\nmy pin is ", "4187"), ("\ncall ", "555 0193"), "a line to forget"]
    data = prepare_unlearning_data(model, tokenizer, forget, retain, block_size=20)
    cfg = FisherRemovalConfig(structure="woodbury", damping=DAMPING, n_fisher=7, batch_size=2, eta=5e-4, params=tuple(SUBSET))
    space = select_parameters(model, SUBSET)
    batches = fisher_batches(data, cfg.n_fisher, cfg.batch_size, "retain", SEED, "cpu")  # sizes 2, 2, 2, 1
    return model, data, space, cfg, batches


def _vectors(dim):
    return torch.randn(2, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _messages(fn) -> str:
    try:
        fn()
    except Exception as err:  # what each rank saw
        return f"{type(err).__name__}: {err}"
    return "no error"


def _two_rank_worker() -> dict:
    """Runs on each rank of the spawned group."""
    rank, world = world_info()
    model, data, space, cfg, batches = _problem()
    V = _vectors(space.dim)
    G_local, _ = distributed_gradient_matrix(model, batches, space)
    F = DistributedFisher(G_local, DAMPING)
    F_cg = DistributedFisher(G_local, DAMPING, solver="cg", rtol=1e-12)
    G_all_params, _ = distributed_gradient_matrix(model, batches[:2], None, gather=True)
    newton = distributed_newton_step(model, data, space, cfg, SEED)
    delta, step = newton.delta, newton.step
    step_cg = cfg.eta / (data.n_train - data.k) * F_cg.inverse_product(delta)  # the same Fisher batches
    out = dict(
        rank=rank, world=world, m=F.m, offset=F.offset, sizes=F.sizes,
        G_local=G_local, G_gathered=gather_rows(G_local), G_all_params=G_all_params,
        diagonal=F.diagonal, eigenvalues=F.eigenvalues(),
        matvec=F.matvec(V), inverse=F.inverse_product(V), inverse_one=F.inverse_product(V[0]),
        inverse_cg=F_cg.inverse_product(V), cg_iterations=F_cg.iterations,
        power=F.power_product(V, -0.25), power_half=F.power_product(V[0], -0.5),
        delta=delta, step=step, step_cg=step_cg,
    )
    # errors: every rank raises (none is left waiting in a collective)
    empty = G_local[:0] if rank == 1 else G_local
    out["error_empty_rows"] = _messages(lambda: DistributedFisher(empty, DAMPING))
    out["error_dims"] = _messages(lambda: DistributedFisher(G_local[:, : space.dim - rank], DAMPING))
    out["error_vector"] = _messages(lambda: F.inverse_product(V[rank]))
    out["error_one_batch"] = _messages(lambda: distributed_gradient_matrix(model, batches[:1], space))
    out["error_maxiter"] = _messages(lambda: DistributedFisher(G_local, DAMPING, solver="cg", maxiter=2).inverse_product(V[0]))
    out["error_seed"] = _messages(lambda: check_replicated(torch.full((3,), float(rank)), "the test tensor"))
    out["after_errors"] = F.matvec(V[0])  # the group still works
    return out


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def two_ranks():
    return run_distributed(_two_rank_worker, world_size=2, timeout_s=240)


@pytest.fixture(scope="module")
def reference(problem):
    model, data, space, cfg, batches = problem
    G, _ = gradient_matrix(model, batches, space)
    return G, WoodburyFisher(G, DAMPING), DenseFisher(G, DAMPING)


# ----------------------------------------------------------------------------------- two processes
def test_ranks_hold_contiguous_shards_of_the_batches(two_ranks, reference):
    G = reference[0]
    r0, r1 = two_ranks
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["sizes"] == r1["sizes"] == [4, 3]  # batches (2, 2) on rank 0, (2, 1) on rank 1
    assert (r0["m"], r0["offset"], r1["offset"]) == (7, 0, 4)
    torch.testing.assert_close(torch.cat([r0["G_local"], r1["G_local"]]), G, rtol=1e-12, atol=0)


def test_gathered_gradients_equal_the_single_process_matrix(two_ranks, problem, reference):
    model, _, _, _, batches = problem
    for r in two_ranks:
        torch.testing.assert_close(r["G_gathered"], reference[0], rtol=1e-12, atol=0)
    full, space = gradient_matrix(model, batches[:2], None)  # every parameter, the tied embedding once
    assert full.shape == (4, space.dim) and space.dim > 100_000
    for r in two_ranks:
        torch.testing.assert_close(r["G_all_params"], full, rtol=1e-12, atol=1e-15)


def test_matvec_diagonal_and_eigenvalues_equal_the_woodbury_fisher(two_ranks, problem, reference):
    G, W, D = reference
    V = _vectors(G.shape[1])
    for r in two_ranks:
        torch.testing.assert_close(r["matvec"], W.matvec(V), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(r["matvec"], D.matvec(V), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(r["diagonal"], DiagonalFisher(G, DAMPING).diagonal, rtol=1e-12, atol=0)
        torch.testing.assert_close(r["eigenvalues"], W.eigenvalues(), rtol=1e-10, atol=1e-14)


def test_inverse_products_equal_the_dense_solve(two_ranks, reference):
    G = reference[0]
    V = _vectors(G.shape[1])
    F = DAMPING * torch.eye(G.shape[1], dtype=torch.float64) + G.T @ G / len(G)
    want = torch.linalg.solve(F, V.T).T
    assert float(want.norm() / V.norm()) > 10  # the Fisher is far from λI: a real test of the solve
    for r in two_ranks:
        torch.testing.assert_close(r["inverse"], want, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(r["inverse_one"], want[0], rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(r["inverse_cg"], want, rtol=1e-8, atol=1e-8)
        assert 1 <= r["cg_iterations"] <= 3 * (len(G) + 1)


def test_fisher_powers_equal_the_woodbury_fisher(two_ranks, reference):
    G, W, D = reference
    V = _vectors(G.shape[1])
    for r in two_ranks:
        torch.testing.assert_close(r["power"], W.power_product(V, -0.25), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r["power_half"], D.power_product(V[0], -0.5), rtol=1e-8, atol=1e-10)


def test_newton_direction_equals_the_single_process_one(two_ranks, problem):
    model, data, space, cfg, _ = problem
    delta = forget_gradient(model, data, space)
    step = cfg.eta / (data.n_train - data.k) * build_fisher(model, data, space, cfg, SEED).inverse_product(delta)
    assert data.k == 4 and len(data.counts) == 3  # a repeated item: Δ weights it twice
    for r in two_ranks:
        torch.testing.assert_close(r["delta"], delta, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(r["step"], step, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(r["step_cg"], step, rtol=1e-8, atol=1e-14)
    assert torch.equal(two_ranks[0]["step"], two_ranks[1]["step"])  # every rank applies the same update


def test_a_failure_on_one_rank_raises_on_every_rank(two_ranks):
    r0, r1 = two_ranks
    assert "rank 1" in r1["error_empty_rows"] and "empty" in r1["error_empty_rows"]
    assert r0["error_empty_rows"].startswith("RuntimeError") and "rank(s) [1]" in r0["error_empty_rows"]
    for r in two_ranks:
        assert "different lengths d = [320, 319]" in r["error_dims"]
        assert "differs between ranks: rank(s) [1]" in r["error_vector"]
        assert "1 item(s) cannot be shared among 2 ranks" in r["error_one_batch"]
        assert "did not reach rtol=1e-10 in maxiter=2" in r["error_maxiter"]
        assert "the test tensor differs between ranks" in r["error_seed"]
        torch.testing.assert_close(r["after_errors"], r0["matvec"][0], rtol=1e-12, atol=1e-15)


def _fails_on_rank_one():
    if world_info()[0] == 1:
        raise ValueError("bad value 42 on purpose")
    require_process_group("the test")
    torch.distributed.barrier()  # rank 0 waits here until it is stopped
    return "unreachable"


def test_run_distributed_reports_the_failing_rank():
    with pytest.raises(RuntimeError, match=r"(?s)rank1 failed first.*ValueError: bad value 42 on purpose"):
        run_distributed(_fails_on_rank_one, world_size=2, timeout_s=120)


# ----------------------------------------------------------------------------------- one process
def test_without_a_process_group_it_is_the_library_itself(problem, reference):
    model, data, space, cfg, batches = problem
    G, W, D = reference
    assert world_info() == (0, 1)
    G1, space1 = distributed_gradient_matrix(model, batches, space, gather=True)
    assert space1 == space and torch.equal(G1, G)
    F = DistributedFisher(G, DAMPING)
    assert (F.m, F.world, F.sizes, F.offset) == (7, 1, [7], 0)
    V = _vectors(space.dim)
    assert torch.equal(F.matvec(V), W.matvec(V))
    torch.testing.assert_close(F.inverse_product(V), W.inverse_product(V), rtol=1e-12, atol=0)
    torch.testing.assert_close(DistributedFisher(G, DAMPING, solver="cg").inverse_product(V), D.inverse_product(V), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(F.dense(), D.dense(), rtol=1e-12, atol=1e-15)
    delta = forget_gradient(model, data, space)
    assert torch.equal(distributed_forget_gradient(model, data, space), delta)
    newton = distributed_newton_step(model, data, space, cfg, SEED)
    F2, step = newton.fisher, newton.step
    want = cfg.eta / (data.n_train - data.k) * build_fisher(model, data, space, cfg, SEED).inverse_product(delta)
    assert isinstance(F2, DistributedFisher) and F2.m == cfg.n_fisher
    torch.testing.assert_close(step, want, rtol=1e-12, atol=0)


def test_shards_are_contiguous_balanced_and_cover_everything():
    for n in range(0, 12):
        for world in range(1, 5):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1
    items = list("abcdefg")
    assert [shard(items, r, 3) for r in range(3)] == [["a", "b"], ["c", "d"], ["e", "f", "g"]]
    assert shard(items) == items  # no process group: the whole list
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "attention_mask": torch.ones(5, 2)}
    parts = [shard_batch(batch, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"]) and len(parts[0]["input_ids"]) == 2
    assert shard(["only"], 0, 2, allow_empty=True) == [] and shard(["only"], 1, 2, allow_empty=True) == ["only"]


def test_bad_inputs_name_the_bad_value(reference):
    G = reference[0]
    with pytest.raises(ValueError, match="damping must be a positive finite number, got -0.5"):
        DistributedFisher(G, -0.5)
    with pytest.raises(ValueError, match="damping must be a positive finite number, got 0.0"):
        DistributedFisher(G, 0)
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        DistributedFisher(G, DAMPING, solver="lu")
    with pytest.raises(ValueError, match="rank 0: the gradient set is empty"):
        DistributedFisher(G[:0], DAMPING)
    with pytest.raises(ValueError, match="rtol must be in"):
        DistributedFisher(G, DAMPING, solver="cg", rtol=0)
    with pytest.raises(ValueError, match="vector has length 3, the Fisher has dimension 320"):
        DistributedFisher(G, DAMPING).matvec(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"2 item\(s\) cannot be shared among 3 ranks: rank 2 would get none"):
        shard([1, 2], 0, 3)
    with pytest.raises(ValueError, match="rank must be in \\[0, 2\\), got 2"):
        shard([1, 2, 3], 2, 2)
    with pytest.raises(ValueError, match="world size must be >= 1, got 0"):
        shard_bounds(3, 0, 0)
    with pytest.raises(ValueError, match="pass both rank and world or neither, got rank=1, world=None"):
        shard([1, 2], rank=1)
    with pytest.raises(ValueError, match=r"a batch of 1 row\(s\) cannot be shared among 2 ranks"):
        shard_batch((torch.ones(1, 2), torch.ones(1)), 0, 2)
    with pytest.raises(RuntimeError, match="the test needs an initialised torch.distributed process group"):
        require_process_group("the test")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        world_info(group=object())
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        run_distributed(_fails_on_rank_one, world_size=0)
    with pytest.raises(ValueError, match="backend must be 'gloo' or 'nccl', got 'mpi'"):
        run_distributed(_fails_on_rank_one, backend="mpi")


def test_newton_step_refuses_an_approximate_structure(problem):
    model, data, space, cfg, _ = problem
    from dataclasses import replace

    with pytest.raises(ValueError, match="use structure='woodbury' \\(got 'kfac'\\)"):
        distributed_newton_step(model, data, space, replace(cfg, structure="kfac"), SEED)


def test_woodbury_refuses_a_gram_over_the_memory_budget_and_points_to_cg(reference):
    from tutorial_lib.curvature.memory import MemoryBudgetError

    with pytest.raises(MemoryBudgetError, match="distributed Woodbury Fisher"):
        DistributedFisher(reference[0], DAMPING, max_bytes=500)
    F = DistributedFisher(reference[0], DAMPING, solver="cg", max_bytes=500)  # needs no m×m matrix
    with pytest.raises(NotImplementedError, match="use solver='woodbury'"):
        F.power_product(torch.ones(F.dim, dtype=torch.float64), -0.25)
