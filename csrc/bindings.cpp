// The one Python module of the kernels (cgns._C when built by setup.py).
#include <torch/extension.h>

#include "kmeans/kmeans.h"
#include "patch_gather/patch_gather.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CGNS fused kernels: top-2 k-means assignment, centroid sums, patch gathers (CPU + optional CUDA)";
  m.def("kmeans_assign", &cgns::kmeans_assign, "points [N,D], centroids [K,D] -> (index [N,2], similarity [N,2])",
        py::arg("points"), py::arg("centroids"));
  m.def("kmeans_update", &cgns::kmeans_update, "points [N,D], index [N], K -> (sums [K,D], counts [K])",
        py::arg("points"), py::arg("index"), py::arg("num_clusters"));
  m.def("masked_patch_gather_forward", &cgns::masked_patch_gather_forward, "tokens [B,L,D], index [B,M] -> [B,M,D]",
        py::arg("tokens"), py::arg("index"), py::arg("out") = py::none());
  m.def("masked_patch_gather_backward", &cgns::masked_patch_gather_backward,
        "grad_out [B,M,D], index [B,M], L -> grad_tokens [B,L,D]", py::arg("grad_out"), py::arg("index"),
        py::arg("num_tokens"));
  m.def("gather_patches_forward", &cgns::gather_patches_forward,
        "images [B,C,H,W], p, index [B,M] -> [B,M,C*p*p]", py::arg("images"), py::arg("patch_size"),
        py::arg("index"), py::arg("out") = py::none());
  m.def("gather_patches_backward", &cgns::gather_patches_backward,
        "grad_out [B,M,C*p*p], index [B,M], p, H, W -> grad_images [B,C,H,W]", py::arg("grad_out"),
        py::arg("index"), py::arg("patch_size"), py::arg("height"), py::arg("width"));
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
