"""The loader of cgns.ops: the pure-torch fallback (one warning) and CGNS_REQUIRE_EXT."""
import warnings

import pytest
import torch
import torch.nn.functional as F

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
    # an independent expectation, not the reference itself: float64 cosines, a stable descending sort
    cosine = F.normalize(points.double(), dim=1) @ F.normalize(centroids.double(), dim=1).T       # [50,6]
    similarity, order = cosine.sort(dim=1, descending=True, stable=True)
    assert torch.equal(assignment[0], order[:, :2])
    torch.testing.assert_close(assignment[1], similarity[:, :2].float())
    nearest = order[:, 0]
    assert torch.equal(sums[1], torch.tensor([int((nearest == k).sum()) for k in range(6)]))
    torch.testing.assert_close(sums[0], torch.stack([points[nearest == k].sum(0) for k in range(6)]))
    gathered.sum().backward()
    assert tokens.grad is not None and patches.shape == (2, 5, 16)


def test_fallback_ties_go_to_the_lower_index(forced_fallback):
    """The documented rule (and the CPU/CUDA kernels': strict '>' over ascending k) through the fallback dispatch
    and the reference itself. One-hot centroids make every similarity exact, so the ties are real ties."""
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        centroids = torch.eye(4).repeat(2, 1).to(dtype)                  # centroid k == centroid k+4
        points = torch.tensor([[3.0, 3.0, 0.0, 0.0],     # tie between 0 and 1 (and their copies 4, 5)
                               [0.0, 0.0, 0.0, 2.0],     # centroid 3 and its copy 7
                               [0.0, 1.0, 1.0, 1.0],     # three-way tie: 1 then 2
                               [1.0, 1.0, 1.0, 1.0],     # four-way tie: 0 then 1
                               [0.0, 0.0, 0.0, 0.0]],    # zero point: all similarities 0 -> 0 then 1
                              dtype=dtype)
        expected = [[0, 1], [3, 7], [1, 2], [0, 1], [0, 1]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index, similarity = ops.kmeans_assign(points, centroids)
        assert not ops.extension_available()
        assert index.tolist() == expected, dtype
        assert ops.reference_kmeans_assign(points, centroids)[0].tolist() == expected, dtype
        torch.testing.assert_close(similarity.float(), torch.tensor([[2 ** -0.5] * 2, [1.0, 1.0], [3 ** -0.5] * 2,
                                                                     [0.5, 0.5], [0.0, 0.0]]), atol=1e-2, rtol=0)
        # a centroid tied with its copy ahead of a lower-index runner-up (1 and 2 tie below): 0 then its copy 4
        copies = torch.tensor([[2.0, 1.0, 1.0, 0.0]], dtype=dtype)
        assert ops.kmeans_assign(copies, centroids)[0].tolist() == [[0, 4]], dtype


def test_require_ext_turns_fallback_into_error(forced_fallback, monkeypatch):
    monkeypatch.setenv("CGNS_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match="CGNS_REQUIRE_EXT=1"):
        ops.kmeans_assign(torch.randn(4, 3), torch.randn(2, 3))
