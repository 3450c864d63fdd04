"""Package and kernels of cgns.

    python setup.py build_ext --inplace     # builds cgns/_C*.so next to the sources

The C++ kernels (csrc/) are always built, with OpenMP; the CUDA kernels are added when torch is a CUDA build, nvcc
is found (CUDA_HOME or PATH) and there is a GPU to build for: one visible, or TORCH_CUDA_ARCH_LIST set (to build
on a machine without one, e.g. TORCH_CUDA_ARCH_LIST="8.0;9.0"). A CUDA build of torch on a machine without a GPU
(what pip installs for `torch>=2.3` on a fresh machine) therefore builds the CPU kernels, and says so.
Environment switches:
  CGNS_NO_CUDA=1   build the CPU kernels only, even when CUDA is available
  CGNS_NATIVE=1    compile with -march=native (faster on this machine, the .so may not run on other CPUs)
  TORCH_CUDA_ARCH_LIST, MAX_JOBS   as usual for torch extensions
Without a build, cgns.ops JIT-compiles the CPU kernels on first use, or falls back to pure torch with a warning.
"""
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _guess_cuda_home():
    """Sets CUDA_HOME when only nvcc on PATH could tell it, and that guess lacks the runtime library.

    torch takes the folder above nvcc's bin/ (/usr/local for /usr/local/bin/nvcc, a common link) and then fails to
    find libcudart; the toolkit's usual home /usr/local/cuda is tried instead.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    import shutil
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    guess, usual = Path(nvcc).resolve().parent.parent, Path("/usr/local/cuda")
    has_runtime = any((guess / lib).exists() for lib in ("lib64/libcudart.so", "lib/libcudart.so"))
    if not has_runtime and (usual / "lib64" / "libcudart.so").exists():
        os.environ["CUDA_HOME"] = str(usual)


def _cuda_wanted(torch):
    """True when the CUDA kernels should be built: a CUDA torch, not switched off, and a GPU to build for."""
    if torch.version.cuda is None or _flag("CGNS_NO_CUDA"):
        return False
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.is_available():
        return True
    print("cgns setup: torch is a CUDA build but no GPU is visible and TORCH_CUDA_ARCH_LIST is unset: building the "
          "CPU kernels only (set TORCH_CUDA_ARCH_LIST, e.g. \"8.0;9.0\", to build the CUDA kernels here)")
    return False


def kernel_extensions():
    import torch
    _guess_cuda_home()
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    cpp_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
    cu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    # -O3 and OpenMP on the compiler AND the linker (without -fopenmp at compile time at::parallel_for's pragmas
    # are silently ignored and the kernels run on one core). No -march=native unless asked: the wheel must run on
    # any x86-64; the GEMM inside kmeans_assign is torch's BLAS, which picks its own ISA at run time.
    cxx = ["-O3", "-fopenmp"] + (["-march=native"] if _flag("CGNS_NATIVE") else [])
    link = ["-fopenmp"]
    with_cuda = _cuda_wanted(torch) and CUDA_HOME is not None
    if with_cuda:
        return [CUDAExtension("cgns._C", cpp_sources + cu_sources, include_dirs=[str(ROOT / "csrc")],
                              define_macros=[("WITH_CUDA", None)],
                              extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
                              extra_link_args=link)]
    return [CppExtension("cgns._C", cpp_sources, include_dirs=[str(ROOT / "csrc")],
                         extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def needed_libraries(path):
    """The NEEDED entries of a shared object's dynamic section (readelf), or None where readelf is missing."""
    import shutil
    import subprocess
    readelf = shutil.which("readelf")
    if readelf is None:
        return None
    listing = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]").strip() for line in listing.splitlines() if "(NEEDED)" in line]


def static_cxx_runtime_error(path):
    """A message when the module at path carries its own static libstdc++ (it does not load the shared one), else
    None; None too where readelf cannot tell."""
    needed = needed_libraries(path)
    if needed is None or any(name.startswith("libstdc++") for name in needed):
        return None
    return (f"cgns setup: {path} does not load the shared libstdc++ (NEEDED: {', '.join(needed) or 'none'}): the C++ "
            f"compiler ({os.environ.get('CXX', 'c++')}) linked libstdc++ statically, and such a module crashes on its "
            f"first error message. Build with a compiler that links it dynamically, e.g. "
            f"CXX=/usr/bin/g++ python setup.py build_ext --inplace")


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class KernelBuild(BuildExtension.with_options(use_ninja=True)):
        """torch's BuildExtension, plus a check that the module shares torch's C++ runtime.

        A compiler that links libstdc++ statically (some toolchain wrappers do) gives the module a second copy of the
        C++ runtime whose locale tables are never initialised: the first error message that formats a number
        (any TORCH_CHECK with a size in it) then crashes the process with a segmentation fault, or loses the number."""

        def build_extension(self, ext):
            super().build_extension(ext)
            path = self.get_ext_fullpath(ext.name)
            error = static_cxx_runtime_error(path)
            if error is not None:
                os.remove(path)
                raise SystemExit(error)

    return KernelBuild


if __name__ == "__main__":     # (pip's setuptools backend runs this file as __main__ too)
    setup(
        name="cgns",
        version="0.1.0",
        description="Cross-modal cluster-guided negative sampling (CM-CGNS) for chest X-ray / report pretraining",
        packages=find_packages(include=["cgns", "cgns.*"]),
        python_requires=">=3.9",
        ext_modules=kernel_extensions(),
        cmdclass={"build_ext": build_ext_class()},
    )
