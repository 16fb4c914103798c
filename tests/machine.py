"""One line naming the machine the tests ran on (CPU model and SIMD level, torch and its CPU kernels, threads), so a
CI log says where its float results were computed. `make test` prints it first: `python -m tests.machine`."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary() -> str:
    import torch

    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split("\nflags", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        flags = set()
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    blas = torch.__config__.show()
    blas = "mkl" if "USE_MKL=ON" in blas else "openblas" if "openblas" in blas.lower() else "other"
    return (f"machine: {cpu_model()} ({os.cpu_count()} cores, {simd}); torch {torch.__version__}, cpu kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, blas {blas}; OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, seed {os.environ.get('NWS_TEST_SEED') or 0}")


if __name__ == "__main__":
    print(summary(), flush=True)
