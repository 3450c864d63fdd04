"""The loader of cgns.ops: the pure-torch fallback (one warning) and CGNS_REQUIRE_EXT."""
import warnings

import pytest
import torch

from cgns import ops
from cgns.ops import extension


@pytest.fixture
def forced_fallback(monkeypatch):
    monkeypatch.setenv("CGNS_DISABLE_EXT", "1")
    monkeypatch.delenv("CGNS_REQUIRE_EXT", raising=False)
    extension.reset()
    yield
    monkeypatch.undo()
    extension.reset()       # the next test loads the real extension again


def test_fallback_warns_once_and_matches_reference(forced_fallback):
    gen = torch.Generator().manual_seed(0)
    points, centroids = torch.randn(50, 12, generator=gen), torch.randn(6, 12, generator=gen)
    tokens = torch.randn(2, 9, 4, generator=gen, requires_grad=True)
    index = torch.randint(0, 9, (2, 5), generator=gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assignment = ops.kmeans_assign(points, centroids)
        sums = ops.kmeans_update(points, assignment[0][:, 0], 6)
        gathered = ops.masked_patch_gather(tokens, index)
        patches = ops.gather_patches(torch.randn(2, 1, 8, 8), 4, index % 4)
    fallback_warnings = [w for w in caught if "pure-torch reference ops" in str(w.message)]
    assert len(fallback_warnings) == 1 and "CGNS_DISABLE_EXT" in str(fallback_warnings[0].message)
    assert not ops.extension_available()
    expected = ops.reference_kmeans_assign(points, centroids)
    assert torch.equal(assignment[0], expected[0]) and torch.equal(assignment[1], expected[1])
    assert torch.equal(sums[1], torch.bincount(assignment[0][:, 0], minlength=6))
    gathered.sum().backward()
    assert tokens.grad is not None and patches.shape == (2, 5, 16)


def test_require_ext_turns_fallback_into_error(forced_fallback, monkeypatch):
    monkeypatch.setenv("CGNS_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match="CGNS_REQUIRE_EXT=1"):
        ops.kmeans_assign(torch.randn(4, 3), torch.randn(2, 3))
