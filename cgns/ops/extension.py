"""Finds the compiled kernels: the prebuilt cgns._C, else a JIT build, else None (pure-torch fallback).

Environment switches:
  CGNS_DISABLE_EXT=1  never use the extension (forces the pure-torch fallback, used by the fallback tests)
  CGNS_NO_JIT=1       do not JIT-compile when the prebuilt module is missing
  CGNS_REQUIRE_EXT=1  raise instead of falling back (CI sets it after `python setup.py build_ext --inplace`)
"""
import os
import warnings
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
_state = {"loaded": False, "module": None, "reason": None, "warned": False, "warned_cuda": False}


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _jit_build():
    """Compile the CPU sources with ninja into build/jit under the repo (cached between runs)."""
    from torch.utils.cpp_extension import load
    sys_sources = sorted(str(p) for p in (_REPO / "csrc").rglob("*.cpp"))
    if not sys_sources:
        raise ImportError(f"no C++ sources under {_REPO / 'csrc'}")
    build_dir = _REPO / "build" / "jit"
    build_dir.mkdir(parents=True, exist_ok=True)
    # Same flags as setup.py's CPU build; the CUDA kernels are only built by setup.py.
    flags = ["-O3", "-fopenmp"] + (["-march=native"] if _flag("CGNS_NATIVE") else [])
    return load(name="cgns_C_jit", sources=sys_sources, build_directory=str(build_dir), extra_cflags=flags,
                extra_ldflags=["-fopenmp"], extra_include_paths=[str(_REPO / "csrc")], verbose=False)


def _load():
    if _flag("CGNS_DISABLE_EXT"):
        return None, "disabled by CGNS_DISABLE_EXT=1"
    try:
        from cgns import _C
        return _C, None
    except ImportError as err:
        reason = f"prebuilt cgns._C not importable ({err})"
    if _flag("CGNS_NO_JIT"):
        return None, reason + "; JIT build disabled by CGNS_NO_JIT=1"
    try:
        return _jit_build(), None
    except Exception as err:  # a missing compiler or ninja must not break the pure-torch path
        return None, f"{reason}; JIT build failed ({type(err).__name__}: {str(err).strip()[-300:]})"


def get_extension():
    """The compiled module, or None after ONE warning (RuntimeError instead when CGNS_REQUIRE_EXT=1)."""
    if not _state["loaded"]:
        _state["module"], _state["reason"] = _load()
        _state["loaded"] = True
    module = _state["module"]
    if module is None:
        if _flag("CGNS_REQUIRE_EXT"):
            raise RuntimeError(f"cgns.ops: the compiled extension is required (CGNS_REQUIRE_EXT=1) but "
                               f"unavailable: {_state['reason']}. Build it with `python setup.py build_ext --inplace`.")
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(f"cgns.ops: using the slower pure-torch reference ops: {_state['reason']}. "
                          f"Build the kernels with `python setup.py build_ext --inplace`.", RuntimeWarning,
                          stacklevel=4)  # points at the caller of the public op
    return module


def kernels_for(tensor):
    """The extension when it has kernels for this tensor's device, else None (the caller uses the reference).

    A CPU-only build given CUDA tensors warns once, like a missing build."""
    ext = get_extension()
    if ext is None or not tensor.is_cuda or getattr(ext, "WITH_CUDA", False):
        return ext
    if not _state["warned_cuda"]:
        _state["warned_cuda"] = True
        warnings.warn("cgns.ops: the extension was built without CUDA kernels; CUDA tensors use the pure-torch "
                      "reference ops. Rebuild with nvcc and a CUDA build of torch.", RuntimeWarning, stacklevel=3)
    return None


def extension_available():
    """True when the compiled kernels are in use (triggers the lazy load/JIT build, never warns)."""
    if not _state["loaded"]:
        _state["module"], _state["reason"] = _load()
        _state["loaded"] = True
    return _state["module"] is not None


def has_cuda_kernels():
    """True when the loaded extension was compiled with its CUDA kernels."""
    return extension_available() and bool(getattr(_state["module"], "WITH_CUDA", False))


def reset():
    """Forget the load result (tests use it to switch between the extension and the fallback)."""
    _state.update(loaded=False, module=None, reason=None, warned=False, warned_cuda=False)
