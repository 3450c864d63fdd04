"""setup.py's choice of kernels: a CUDA build of torch on a machine without a GPU builds the CPU kernels.

pip brings the CUDA build of torch to a fresh machine; without a GPU and without TORCH_CUDA_ARCH_LIST, torch's own
architecture detection fails with an IndexError, so setup.py must not ask for the CUDA kernels there.
"""
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
