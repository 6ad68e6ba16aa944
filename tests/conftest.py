import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One model cache for the whole session: the tiny memorisation run and its retrained oracle
    are trained once and shared by the tests that use them."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_run(tiny_cache):
    """One tiny-profile memorisation run, shared by the tests that only read its result."""
    from tutorial_lib.experiments.memorization import (
        MemorizationConfig,
        run_memorization,
    )

    cache = tiny_cache
    cfg = MemorizationConfig.for_profile("tiny")
    return cfg, cache, run_memorization(cfg, seed=0, device="cpu", cache_dir=cache, progress=False)


@pytest.fixture(scope="session")
def byte_tokenizer():
    from tutorial_lib.core.tokenization import make_byte_tokenizer

    return make_byte_tokenizer()


@pytest.fixture()
def shown_bars(monkeypatch):
    """``shown_bars(module, ...)``: those modules' progress bars drawn into the returned buffer even
    under ``TQDM_DISABLE=1`` (how the tests run); a bar asked for with ``disable=True`` (progress
    off) still draws nothing."""
    import functools
    import io

    from tqdm.std import tqdm

    out = io.StringIO()

    def show(*modules):
        for module in modules:
            monkeypatch.setattr(module, "tqdm", functools.partial(tqdm, disable=False, file=out, mininterval=0))
        return out

    return show
