"""Shared fixtures: `test_world`, a tiny generated world in the six official layouts (made once per session)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# Two cores shared by the whole suite: keep torch and BLAS single-threaded unless the caller says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The global RNGs start every test from these seeds (no_leaked_global_state restores them after each test), so a
# test that draws without seeding draws the same numbers whatever ran before it. numpy is imported after the
# thread setting above, which its BLAS reads when it loads.
import numpy as np  # noqa: E402
import sklearn  # noqa: E402,F401  (its import sets KMP_DUPLICATE_LIB_OK / KMP_INIT_AT_FORK: before any test runs)

random.seed(0)
np.random.seed(0)


def _global_settings():
    """The process-wide settings a test may change by accident and so change the tests after it."""
    import torch

    return {"torch.get_num_threads()": torch.get_num_threads(),
            "torch.get_default_dtype()": torch.get_default_dtype(),
            "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
            "torch.is_deterministic_algorithms_warn_only_enabled()":
                torch.is_deterministic_algorithms_warn_only_enabled(),
            "torch.backends.cudnn.deterministic": torch.backends.cudnn.deterministic,
            "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
            "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
            "torch.is_grad_enabled()": torch.is_grad_enabled()}


def _restore_settings(settings):
    import torch

    torch.set_num_threads(settings["torch.get_num_threads()"])
    torch.set_default_dtype(settings["torch.get_default_dtype()"])
    torch.use_deterministic_algorithms(settings["torch.are_deterministic_algorithms_enabled()"],
                                       warn_only=settings["torch.is_deterministic_algorithms_warn_only_enabled()"])
    torch.backends.cudnn.deterministic = settings["torch.backends.cudnn.deterministic"]
    torch.backends.cudnn.benchmark = settings["torch.backends.cudnn.benchmark"]
    torch.set_float32_matmul_precision(settings["torch.get_float32_matmul_precision()"])
    torch.set_grad_enabled(settings["torch.is_grad_enabled()"])


# Set by the tools themselves, not by a test: pytest names the running test; the first torch optimiser of the process
# imports torch._dynamo, which records its cache folder in TORCHINDUCTOR_CACHE_DIR once.
_NOT_LEAKS = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR")


@pytest.fixture(autouse=True)
def no_leaked_global_state():
    """Every test starts from the same global RNG states (torch, numpy, random: restored after each test, so a test
    that seeds or draws from them does not move the next one), and a test that changes the thread count, the
    environment, the default dtype, the deterministic or precision flags or the grad mode without putting them back
    fails here, after the state is restored for the tests that follow."""
    import torch

    environ, settings = dict(os.environ), _global_settings()
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    torch.set_rng_state(rng[0])
    np.random.set_state(rng[1])
    random.setstate(rng[2])
    changed = [key for key in sorted(set(environ) | set(os.environ))
               if environ.get(key) != os.environ.get(key) and key not in _NOT_LEAKS]
    leaked = [f"os.environ[{key!r}]: {environ.get(key)!r} -> {os.environ.get(key)!r}" for key in changed]
    now = _global_settings()
    leaked += [f"{name}: {settings[name]!r} -> {now[name]!r}" for name in settings if now[name] != settings[name]]
    if leaked:
        for key in changed:
            if key in environ:
                os.environ[key] = environ[key]
            else:
                del os.environ[key]
        _restore_settings(settings)
        pytest.fail("the test leaked global state (restored now): " + "; ".join(leaked), pytrace=False)


@pytest.fixture(scope="session")
def test_world(tmp_path_factory):
    """Path of a world made with cgns.synthetic.generate(preset='test', seed=0): one folder per data set
    (mimic_cxr, chexpert, rsna, covidx, siim, object_cxr), each with ground_truth.json. Read-only for tests:
    copy a data set folder first if a test must modify it."""
    from cgns.synthetic import generate

    return generate(tmp_path_factory.mktemp("world"), preset="test", seed=0)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_dir(tmp_path_factory):
    """Preprocessing caches of the test session go to a tmp dir, not the repository's data/cache."""
    previous = os.environ.get("CGNS_CACHE_DIR")
    os.environ["CGNS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cgns_cache"))
    yield Path(os.environ["CGNS_CACHE_DIR"])
    if previous is None:
        os.environ.pop("CGNS_CACHE_DIR", None)
    else:
        os.environ["CGNS_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def extension():
    """The compiled cgns._C; a missing build fails under CGNS_REQUIRE_EXT=1 and skips otherwise."""
    from cgns import ops

    if not ops.extension_available():
        if os.environ.get("CGNS_REQUIRE_EXT") == "1":
            pytest.fail("CGNS_REQUIRE_EXT=1 but the cgns extension is not built")
        pytest.skip("cgns extension not built (run `python setup.py build_ext --inplace`)")
    from cgns.ops.extension import get_extension

    return get_extension()
