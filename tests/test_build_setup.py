"""setup.py's choice of kernels: a CUDA build of torch on a machine without a GPU builds the CPU kernels.

pip brings the CUDA build of torch to a fresh machine; without a GPU and without TORCH_CUDA_ARCH_LIST, torch's own
architecture detection fails with an IndexError, so setup.py must not ask for the CUDA kernels there. And a module
built by a compiler that links libstdc++ statically (seen on a GPU machine: its first TORCH_CHECK message crashed the
process) is refused by the build, with the reason.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTE = "building the CPU kernels only"


def _setup_name(**env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_CUDA_ARCH_LIST", "CGNS_NO_CUDA")}
    env["CUDA_VISIBLE_DEVICES"] = ""        # no GPU visible, also on a machine that has one
    env.update(env_changes)
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_cuda_torch_without_gpu_builds_cpu_kernels_and_says_so():
    out = _setup_name()
    assert out.strip().splitlines()[-1] == "cgns"
    if torch.version.cuda is None:
        assert NOTE not in out                  # a CPU torch: nothing to say
    else:
        assert NOTE in out


@pytest.mark.skipif(torch.version.cuda is None or (shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME")),
                    reason="needs a CUDA build of torch and nvcc")
def test_arch_list_asks_for_the_cuda_kernels_without_gpu():
    out = _setup_name(TORCH_CUDA_ARCH_LIST="9.0")
    assert NOTE not in out


def _setup_script():
    """setup.py's functions, without running setup()."""
    spec = importlib.util.spec_from_file_location("cgns_setup_script", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("g++") is None, reason="needs g++ and readelf")
def test_a_module_with_a_static_libstdcxx_is_refused(tmp_path):
    source = tmp_path / "number.cpp"
    source.write_text("#include <sstream>\nstd::string f(long n) { std::ostringstream s; s << n; return s.str(); }\n")
    for name, extra in (("shared", []), ("static", ["-static-libstdc++"])):
        subprocess.run(["g++", "-shared", "-fPIC", "-o", str(tmp_path / f"{name}.so"), str(source), *extra],
                       check=True, timeout=120)
    setup_script = _setup_script()
    assert setup_script.static_cxx_runtime_error(tmp_path / "shared.so") is None
    error = setup_script.static_cxx_runtime_error(tmp_path / "static.so")
    assert error is not None and "static.so" in error and "linked libstdc++ statically" in error


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf")
def test_the_built_kernels_share_the_cxx_runtime(extension):
    assert _setup_script().static_cxx_runtime_error(extension.__file__) is None
