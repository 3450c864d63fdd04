#!/usr/bin/env bash
# Checks that the CUDA kernels compile and link against a CUDA build of torch; runs the op tests on a GPU if one
# is visible. Needs nvcc (CUDA_HOME, default /usr/local/cuda), no GPU.
#
#   scripts/check_cuda_build.sh            # uses $CGNS_CUDA_VENV (default /tmp/cuda-venv), creating it if missing
#
# The venv gets torch==$CGNS_CUDA_TORCH (default 2.14.1, a CUDA 13.0 build) + numpy ninja pytest through pip: a
# few GB and a few minutes the first time. The build happens in a temporary copy of the repo, so the CPU build in
# the working tree is left alone. Build time on 2 busy cores: about 5-8 minutes (the two .cu files take ~10 s
# each per GPU architecture, the four torch-facing .cpp files most of the rest). TORCH_CUDA_ARCH_LIST defaults
# to "8.0;9.0" (A100, H100/H200).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CGNS_CUDA_VENV:-/tmp/cuda-venv}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"

if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
  echo "check_cuda_build: no nvcc under CUDA_HOME=$CUDA_HOME" >&2
  exit 2
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "check_cuda_build: creating $venv with torch==${CGNS_CUDA_TORCH:-2.14.1} (a few GB, a few minutes)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==${CGNS_CUDA_TORCH:-2.14.1}" numpy ninja pytest
fi
"$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch in $venv is not a CUDA build')"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$repo/setup.py" "$repo/csrc" "$repo/cgns" "$repo/tests" "$work/"
rm -f "$work"/cgns/_C*.so
cd "$work"
start=$SECONDS
PATH="$CUDA_HOME/bin:$PATH" "$venv/bin/python" setup.py build_ext --inplace > build.log 2>&1 || {
  grep -n -B2 -A6 -E "error|Error" build.log | head -80 >&2; tail -5 build.log >&2
  echo "check_cuda_build: BUILD FAILED" >&2; exit 1; }
echo "check_cuda_build: built in $((SECONDS - start)) s (arch list $TORCH_CUDA_ARCH_LIST)"

# Import in the CUDA torch (works without a GPU) and run the ops on CPU through the CUDA-enabled module.
CGNS_REQUIRE_EXT=1 "$venv/bin/python" - <<'PY'
import torch
from cgns import _C, ops
assert _C.WITH_CUDA, "the extension was built without its CUDA kernels"
points, centroids = torch.randn(100, 24), torch.randn(5, 24)
index, _ = ops.kmeans_assign(points, centroids)
assert torch.equal(index, ops.reference_kmeans_assign(points, centroids)[0])
print(f"check_cuda_build: import OK (torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU visible: {torch.cuda.is_available()})")
PY
if "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$venv/bin/python" -m pip show -q pytest >/dev/null 2>&1 || "$venv/bin/pip" install -q pytest
  CGNS_REQUIRE_EXT=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_ops_kmeans.py \
    tests/test_ops_patch_gather.py tests/test_ops_fallback.py
fi
echo "check_cuda_build: OK"
