"""The fused kernel of Eq. 1 (seed 004_): scores and their best / second-best in one C++ pass (nws/native/top2.cpp).

Why. The torch path of `nws.search` writes every row's n scores to memory (one matmul per chunk) and reads them
back to select the best two; at 9-element kernels the selection, not the arithmetic, is most of its time, so it
sits several times above its FLOP floor and behind faiss's fused k=1 search. The kernel here keeps each row's
scores in registers (NWS_ROWS rows against NWS_LANES pool kernels at a time) and updates the best, its index and
the second-best as it goes: no score matrix at all. Its scores are the torch path's, s_j = ||p_j||² - 2 w·p_j as a
chain of d fused multiply-adds from ||p_j||², so `nws.search._Bounds` certifies them unchanged and the rows it does
not certify go to the reference as before: the indices are exactly `nws.search.nearest`'s (tests/nws/
test_search_native.py). This module only computes (best, index, second); `nws.search` certifies.

Build. `make setup` (or `python -c 'import nws.search_native as s; s.main()'`) compiles the source once per
instruction set (x86: AVX-512 as x86-64-v4, AVX2 as x86-64-v3, and SSE2; other CPUs: the compiler's default) into
one shared library, loaded with ctypes; the variant is the one torch itself picked for this CPU
(`torch.backends.cpu.get_cpu_capability()`), so a library built on a cluster's login node runs on any of its nodes.
The library's name carries the hash of its source (and the library records it): an edited source is built afresh at
its first use in a process where `make setup` did not build it already; where it cannot be built the search keeps
the torch path, with a warning (NWS_NATIVE_SEARCH=0 chooses that path on purpose).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("native") / "top2.cpp"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One build of the source: compiler flags, floats per vector, rows per pass, entry-point suffix."""

    flags: tuple[str, ...]
    lanes: int
    rows: int
    suffix: str


# rows per pass measured on a 2-core AMD EPYC (Zen 4), 1 thread, 1.4 M 9-element rows against 512 kernels:
# AVX-512 4/6/8 rows 135/127/129 ms, AVX2 2/4/6 rows 253/212/212 ms
X86 = {"AVX512": Variant(("-march=x86-64-v4", "-mprefer-vector-width=512"), 16, 6, "avx512"),
       "AVX2": Variant(("-march=x86-64-v3",), 8, 4, "avx2"),
       "DEFAULT": Variant(("-msse2",), 4, 4, "generic")}
OTHER = {"DEFAULT": Variant((), 4, 4, "generic")}


def variants() -> dict[str, Variant]:
    """The builds for this machine's architecture, keyed by torch's CPU capability names, widest first."""
    return X86 if platform.machine().lower() in ("x86_64", "amd64") else OTHER


def source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def library_path() -> Path:
    """Where the build of the current source lives: its name carries the source's hash, so an edited source never
    meets an old build (and no process ever loads a stale one)."""
    return SOURCE.with_name(f"_top2-{source_hash()}.so")


def build(out: Path | None = None, compiler: str | None = None) -> Path:
    """Compile every variant of `variants()` and link them into `out` (default `library_path()`; replaced
    atomically); returns `out`. A wide variant the compiler cannot build (an old compiler without x86-64-v4) is left
    out, with a warning: `load` then takes the next narrower one. Raises RuntimeError with the compiler's message
    when the baseline variant or the link fails."""
    cxx = compiler or os.environ.get("CXX", "c++")
    digest = source_hash()
    out = Path(out or library_path())
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nws-top2-") as tmp:
        objects = []
        for name, v in variants().items():
            obj = Path(tmp) / f"{v.suffix}.o"
            try:
                _compile([cxx, "-O3", "-std=c++17", "-fPIC", "-fopenmp", "-fno-math-errno", *v.flags,
                          f"-DNWS_LANES={v.lanes}", f"-DNWS_ROWS={v.rows}", f"-DNWS_SUFFIX={v.suffix}",
                          f'-DNWS_SOURCE_HASH="{digest}"', "-c", str(SOURCE), "-o", str(obj)])
            except RuntimeError as e:
                if name == "DEFAULT" or "no C++ compiler" in str(e):
                    raise
                log.warning("the %s variant of the native search kernel does not build here; left out: %s",
                            v.suffix, str(e).splitlines()[-1] if str(e) else e)
                continue
            objects.append(str(obj))
        staged = Path(tmp) / out.name
        _compile([cxx, "-shared", "-fopenmp", *objects, "-o", str(staged)])
        os.replace(staged, out) if staged.stat().st_dev == out.parent.stat().st_dev else _copy(staged, out)
    return out


def _compile(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"no C++ compiler {cmd[0]!r} (set CXX, or install g++): {e}") from e
    if proc.returncode != 0:
        raise RuntimeError(f"building the native search kernel failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def _copy(src: Path, dst: Path) -> None:
    """Copy across file systems, then rename into place (a running process keeps its mapped old library)."""
    part = dst.with_suffix(".part")
    part.write_bytes(src.read_bytes())
    os.replace(part, dst)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The loaded entry point for this CPU and its lane count (the pool is padded to a multiple of it)."""

    fn: ctypes._CFuncPtr
    lanes: int
    name: str


def load(path: Path | None = None, capability: str | None = None) -> Kernel | None:
    """The kernel for this CPU (or for torch's `capability` name) from the library at `path` (default
    `library_path()`), or None (and why, logged) when it is missing or was built from another source."""
    path = Path(path or library_path())
    if not path.exists():
        log.warning("the native search kernel is not built (%s); the search keeps its slower torch path. "
                    "`make setup` builds it", path)
        return None
    cap = capability or torch.backends.cpu.get_cpu_capability()
    names = list(variants())
    lib = ctypes.CDLL(str(path))
    # this CPU's variant, else the next narrower one the build holds (each instruction set includes the next)
    for name in names[names.index(cap) if cap in names else names.index("DEFAULT"):]:
        v = variants()[name]
        if hasattr(lib, f"nws_top2_{v.suffix}"):
            break
    else:
        log.warning("%s holds no variant of the native search kernel; `make setup` rebuilds it", path)
        return None
    source = getattr(lib, f"nws_top2_source_{v.suffix}")
    fn = getattr(lib, f"nws_top2_{v.suffix}")
    source.restype = ctypes.c_char_p
    if source().decode() != source_hash():
        log.warning("%s was built from another version of %s; the search keeps its torch path until "
                    "`make setup` rebuilds it", path, SOURCE.name)
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return Kernel(fn, v.lanes, v.suffix)


def ensure(path: Path | None = None) -> Kernel | None:
    """The kernel for this CPU, building the library first where the current source has none yet (a few seconds,
    once per source version: `make setup` does it ahead); None, with a warning, where it cannot be built (no
    compiler, a read-only install): the torch path serves then."""
    path = Path(path or library_path())
    if not path.exists():
        log.info("building the native search kernel (once per source version): %s", path)
        try:
            build(path)
        except (RuntimeError, OSError) as e:
            log.warning("the native search kernel could not be built, the search keeps its slower torch path: %s", e)
            return None
    return load(path)


@functools.cache
def default_kernel() -> Kernel | None:
    """The kernel `nws.search` uses on CPU, loaded (and built if need be) once per process; None where
    NWS_NATIVE_SEARCH=0 or it cannot be built (the torch path serves)."""
    if os.environ.get("NWS_NATIVE_SEARCH", "1") == "0":
        return None
    return ensure()


def top2(x: torch.Tensor, p: torch.Tensor, kernel: Kernel, threads: int | None = None):
    """(best score, its index, second-best score) of every row of x (N × d, fp32, contiguous, CPU) against the pool
    p (n × d), scores s_j = ||p_j||² - 2 w·p_j; ties keep the lowest index and give best == second. A pool with a
    non-finite ||p_j||² makes every best NaN (no row can then be certified: the reference decides). Runs on
    `threads` OpenMP threads of torch's own pool (default torch's count); releases the GIL."""
    num, d, n = x.shape[0], x.shape[1], p.shape[0]
    npad = -(-n // kernel.lanes) * kernel.lanes
    pt = torch.zeros(d, npad)
    pt[:, :n] = p.t() * -2  # exact: a power of two
    pn = torch.full((npad,), math.inf)
    pn[:n] = p.double().square().sum(1)
    v1, v2 = torch.empty(num), torch.empty(num)
    idx = torch.empty(num, dtype=torch.long)
    if num:
        with torch.profiler.record_function("nws.search_native.top2"):  # named in profiles (bench.search --profile)
            kernel.fn(x.data_ptr(), num, d, pt.data_ptr(), pn.data_ptr(), npad, v1.data_ptr(), idx.data_ptr(),
                      v2.data_ptr(), threads or torch.get_num_threads())
    if not bool(torch.isfinite(pn[:n]).all()):
        v1.fill_(math.nan)
    return v1, idx, v2


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="nws.search_native", description="Build the native search kernel for the "
                                "current source, unless that build exists (make setup runs this).")
    p.add_argument("--out", type=Path, default=None, help="the shared library to write (default "
                   "nws/native/_top2-<source hash>.so, where the search looks for it)")
    p.add_argument("--cxx", default=None, help="the C++ compiler (default $CXX or c++)")
    p.add_argument("--force", action="store_true", help="build even where the library exists")
    args = p.parse_args(argv)
    path = Path(args.out or library_path())
    if args.force or not path.exists():
        build(path, args.cxx)
        for old in SOURCE.parent.glob("_top2-*.so"):  # builds of earlier sources (a running process keeps its map)
            if old != path and args.out is None:
                old.unlink(missing_ok=True)
        print(f"built {path} ({', '.join(v.suffix for v in variants().values())})")
    kernel = load(path)
    print(f"{path.name}: this CPU ({torch.backends.cpu.get_cpu_capability()}) uses the "
          f"{kernel.name if kernel else 'torch path'} variant")


if __name__ == "__main__":
    main()
