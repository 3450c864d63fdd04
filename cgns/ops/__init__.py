"""The Python face of csrc/: fused k-means and patch-gather ops, their pure-torch references, the loader.

The public ops use the compiled extension (cgns._C, built by `python setup.py build_ext --inplace`, else
JIT-compiled on first use) and fall back to the reference_* functions with one warning when it is unavailable.
"""
from cgns.ops.extension import extension_available
from cgns.ops.kmeans import kmeans_assign, kmeans_update, momentum_update
from cgns.ops.patch_gather import gather_patches, masked_patch_gather
from cgns.ops.reference import (reference_gather_patches, reference_kmeans_assign, reference_kmeans_update,
                                reference_masked_patch_gather, reference_momentum_update)

__all__ = ["extension_available", "kmeans_assign", "kmeans_update", "momentum_update", "masked_patch_gather",
           "gather_patches", "reference_kmeans_assign", "reference_kmeans_update", "reference_momentum_update",
           "reference_masked_patch_gather", "reference_gather_patches"]
