"""k-means pieces of the CGNS loss: top-2 cosine assignment, per-cluster sums, momentum update."""
import torch

from cgns.ops import reference
from cgns.ops.extension import kernels_for

_CPU_KERNEL_DTYPES = (torch.float32, torch.float64)


@torch.no_grad()
def kmeans_assign(points, centroids):
    """Nearest and second-nearest centroid by cosine similarity, normalisation fused.

    points [N,D], centroids [K,D] (K >= 2) -> (index long[N,2], similarity [N,2] in the points' dtype);
    ties go to the lower centroid index. Inputs are used detached (no gradient flows).
    """
    reference.check_assign_inputs(points, centroids)
    ext = kernels_for(points)
    if ext is None:
        return reference.reference_kmeans_assign(points, centroids)
    if not points.is_cuda and points.dtype not in _CPU_KERNEL_DTYPES:
        # The CPU kernel works in float32/float64; half inputs are rare on CPU and only upcast here.
        index, similarity = ext.kmeans_assign(points.float(), centroids.float())
        return index, similarity.to(points.dtype)
    return ext.kmeans_assign(points.detach(), centroids.detach())


@torch.no_grad()
def kmeans_update(points, index, num_clusters):
    """Per-cluster sums and counts: points [N,D], index long[N] in [0,K), K -> (sums [K,D], counts long[K])."""
    reference.check_update_inputs(points, index, num_clusters)
    ext = kernels_for(points)
    if ext is None:
        return reference.reference_kmeans_update(points, index, num_clusters)
    if not points.is_cuda and points.dtype not in _CPU_KERNEL_DTYPES:
        sums, counts = ext.kmeans_update(points.float(), index, int(num_clusters))
        return sums.to(points.dtype), counts
    return ext.kmeans_update(points.detach(), index, int(num_clusters))


@torch.no_grad()
def momentum_update(centroids, sums, counts, lr=1e-3, mode="sum"):
    """new = lr * S + (1 - lr) * old for clusters with members (S = sums, or sums / counts for mode='mean').

    centroids [K,D], sums [K,D], counts [K] -> new centroids [K,D]; untouched clusters keep their value. An
    element-wise update is already memory-bound in torch, so this op has no compiled kernel.
    """
    return reference.reference_momentum_update(centroids, sums, counts, lr=lr, mode=mode)
