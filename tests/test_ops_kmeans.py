"""Compiled k-means kernels (cgns.ops) against their pure-torch references."""
import os

import pytest
import torch

from cgns import ops
from cgns.ops import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (device, dtype, tolerance on similarities): float32/float64 are compared tightly; half types only on CUDA,
# where the dots come from a half GEMM (about 3 significant digits for float16, 2 for bfloat16).
CASES = [("cpu", torch.float32, 1e-5), ("cpu", torch.float64, 1e-12)]
if torch.cuda.is_available():
    CASES += [("cuda", torch.float32, 1e-4), ("cuda", torch.float64, 1e-12), ("cuda", torch.float16, 4e-3),
              ("cuda", torch.bfloat16, 3e-2)]
# (N, D, K): empty, K=2, D not a multiple of 8, several CPU tiles (256 rows) with a ragged last tile.
SHAPES = [(0, 16, 4), (1, 3, 2), (37, 13, 2), (300, 77, 5), (200, 40, 100), (700, 130, 128)]


@pytest.fixture(params=["default", "blas"])
def cpu_path(request, monkeypatch):
    """The float32 CPU assign has two tile paths: AVX-512 micro-kernel (default where the CPU has it) and BLAS.
    The same switch (CGNS_NO_AVX512=1) moves the CPU kmeans_update from its AVX-512 build to its baseline one."""
    if request.param == "blas":
        monkeypatch.setenv("CGNS_NO_AVX512", "1")
    return request.param


def _device_ready(device, extension):
    if device == "cuda" and not getattr(extension, "WITH_CUDA", False):
        pytest.fail("a GPU is present but the extension was built without CUDA kernels") \
            if os.environ.get("CGNS_REQUIRE_EXT") == "1" else pytest.skip("extension built without CUDA")


def check_assignment(points, centroids, index, similarity, tol):
    """Tie-robust comparison with the reference cosine matrix: the returned similarities must be the true ones at
    the returned indices and equal the true top-2 values; where the top-3 values are separated by more than the
    tolerance the indices themselves must match the reference."""
    n = points.shape[0]
    assert index.shape == (n, 2) and index.dtype == torch.long and similarity.shape == (n, 2)
    assert similarity.dtype == points.dtype
    if n == 0:
        return
    work = torch.float64
    cosine = (torch.nn.functional.normalize(points.to(work), dim=1, eps=reference.NORM_EPS)
              @ torch.nn.functional.normalize(centroids.to(work), dim=1, eps=reference.NORM_EPS).T)
    assert (index[:, 0] != index[:, 1]).all()
    top = cosine.topk(min(3, cosine.shape[1]), dim=1).values
    torch.testing.assert_close(similarity.to(work), top[:, :2], atol=tol, rtol=0)
    torch.testing.assert_close(similarity.to(work), cosine.gather(1, index), atol=tol, rtol=0)
    ref_index, _ = reference.reference_kmeans_assign(points.to(work), centroids.to(work))
    gaps = top[:, :-1] - top[:, 1:]
    clear = (gaps > 4 * tol).all(dim=1) if top.shape[1] == 3 else gaps[:, 0] > 4 * tol
    assert torch.equal(index[clear], ref_index[clear])


@pytest.mark.parametrize("device,dtype,tol", CASES)
@pytest.mark.parametrize("n,d,k", SHAPES)
def test_assign_matches_reference(extension, cpu_path, device, dtype, tol, n, d, k):
    _device_ready(device, extension)
    if device == "cuda" and cpu_path == "blas":
        pytest.skip("CPU-only switch")
    gen = torch.Generator().manual_seed(n * 1000 + d + k)
    points = torch.randn(n, d, generator=gen, dtype=torch.float64).to(device, dtype)
    centroids = torch.randn(k, d, generator=gen, dtype=torch.float64).to(device, dtype)
    index, similarity = ops.kmeans_assign(points, centroids)
    check_assignment(points.cpu(), centroids.cpu(), index.cpu(), similarity.cpu(), tol)


@pytest.mark.parametrize("device", DEVICES)
def test_assign_non_contiguous_and_duplicate_points(extension, cpu_path, device):
    _device_ready(device, extension)
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(90, 2 * 24, generator=gen)
    wide = torch.cat([wide, wide[:10]]).to(device)                      # the last 10 rows duplicate the first
    points = wide[:, ::2]                                                # [100,24], row stride 48
    centroids = torch.randn(24, 9, generator=gen).to(device).T          # [9,24] transposed view
    assert not points.is_contiguous() and not centroids.is_contiguous()
    index, similarity = ops.kmeans_assign(points, centroids)
    check_assignment(points.cpu(), centroids.cpu(), index.cpu(), similarity.cpu(), 1e-5)
    assert torch.equal(index[-10:], index[:10]) and torch.equal(similarity[-10:], similarity[:10])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_assign_ties_go_to_lower_index(extension, cpu_path, device, dtype):
    """One-hot centroids make every similarity exact, so ties are real ties on every device."""
    _device_ready(device, extension)
    centroids = torch.eye(4, dtype=dtype, device=device).repeat(2, 1)   # centroid k == centroid k+4
    points = torch.tensor([[3.0, 3.0, 0.0, 0.0],    # tie between 0 and 1 (and their copies 4, 5)
                           [0.0, 0.0, 0.0, 2.0],    # centroid 3 and its copy 7
                           [1.0, 1.0, 1.0, 1.0],    # four-way tie: 0 then 1
                           [0.0, 0.0, 0.0, 0.0]],   # zero point: all similarities 0 -> 0 then 1
                          dtype=dtype, device=device)
    index, similarity = ops.kmeans_assign(points, centroids)
    assert index.cpu().tolist() == [[0, 1], [3, 7], [0, 1], [0, 1]]
    expected = torch.tensor([[2 ** -0.5, 2 ** -0.5], [1.0, 1.0], [0.5, 0.5], [0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(similarity.cpu(), expected)


def test_assign_hand_computed(extension):
    points = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    centroids = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    index, similarity = ops.kmeans_assign(points, centroids)
    assert index.tolist() == [[0, 2], [1, 2], [0, 1]]
    r = 2 ** -0.5
    torch.testing.assert_close(similarity, torch.tensor([[1.0, r], [1.0, r], [-r, -r]]))


def test_assign_rejects_bad_input(extension):
    with pytest.raises(RuntimeError, match="K >= 2"):
        extension.kmeans_assign(torch.randn(3, 4), torch.randn(1, 4))
    with pytest.raises(RuntimeError, match="D=5"):
        extension.kmeans_assign(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(RuntimeError, match="Double"):
        extension.kmeans_assign(torch.randn(3, 4), torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 centroids"):
        ops.kmeans_assign(torch.randn(3, 4), torch.randn(1, 4))


def test_assign_parallel_tiles_are_deterministic(extension):
    """Two threads over several tiles give the same bits as one thread."""
    gen = torch.Generator().manual_seed(3)
    points, centroids = torch.randn(1100, 64, generator=gen), torch.randn(16, 64, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.kmeans_assign(points, centroids)
        torch.set_num_threads(2)
        double = ops.kmeans_assign(points, centroids)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single[0], double[0]) and torch.equal(single[1], double[1])


@pytest.mark.parametrize("device,dtype,tol", CASES)
@pytest.mark.parametrize("n,d,k", [(0, 8, 3), (1, 5, 1), (257, 13, 2), (600, 70, 128), (500, 300, 4)])
def test_update_matches_reference(extension, cpu_path, device, dtype, tol, n, d, k):
    _device_ready(device, extension)
    if device == "cuda" and cpu_path == "blas":
        pytest.skip("CPU-only switch")
    gen = torch.Generator().manual_seed(n + d + k)
    points = torch.randn(n, 2 * d, generator=gen, dtype=torch.float64)[:, ::2].to(device, dtype)  # strided
    index = torch.randint(0, k, (n,), generator=gen).to(device)
    sums, counts = ops.kmeans_update(points, index, k)
    ref_sums, ref_counts = reference.reference_kmeans_update(points.double(), index, k)
    assert sums.shape == (k, d) and sums.dtype == dtype and counts.dtype == torch.long
    assert torch.equal(counts.cpu(), ref_counts.cpu()) and int(counts.sum()) == n
    torch.testing.assert_close(sums.cpu().double(), ref_sums.cpu(), atol=max(tol, 1e-12) * 20, rtol=tol * 10)


def point_order_sums(points, index, k):
    """sums[index[n]] += points[n] for n = 0, 1, ..., N-1, in the points' dtype: the sequential loop."""
    sums = torch.zeros(k, points.shape[1], dtype=points.dtype)
    for n in range(points.shape[0]):
        sums[index[n]] += points[n]
    return sums


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d,k", [(300, 129, 7), (60, 3, 100), (400, 256, 1), (250, 200, 3)])
def test_update_equals_point_order_loop(extension, cpu_path, dtype, n, d, k):
    """The CPU kernel adds every sum element in point order, from zero, on each of its vector builds and for any
    thread count, so it equals the sequential loop bit for bit. Shapes: D with a tail past the last whole vector,
    D below one vector, K=1, and K > N, which leaves clusters empty: the kernel fills an uninitialised tensor, which
    deterministic mode pre-fills with NaN, so a sum it failed to write shows."""
    gen = torch.Generator().manual_seed(n + d + k)
    points = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    index = torch.randint(0, k, (n,), generator=gen)
    expected = point_order_sums(points, index, k)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        for count in (1, 2):
            torch.set_num_threads(count)
            sums, counts = ops.kmeans_update(points, index, k)
            assert torch.equal(sums, expected), f"{count} threads"
            assert torch.equal(counts, torch.bincount(index, minlength=k))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def test_update_deterministic_and_checked(extension):
    gen = torch.Generator().manual_seed(5)
    points, index = torch.randn(2000, 300, generator=gen), torch.randint(0, 7, (2000,), generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = ops.kmeans_update(points, index, 7), ops.kmeans_update(points, index, 7)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first[0], second[0])
    with pytest.raises((RuntimeError, IndexError), match="outside|lie in"):
        ops.kmeans_update(points, torch.full((2000,), 7), 7)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_momentum_update_hand_computed(mode):
    centroids = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 5.0]])
    sums = torch.tensor([[4.0, 2.0], [0.0, 0.0], [3.0, 3.0]])
    counts = torch.tensor([2, 0, 3])
    new = ops.momentum_update(centroids, sums, counts, lr=0.5, mode=mode)
    moved = sums if mode == "sum" else sums / torch.tensor([2.0, 1.0, 3.0])[:, None]
    expected = torch.stack([0.5 * moved[0] + 0.5 * centroids[0], centroids[1], 0.5 * moved[2] + 0.5 * centroids[2]])
    torch.testing.assert_close(new, expected)
    assert torch.equal(new[1], centroids[1])        # untouched cluster keeps its value
    with pytest.raises(ValueError, match="mode"):
        ops.momentum_update(centroids, sums, counts, mode="median")


@pytest.mark.parametrize("mode,expected", [
    # new = 0.1 * S + 0.9 * old, by hand: row 0 S = (4, 2) or its mean (2, 1); row 2 S = (3, 3) or (1, 1)
    ("sum", [[1.3, 1.1], [2.0, 0.0], [0.3, 4.8]]),
    ("mean", [[1.1, 1.0], [2.0, 0.0], [0.1, 4.6]])])
def test_momentum_update_at_an_asymmetric_rate(mode, expected):
    """At lr 0.5 lr and 1 - lr are the same number; at 0.1 a swapped pair of weights shows."""
    centroids = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    sums = torch.tensor([[4.0, 2.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    counts = torch.tensor([2, 0, 3])
    new = ops.momentum_update(centroids, sums, counts, lr=0.1, mode=mode)
    torch.testing.assert_close(new, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_equals_cuda(extension):
    _device_ready("cuda", extension)
    gen = torch.Generator().manual_seed(9)
    points, centroids = torch.randn(3000, 96, generator=gen), torch.randn(32, 96, generator=gen)
    cpu_index, cpu_sim = ops.kmeans_assign(points, centroids)
    gpu_index, gpu_sim = ops.kmeans_assign(points.cuda(), centroids.cuda())
    torch.testing.assert_close(gpu_sim.cpu(), cpu_sim, atol=1e-5, rtol=0)
    assert (gpu_index.cpu() == cpu_index).float().mean() > 0.999
    sums, counts = ops.kmeans_update(points, cpu_index[:, 0], 32)
    gpu_sums, gpu_counts = ops.kmeans_update(points.cuda(), cpu_index[:, 0].cuda(), 32)
    assert torch.equal(gpu_counts.cpu(), counts)
    torch.testing.assert_close(gpu_sums.cpu(), sums, atol=1e-4, rtol=1e-5)
