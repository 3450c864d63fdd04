"""Package and kernels of cgns.

    python setup.py build_ext --inplace     # builds cgns/_C*.so next to the sources

The C++ kernels (csrc/) are always built, with OpenMP; the CUDA kernels are added when torch is a CUDA build and
nvcc is found (CUDA_HOME or PATH). Environment switches:
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


def kernel_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    cpp_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
    cu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    # -O3 and OpenMP on the compiler AND the linker (without -fopenmp at compile time at::parallel_for's pragmas
    # are silently ignored and the kernels run on one core). No -march=native unless asked: the wheel must run on
    # any x86-64; the GEMM inside kmeans_assign is torch's BLAS, which picks its own ISA at run time.
    cxx = ["-O3", "-fopenmp"] + (["-march=native"] if _flag("CGNS_NATIVE") else [])
    link = ["-fopenmp"]
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and not _flag("CGNS_NO_CUDA")
    if with_cuda:
        return [CUDAExtension("cgns._C", cpp_sources + cu_sources, include_dirs=[str(ROOT / "csrc")],
                              define_macros=[("WITH_CUDA", None)],
                              extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
                              extra_link_args=link)]
    return [CppExtension("cgns._C", cpp_sources, include_dirs=[str(ROOT / "csrc")],
                         extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=True)


setup(
    name="cgns",
    version="0.1.0",
    description="Cross-modal cluster-guided negative sampling (CM-CGNS) for chest X-ray / report pretraining",
    packages=find_packages(include=["cgns", "cgns.*"]),
    python_requires=">=3.9",
    ext_modules=kernel_extensions(),
    cmdclass={"build_ext": build_ext_class()},
)
