"""The cache cannot lie or lose: unique temporary names and atomic renames, per-key locks across real
processes, hashes checked on load, no diverged model cached, unreadable entries recomputed, an unwritable
cache folder found before any work, files readable by others."""
import json
import multiprocessing as mp
import os
import warnings

import pytest
import torch

from tutorial_lib.core.cache import CacheError, cached_result, key_lock, load_run, save_run
from tutorial_lib.core.models import ModelConfig, make_model
from tutorial_lib.core.tokenization import make_byte_tokenizer


def _tiny(seed=0):
    tokenizer = make_byte_tokenizer()
    return make_model(ModelConfig(n_layer=1, n_embd=8, n_head=2, n_positions=16), len(tokenizer), seed=seed), tokenizer


# --------------------------------------------------------------------- two real processes on the same keys
def _fill_results(root, keys, log):
    """Ask for every key in ``keys``; each computation appends this process's id to ``log``."""
    def compute(k):
        with open(log, "a") as f:
            f.write(f"{k} {os.getpid()}\n")
        return {"key": k, "value": k * k}

    out = []
    for k in keys:
        out.append(cached_result("race", {"k": k}, lambda k=k: compute(k), cache_dir=root)[0])
    return out


def _fill_checkpoints(root, count, queue):
    try:
        model, tokenizer = _tiny()
        for i in range(count):
            folder = root / f"ckpt-{i}"
            with key_lock(folder):
                if not (folder / "run.json").is_file():
                    save_run(folder, model, tokenizer, {"i": i}, {"by": os.getpid()})
            run = load_run(folder, {"i": i})  # never partial: complete, and its hashes match
            assert torch.equal(run.model.lm_head.weight, model.lm_head.weight)
        queue.put("ok")
    except BaseException as err:  # pragma: no cover - reported to the parent
        queue.put(repr(err))


def _results_worker(root, keys, log, queue):
    try:
        queue.put(_fill_results(root, keys, log))
    except BaseException as err:  # pragma: no cover - reported to the parent
        queue.put(repr(err))


def _run_two(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    outs = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return outs


def test_two_processes_filling_the_same_100_results_compute_each_once(tmp_path):
    keys = list(range(100))
    log = tmp_path / "computed.log"
    outs = _run_two(_results_worker, tmp_path / "cache", keys, log)
    assert all(isinstance(o, list) for o in outs), outs
    assert outs[0] == outs[1] == [{"key": k, "value": k * k} for k in keys]
    computed = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(map(int, computed)) == keys  # every key exactly once, by one process or the other
    leftovers = [p.name for p in (tmp_path / "cache" / "results").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_two_processes_saving_the_same_checkpoints_never_read_a_partial_one(tmp_path):
    assert _run_two(_fill_checkpoints, tmp_path / "cache", 100) == ["ok", "ok"]
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert folders == sorted(f"ckpt-{i}" for i in range(100))  # no temporary folder left behind


# --------------------------------------------------------------------- a checkpoint that cannot lie
def test_a_flipped_byte_in_cached_weights_is_detected_on_load(tmp_path):
    model, tokenizer = _tiny()
    folder = save_run(tmp_path / "run", model, tokenizer, {"kind": "test"}, {})
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"model.safetensors does not match the sha256.*delete the folder"):
        load_run(folder, {"kind": "test"})


def test_a_missing_or_truncated_checkpoint_file_is_a_clear_error(tmp_path):
    model, tokenizer = _tiny()
    folder = save_run(tmp_path / "run", model, tokenizer, {"kind": "test"}, {})
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CacheError, match="lacks its file tokenizer.json"):
        load_run(folder)
    folder = save_run(tmp_path / "cut", model, tokenizer, {"kind": "test"}, {})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CacheError, match="model.safetensors does not match the sha256"):
        load_run(folder)
    folder = save_run(tmp_path / "other", model, tokenizer, {"kind": "test"}, {})
    (folder / "run.json").write_text('{"format": 1, "conf')
    with pytest.raises(CacheError, match=r"run.json cannot be read.*delete the folder"):
        load_run(folder)


def test_a_diverged_model_is_never_cached(tmp_path):
    model, tokenizer = _tiny()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf.*diverged"):
        save_run(tmp_path / "run", model, tokenizer, {"kind": "test"}, {})
    assert not (tmp_path / "run").exists() and [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_second_writer_keeps_the_first_complete_checkpoint(tmp_path):
    first, tokenizer = _tiny(seed=0)
    second, _ = _tiny(seed=1)
    save_run(tmp_path / "run", first, tokenizer, {"kind": "test"}, {"which": "first"})
    save_run(tmp_path / "run", second, tokenizer, {"kind": "test"}, {"which": "second"})
    assert load_run(tmp_path / "run").record == {"which": "first"}


def test_an_incomplete_checkpoint_folder_is_replaced(tmp_path):
    model, tokenizer = _tiny()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("")  # left by a crash: no run.json
    save_run(tmp_path / "run", model, tokenizer, {"kind": "test"}, {})
    assert load_run(tmp_path / "run").model.config.n_embd == 8


def test_cached_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        model, tokenizer = _tiny()
        folder = save_run(tmp_path / "run", model, tokenizer, {"kind": "test"}, {})
        cached_result("mode", {}, lambda: {"x": 1}, cache_dir=tmp_path)
    finally:
        os.umask(old)
    files = [*folder.iterdir(), *(tmp_path / "results").glob("mode-*.json")]
    assert len(files) >= 4 and all(f.stat().st_mode & 0o044 == 0o044 for f in files), [(f.name, oct(f.stat().st_mode)) for f in files]


# --------------------------------------------------------------------- results and the cache folder
def test_an_unreadable_result_is_computed_again_with_a_warning(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or {"x": len(calls)}  # noqa: E731
    assert cached_result("study", {"a": 1}, compute, cache_dir=tmp_path) == ({"x": 1}, False)
    path = next((tmp_path / "results").glob("study-*.json"))
    path.write_text(path.read_text()[:20])  # truncated
    with pytest.warns(RuntimeWarning, match=r"study-.*\.json is unreadable or incomplete.*computing it again"):
        assert cached_result("study", {"a": 1}, compute, cache_dir=tmp_path) == ({"x": 2}, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached_result("study", {"a": 1}, compute, cache_dir=tmp_path) == ({"x": 2}, True)
    assert json.loads(path.read_text())["result"] == {"x": 2}


def test_an_unwritable_cache_folder_is_found_before_any_training(tmp_path):
    from tutorial_lib.experiments.memorization import MemorizationConfig, train_memorization_model

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    started = []
    with pytest.raises(CacheError, match=r"a-file/cache.* is not writable.*TUTORIAL_CACHE_DIR"):
        cached_result("study", {}, lambda: started.append(1) or {}, cache_dir=blocker / "cache")
    with pytest.raises(CacheError, match="is not writable"):
        train_memorization_model(MemorizationConfig.for_profile("tiny"), seed=0, device="cpu", cache_dir=blocker / "cache", progress=False)
    assert started == []


def test_a_read_only_cache_still_serves_what_it_holds(tmp_path):
    import shutil

    assert cached_result("study", {}, lambda: {"x": 1}, cache_dir=tmp_path) == ({"x": 1}, False)
    locks = tmp_path / "results" / ".locks"
    shutil.rmtree(locks)
    locks.write_text("")  # no lock file can be made there, even as root: the folder acts read-only
    assert cached_result("study", {}, lambda: {"x": 2}, cache_dir=tmp_path) == ({"x": 1}, True)
    with pytest.raises(CacheError, match="not writable"):
        cached_result("other", {}, lambda: {"x": 3}, cache_dir=tmp_path)
