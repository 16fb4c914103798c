"""A method's memory, measured from the files its task models are rebuilt from (DESIGN §5; nws.memory).

Components are what the method names (NWS: pools, indices, state; Finetune: network) plus `metadata` (the
manifests and checksum files, counted too: rebuilding reads them). Shared files are counted once. The paper's
breakdown (BatchNorm, heads, backbone weights) of each component's safetensors files is derived from those same
files: each tensor's bytes go to `bn` (modules with running statistics), `head` (`fc.*`) or `weights`, and each
file's header to `header`, so a component's breakdown sums to its files' sizes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from safetensors import safe_open

from incremental.stored import task_files
from nws.memory import MIB, MemoryReport, measure, per_task


def components(method, num_tasks: int) -> dict[str, list[Path]]:
    parts: dict[str, list[Path]] = defaultdict(list)
    for name, paths in method.shared_files().items():
        parts[name] += paths
    for t in range(num_tasks):
        folder = method.ctx.task_dir(t)
        named = method.artifact_files(folder)
        for name, paths in named.items():
            parts[name] += paths
        listed = {p.resolve() for paths in named.values() for p in paths}
        parts["metadata"] += [p for p in task_files(folder) if p.resolve() not in listed]
    return dict(parts)


def tensor_breakdown(paths: list[Path]) -> dict[str, int]:
    """Bytes of the safetensors files among `paths` split into bn / head / weights / header."""
    out = {"bn": 0, "head": 0, "weights": 0, "header": 0}
    for path in paths:
        if path.suffix != ".safetensors":
            continue
        total = 0
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            bn_modules = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".running_mean")}
            for key in keys:
                t = f.get_slice(key)
                nbytes = _numel(t.get_shape()) * _itemsize(t.get_dtype())
                module = key.rsplit(".", 1)[0]
                kind = "head" if key.startswith("fc.") else "bn" if module in bn_modules else "weights"
                out[kind] += nbytes
                total += nbytes
        out["header"] += path.stat().st_size - total
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _itemsize(dtype: str) -> int:
    if dtype not in _ITEMSIZE:
        raise ValueError(f"unknown safetensors dtype {dtype!r}")
    return _ITEMSIZE[dtype]


def total(method, num_tasks: int) -> int:
    """Bytes of the files the first `num_tasks` tasks are rebuilt from (shared files included)."""
    return measure(components(method, num_tasks)).total


def cumulative(method, num_tasks: int) -> list[int]:
    """Entry t: bytes of the files tasks 0..t are rebuilt from (shared files included from the first task), measured
    from the files: memory against the number of learned tasks, the curve the report plots for every method."""
    return [total(method, t + 1) for t in range(num_tasks)]


def report(method, num_tasks: int) -> dict:
    """memory_bytes (total + one entry per component), the same in MiB, the per-task/assist split of the paper,
    the bn/head/weights breakdown of the stored tensors, and the cumulative bytes after each task."""
    parts = components(method, num_tasks)
    mem: MemoryReport = measure(parts)
    shared = set(method.shared_files())
    return {
        "memory_bytes": {"total": mem.total, **mem.components},
        "memory_mib": {"total": mem.total / MIB, **{k: v / MIB for k, v in mem.components.items()}},
        "memory_paper": per_task(mem, num_tasks, shared=shared),
        "memory_breakdown": {name: tensor_breakdown(paths) for name, paths in parts.items()
                             if any(p.suffix == ".safetensors" for p in paths)},
        "memory_bytes_cumulative": cumulative(method, num_tasks),
    }
