"""Shared fixtures: `test_world`, a tiny generated world in the six official layouts (made once per session)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores shared by the whole suite: keep torch and BLAS single-threaded unless the caller says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
