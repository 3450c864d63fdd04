"""Fixed ZCA whitening of a frozen encoder's feature maps, fitted on the training split, in front of a dense head.

Why: a frozen encoder's maps can be far from isotropic. On the demo, the pretrained ViT's patch tokens hold 92-95%
of their variance in 5 of 192 directions (largest / 20th eigenvalue ~1,000, against ~100 for a random ViT), while a
linear map still recovers each patch's pixels from them (R^2 0.98). A head trained by gradient descent then learns
the small directions (the pixel detail a mask needs) far slower than the large ones. Whitening is an invertible
linear map, so composed with the head's first linear layer it changes how the head trains, not what it can express.

    W = V diag(1 / sqrt(max(e, floor) + shrinkage * mean(e))) V^T,   y = W (x - mean)     (per map, per position)

with e, V the eigen-decomposition of the channel covariance over every position of every training image, floor =
1e-4 * max(e) (numerical safety). shrinkage = 0 whitens fully; larger values whiten less (the small directions are
lifted only to about shrinkage * mean(e)); the head then sees the maps' own geometry again as shrinkage grows.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

EIGEN_FLOOR = 1e-4   # relative to the largest eigenvalue
SPECTRUM_TOP, SPECTRUM_RANK = 5, 20   # what MapMoments.spectrum reports


def parse_shrinkage(value: str) -> float | None:
    """'off' / 'none' -> None (no whitening); a number >= 0 -> that shrinkage (argparse type)."""
    if value.lower() in ("off", "none"):
        return None
    try:
        shrinkage = float(value)
    except ValueError:
        raise ValueError(f"whitening shrinkage must be 'off' or a number >= 0, got {value!r}") from None
    if not shrinkage >= 0:   # also refuses nan
        raise ValueError(f"whitening shrinkage must be 'off' or a number >= 0, got {value!r}")
    return shrinkage


def check_shrinkage(shrinkage: float) -> None:
    if not shrinkage >= 0:
        raise ValueError(f"whitening shrinkage must be >= 0, got {shrinkage}")


def shrinkage_label(shrinkage: float | None) -> str:
    return "off" if shrinkage is None else f"{shrinkage:g}"


class MapWhitening(nn.Module):
    """Per-map fixed affine whitening. forward(list of [B, C_i, H_i, W_i]) -> same shapes.

    Buffers mean_<i> [C_i] and matrix_<i> [C_i, C_i] (identity and zero until fit), saved with the head's state.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.channels = list(channels)
        for i, c in enumerate(self.channels):
            self.register_buffer(f"mean_{i}", torch.zeros(c))
            self.register_buffer(f"matrix_{i}", torch.eye(c))

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != len(self.channels):
            raise ValueError(f"MapWhitening: {len(maps)} maps, fitted for {len(self.channels)}")
        out = []
        for i, m in enumerate(maps):
            mean, matrix = getattr(self, f"mean_{i}"), getattr(self, f"matrix_{i}")
            centred = m - mean.to(m.dtype)[:, None, None]
            out.append(torch.einsum("dc,bchw->bdhw", matrix.to(m.dtype), centred))
        return out

    @torch.no_grad()
    def fit(self, batches: Iterable[Sequence[torch.Tensor]], shrinkage: float) -> "MapWhitening":
        """Fit from an iterable of map lists (each [B, C_i, H_i, W_i]); float64 sums over every position."""
        check_shrinkage(shrinkage)   # before the data pass
        return self.load(MapMoments(self.channels, batches), shrinkage)

    @torch.no_grad()
    def load(self, moments: "MapMoments", shrinkage: float) -> "MapWhitening":
        """Set mean and matrix from already accumulated moments (one pass over the data serves every shrinkage)."""
        check_shrinkage(shrinkage)
        if list(moments.channels) != self.channels:
            raise ValueError(f"MapWhitening: moments of maps with {moments.channels} channels, fitted for "
                             f"{self.channels}")
        for i, (mean, (eigenvalues, vectors)) in enumerate(zip(moments.means, moments.eigen)):
            top = eigenvalues.max()
            scale = (eigenvalues.clamp_min(EIGEN_FLOOR * top) + shrinkage * eigenvalues.clamp_min(0).mean()).rsqrt()
            getattr(self, f"mean_{i}").copy_(mean)
            getattr(self, f"matrix_{i}").copy_((vectors * scale) @ vectors.T)
        return self


class MapMoments:
    """Mean and eigen-decomposed channel covariance of each map over every position of `batches` (an iterable of
    map lists, each [B, C_i, H_i, W_i]), summed in float64: the data pass of a whitening fit, done once and shared
    by every shrinkage. Refuses a map with fewer than 2 positions or no variance."""

    @torch.no_grad()
    def __init__(self, channels: Sequence[int], batches: Iterable[Sequence[torch.Tensor]]):
        self.channels = list(channels)
        count = [0] * len(self.channels)
        sums = [torch.zeros(c, dtype=torch.float64) for c in self.channels]
        outer = [torch.zeros(c, c, dtype=torch.float64) for c in self.channels]
        for maps in batches:
            for i, m in enumerate(maps):
                x = m.detach().to("cpu", torch.float64).transpose(0, 1).reshape(m.shape[1], -1)   # [C, B*H*W]
                count[i] += x.shape[1]
                sums[i] += x.sum(dim=1)
                outer[i] += x @ x.T
        self.means, self.eigen = [], []
        for i in range(len(self.channels)):
            if count[i] < 2:
                raise ValueError(f"MapWhitening.fit: map {i} saw {count[i]} positions; need at least 2")
            mean = sums[i] / count[i]
            eigenvalues, vectors = torch.linalg.eigh(outer[i] / count[i] - torch.outer(mean, mean))
            if not eigenvalues.max() > 0:
                raise ValueError(f"MapWhitening.fit: map {i} is constant over the training split")
            self.means.append(mean)
            self.eigen.append((eigenvalues, vectors))

    def whitening(self, shrinkage: float) -> MapWhitening:
        return MapWhitening(self.channels).load(self, shrinkage)

    def spectrum(self, top: int = SPECTRUM_TOP, rank: int = SPECTRUM_RANK) -> list[dict]:
        """How far each map is from isotropic, one dict per map (eigenvalues e of its channel covariance, largest
        first, negatives from rounding clipped to 0):
          channels; top_share = sum of the `top` largest e / sum e (isotropic: top / channels);
          eigen_ratio = e_1 / e_rank (isotropic: 1; `rank` = min(rank, channels));
          effective_rank = (sum e)^2 / sum e^2 (the participation ratio: channels when isotropic, 1 for one
          direction). A frozen encoder whose maps sit in a few directions trains a dense head slowly (see above)."""
        out = []
        for channels, (eigenvalues, _) in zip(self.channels, self.eigen):
            e = eigenvalues.clamp_min(0).flip(0)
            k = min(rank, channels)
            out.append({"channels": channels,
                        "top": min(top, channels), "top_share": float(e[:top].sum() / e.sum()),
                        "rank": k, "eigen_ratio": float(e[0] / e[k - 1]) if e[k - 1] > 0 else float("inf"),
                        "effective_rank": float(e.sum() ** 2 / (e ** 2).sum())})
        return out


def describe_spectrum(spectrum: Sequence[dict]) -> str:
    """One line per map: 'map i (C ch): top-5 share 0.93, e1/e20 1000, effective rank 2.1'."""
    return "\n".join(f"map {i} ({s['channels']} ch): top-{s['top']} share {s['top_share']:.2f}, "
                     f"e1/e{s['rank']} {s['eigen_ratio']:.3g}, effective rank {s['effective_rank']:.1f}"
                     for i, s in enumerate(spectrum))


def fit_map_moments(channels: Sequence[int], loader: Iterable,
                    maps_of: Callable[[object], Sequence[torch.Tensor]]) -> MapMoments:
    """MapMoments of maps_of(batch) for every batch of `loader` (the training split, not augmented)."""
    return MapMoments(channels, (maps_of(batch) for batch in loader))
