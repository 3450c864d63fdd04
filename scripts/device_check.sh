#!/usr/bin/env bash
# The GPU half of the kernel checks, as one prepared run for a machine with an NVIDIA GPU, nvcc and a CUDA build of
# torch (e.g. a lent H200): build the extension with its CUDA kernels, run the op tests (CUDA float16/bfloat16,
# CPU = CUDA, gradients), then the kernel benchmark, whose CUDA rows time kmeans_assign at N=262,144 against
# normalize + matmul + topk.
#
#   scripts/device_check.sh [OUT_DIR]      # writes build.log, tests.log, kernels.json, kernels.txt there
#   DEVICE_CHECK_BENCH=0 scripts/device_check.sh [OUT_DIR]   # build and op tests only (the benchmark run later, alone)
#
# Build time with MAX_JOBS=16 and one architecture: about 2-3 minutes. TORCH_CUDA_ARCH_LIST defaults to the
# visible GPU's compute capability (9.0 on an H100/H200).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device_out}}"
mkdir -p "$out"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
# A C++ compiler that links libstdc++ dynamically: a module with its own static copy crashes on its first error
# message (setup.py refuses such a build). $CXX (or c++) is tried first, then /usr/bin/g++, on a one-line library.
shares_libstdcxx() {
  local dir; dir=$(mktemp -d)
  printf '#include <sstream>\nstd::string f(long n) { std::ostringstream s; s << n; return s.str(); }\n' > "$dir/t.cpp"
  "$1" -shared -fPIC -o "$dir/t.so" "$dir/t.cpp" 2> /dev/null && readelf -d "$dir/t.so" | grep -q 'NEEDED.*libstdc++'
  local ok=$?; rm -rf "$dir"; return $ok
}
for cxx in "${CXX:-c++}" /usr/bin/g++; do
  if shares_libstdcxx "$cxx"; then export CXX="$cxx"; break; fi
  echo "device_check: $cxx links libstdc++ statically (or does not work); trying the next compiler"
done
"$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'device_check: no GPU visible to torch')"
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST="$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  export TORCH_CUDA_ARCH_LIST
fi
"$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
echo "device_check: C++ compiler $CXX"
start=$SECONDS
rm -f cgns/_C*.so
PATH="$CUDA_HOME/bin:$PATH" "$python" setup.py build_ext --inplace > "$out/build.log" 2>&1 || {
  grep -n -B2 -A6 -E "error|Error|cgns setup" "$out/build.log" | head -60; echo "device_check: BUILD FAILED"; exit 1; }
echo "device_check: built in $((SECONDS - start)) s for arch $TORCH_CUDA_ARCH_LIST"
"$python" -c "import torch; from cgns import _C; assert _C.WITH_CUDA, 'built without the CUDA kernels'"
set +e
CGNS_REQUIRE_EXT=1 "$python" -m pytest -q -p no:cacheprovider tests/test_ops_kmeans.py tests/test_ops_patch_gather.py \
  tests/test_ops_fallback.py -rs 2>&1 | tee "$out/tests.log" | tail -15
tests=${PIPESTATUS[0]}
set -e
if [[ "${DEVICE_CHECK_BENCH:-1}" != 0 ]]; then
  CGNS_REQUIRE_EXT=1 "$python" -m cgns.bench --only kernels --json "$out/kernels.json" 2>&1 | tee "$out/kernels.txt"
fi
echo "device_check: tests exit $tests, total $((SECONDS - start)) s"
exit "$tests"
