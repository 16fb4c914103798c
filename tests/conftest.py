"""Test-wide settings: torch threads per test process from OMP_NUM_THREADS (`make test` sets 1: the CI machine has 2
cores shared by everything; `OMP_NUM_THREADS=2 make test` runs the whole suite at 2 threads), and a header naming
the machine, so a CI log says on which CPU, torch and BLAS its float results were computed."""

import os
import platform

import torch

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
torch.set_num_threads(THREADS)
# the seed of the trained fixtures and runs whose quality tests check (scripts/test_margins.py varies it)
SEED = int(os.environ.get("NWS_TEST_SEED") or 0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_report_header(config):
    flags = set()
    try:
        flags = set(open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        pass
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    return [f"machine: {cpu_model()} ({os.cpu_count()} cores, {simd}), torch {torch.__version__} "
            f"(cpu capability {torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} torch thread(s), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, seed {SEED}"]
