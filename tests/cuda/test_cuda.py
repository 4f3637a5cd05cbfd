"""The CUDA execution provider, tested without a GPU.

The cases in ``sim_cases.py`` run under the Numba CUDA simulator, which replaces numba.cuda when
NUMBA_ENABLE_CUDASIM=1 is set before numba is imported, so they run in a subprocess and the rest
of the suite keeps real Numba (``sim_concurrency.py`` too: threads sharing CUDA sessions). That run records every kernel launch's signature; a second test
compiles each recorded kernel for a real GPU (PTX through NVVM where the CUDA toolkit's NVVM is
installed, else Numba's typing and lowering to LLVM IR), which checks what the simulator, running
kernels as plain Python, cannot. ``benchmarks/gpu_check.py --tiny`` must run under the simulator.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sim_env(**extra):
    env = dict(os.environ)
    env.update(NUMBA_ENABLE_CUDASIM="1", **extra)
    return env


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda") / "signatures.jsonl"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join("tests", "cuda", "sim_cases.py")], cwd=ROOT,
                            env=_sim_env(QRT_CUDA_SIGNATURES=str(path)), capture_output=True, text=True, timeout=600)
    return result, path


def test_simulator_cases_pass(recorded):
    result, _ = recorded
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_simulator_concurrency_cases_pass():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join("tests", "cuda", "sim_concurrency.py")], cwd=ROOT, env=_sim_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def _nvvm_usable():
    try:
        from numba.cuda.cudadrv import nvvm
        from numba.cuda.cudadrv.nvrtc import get_supported_ccs
        nvvm.NVVM()
        get_supported_ccs()
        return True
    except Exception:
        return False


def test_recorded_kernels_compile_for_a_real_gpu(recorded):
    _, path = recorded
    assert path.exists()
    with open(path) as f:
        kernels = {json.dumps(json.loads(line)["kernel"]) for line in f}
    assert len(kernels) > 40    # every family launched at least one kernel
    code = ("import sys; from qrt.kernels.cuda import device as dev; "
            f"ok, bad = dev.compile_recorded({str(path)!r}, cc=(8, 0), ptx={_nvvm_usable()}); "
            "print(len(ok), 'compiled'); [print(b) for b in bad]; sys.exit(1 if bad else 0)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_FORCE_CUDA_CC"] = "8.0"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_gpu_check_script_runs_tiny_under_the_simulator():
    result = subprocess.run([sys.executable, os.path.join("benchmarks", "gpu_check.py"), "--tiny"], cwd=ROOT,
                            env=_sim_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "FAIL" not in result.stdout and "float_cnn" in result.stdout and "int8_cnn" in result.stdout
