"""scripts/intel_mkl_path.sh: a command run through it finds oneMKL on its Intel code path on an AMD CPU."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mae.provenance import cpuinfo_field

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "intel_mkl_path.sh"
MATMUL = "import torch; torch.set_num_threads(1); torch.randn(64, 64) @ torch.randn(64, 64)"


def _mkl_banner(tmp_path, through_script: bool) -> str:
    env = {**os.environ, "MKL_VERBOSE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-c", MATMUL]
    out = subprocess.run([str(SCRIPT), *command] if through_script else command, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if line.startswith("MKL_VERBOSE oneMKL"))


def test_without_a_command_it_says_how_to_call_it():
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr == "usage: scripts/intel_mkl_path.sh COMMAND [ARGS...]\n"


AMD_WITH_AVX512 = cpuinfo_field("vendor_id") == "AuthenticAMD" and "avx512f" in (cpuinfo_field("flags") or "").split()


@pytest.mark.skipif(not AMD_WITH_AVX512 or not shutil.which("cc"),
                    reason="needs an AMD CPU with AVX-512 (elsewhere oneMKL's path does not change) and a C compiler")
def test_on_an_amd_cpu_onemkl_takes_its_intel_avx512_path(tmp_path):
    assert "AVX-512" not in _mkl_banner(tmp_path, through_script=False)
    assert "AVX-512" in _mkl_banner(tmp_path, through_script=True)
    assert (tmp_path / "cache" / "mae-harness" / "mkl_intel_cpu.so").is_file()
