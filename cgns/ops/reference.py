"""Pure-torch references of the fused ops.

They define what each op computes, the tests compare the compiled kernels against them, and they are the fallback
used when the extension is not built. Shapes: N points, K centroids, D features, B batch, L tokens, M picked patches.
"""
import torch
import torch.nn.functional as F

# The same epsilon as F.normalize: a zero vector stays zero instead of becoming NaN.
NORM_EPS = 1e-12
# Rows per chunk, so that no N x K similarity matrix is held for the whole N.
_ASSIGN_CHUNK = 8192


def _compute_dtype(dtype):
    """Half types are computed in float32 (as the kernels accumulate) and cast back at the end."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_assign_inputs(points, centroids):
    if points.dim() != 2 or centroids.dim() != 2:
        raise ValueError(f"kmeans_assign: points must be [N,D] and centroids [K,D], got {tuple(points.shape)} "
                         f"and {tuple(centroids.shape)}")
    if points.shape[1] != centroids.shape[1]:
        raise ValueError(f"kmeans_assign: points have D={points.shape[1]} features but centroids have "
                         f"D={centroids.shape[1]}")
    if centroids.shape[0] < 2:
        raise ValueError(f"kmeans_assign: needs at least 2 centroids for the top-2, got K={centroids.shape[0]}")
    if points.dtype != centroids.dtype or points.device != centroids.device:
        raise ValueError(f"kmeans_assign: points ({points.dtype}, {points.device}) and centroids "
                         f"({centroids.dtype}, {centroids.device}) must share dtype and device")
    if not points.is_floating_point():
        raise ValueError(f"kmeans_assign: points must be floating point, got {points.dtype}")


@torch.no_grad()
def reference_kmeans_assign(points, centroids):
    """Nearest and second-nearest centroid of each point by cosine similarity.

    points [N,D], centroids [K,D] (K >= 2, same dtype/device) ->
    (index long[N,2], similarity [N,2] in the points' dtype); column 0 is the nearest, column 1 the second
    nearest; equal similarities go to the lower centroid index. Not differentiable.
    """
    check_assign_inputs(points, centroids)
    n = points.shape[0]
    index = torch.empty(n, 2, dtype=torch.long, device=points.device)
    similarity = torch.empty(n, 2, dtype=points.dtype, device=points.device)
    work = _compute_dtype(points.dtype)
    unit_centroids = F.normalize(centroids.to(work), dim=1, eps=NORM_EPS)              # [K,D]
    for start in range(0, n, _ASSIGN_CHUNK):
        stop = min(start + _ASSIGN_CHUNK, n)
        unit_points = F.normalize(points[start:stop].to(work), dim=1, eps=NORM_EPS)   # [n,D]
        cosine = unit_points @ unit_centroids.T                                      # [n,K]
        # argmax returns the first maximum, which is the lower-index tie rule (topk promises no order on ties).
        first = cosine.argmax(dim=1)                                                 # [n]
        first_sim = cosine.gather(1, first[:, None])[:, 0]
        cosine.scatter_(1, first[:, None], float("-inf"))
        second = cosine.argmax(dim=1)
        second_sim = cosine.gather(1, second[:, None])[:, 0]
        index[start:stop] = torch.stack([first, second], dim=1)
        similarity[start:stop] = torch.stack([first_sim, second_sim], dim=1).to(points.dtype)
    return index, similarity


def check_update_inputs(points, index, num_clusters):
    if points.dim() != 2:
        raise ValueError(f"kmeans_update: points must be [N,D], got {tuple(points.shape)}")
    if index.dim() != 1 or index.shape[0] != points.shape[0]:
        raise ValueError(f"kmeans_update: index must be [N] with N={points.shape[0]}, got {tuple(index.shape)}")
    if index.dtype != torch.long:
        raise ValueError(f"kmeans_update: index must be int64 (long), got {index.dtype}")
    if num_clusters < 1:
        raise ValueError(f"kmeans_update: num_clusters must be >= 1, got {num_clusters}")
    if index.device != points.device:
        raise ValueError(f"kmeans_update: index is on {index.device} but points on {points.device}")


@torch.no_grad()
def reference_kmeans_update(points, index, num_clusters):
    """Per-cluster sums and member counts.

    points [N,D], index long[N] with values in [0, K), num_clusters K ->
    (sums [K,D] in the points' dtype, counts long[K]). A distributed caller all-reduces both before
    momentum_update. Not differentiable.
    """
    check_update_inputs(points, index, num_clusters)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_clusters):
        raise IndexError(f"kmeans_update: index values must lie in [0, {num_clusters}), got "
                         f"[{int(index.min())}, {int(index.max())}]")
    work = _compute_dtype(points.dtype)
    sums = torch.zeros(num_clusters, points.shape[1], dtype=work, device=points.device)
    sums.index_add_(0, index, points.to(work))
    counts = torch.bincount(index, minlength=num_clusters)
    return sums.to(points.dtype), counts


@torch.no_grad()
def reference_momentum_update(centroids, sums, counts, lr=1e-3, mode="sum"):
    """new = lr * S + (1 - lr) * old for clusters with members; the others keep their value.

    centroids [K,D], sums [K,D], counts [K] (any numeric dtype), mode 'sum' (S = sums, as the original code) or
    'mean' (S = sums / counts) -> new centroids [K,D] (a new tensor, in the centroids' dtype).
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"momentum_update: mode must be 'sum' or 'mean', got {mode!r}")
    if sums.shape != centroids.shape or counts.shape != centroids.shape[:1]:
        raise ValueError(f"momentum_update: centroids {tuple(centroids.shape)}, sums {tuple(sums.shape)} and "
                         f"counts {tuple(counts.shape)} must be [K,D], [K,D] and [K]")
    counts = counts.to(device=centroids.device)
    target = sums.to(centroids.dtype)
    if mode == "mean":
        target = target / counts.clamp(min=1).to(centroids.dtype)[:, None]
    moved = lr * target + (1.0 - lr) * centroids
    return torch.where((counts > 0)[:, None], moved, centroids)


def check_token_gather_inputs(tokens, index):
    if tokens.dim() != 3 or index.dim() != 2 or index.shape[0] != tokens.shape[0]:
        raise ValueError(f"masked_patch_gather: tokens must be [B,L,D] and index [B,M] with the same B, got "
                         f"{tuple(tokens.shape)} and {tuple(index.shape)}")
    if index.dtype != torch.long or index.device != tokens.device:
        raise ValueError(f"masked_patch_gather: index must be int64 on {tokens.device}, got {index.dtype} "
                         f"on {index.device}")


def reference_masked_patch_gather(tokens, index):
    """out[b, m] = tokens[b, index[b, m]]; duplicates allowed (their gradients add up).

    tokens [B,L,D], index long[B,M] with values in [0, L) -> [B,M,D]. Differentiable in tokens.
    """
    check_token_gather_inputs(tokens, index)
    return tokens.gather(1, index[:, :, None].expand(-1, -1, tokens.shape[2]))


def check_image_gather_inputs(images, patch_size, index):
    if images.dim() != 4 or index.dim() != 2 or index.shape[0] != images.shape[0]:
        raise ValueError(f"gather_patches: images must be [B,C,H,W] and index [B,M] with the same B, got "
                         f"{tuple(images.shape)} and {tuple(index.shape)}")
    if patch_size < 1 or images.shape[2] % patch_size or images.shape[3] % patch_size:
        raise ValueError(f"gather_patches: image size {tuple(images.shape[2:])} must be a multiple of the "
                         f"patch size {patch_size}")
    if index.dtype != torch.long or index.device != images.device:
        raise ValueError(f"gather_patches: index must be int64 on {images.device}, got {index.dtype} "
                         f"on {index.device}")


def reference_gather_patches(images, patch_size, index):
    """Pixels of the picked patches, without patchifying the whole image.

    images [B,C,H,W], patch_size p (divides H and W), index long[B,M] of patches numbered row-major over the
    (H/p) x (W/p) grid -> [B,M,C*p*p], each row laid out (C, p, p) exactly like
    F.unfold(images, p, stride=p).transpose(1, 2). Differentiable in images.
    """
    check_image_gather_inputs(images, patch_size, index)
    patches = F.unfold(images, patch_size, stride=patch_size).transpose(1, 2)     # [B, H*W/p^2, C*p*p]
    return patches.gather(1, index[:, :, None].expand(-1, -1, patches.shape[2]))
