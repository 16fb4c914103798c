"""Memory measured from stored files, not estimated (DESIGN §5).

A method's memory is the byte size of the files its task models are rebuilt from, split into named components
("pools", "indices", "bn", "heads", "backbone", "masks", ...). MiB = 2**20 bytes: the paper's "MB" is
bytes/1024/1024 (the official calculate_memory.py; notes/frameworks.md §4)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

MIB = 2**20


def file_bytes(paths: Iterable[str | os.PathLike]) -> int:
    """Sum of the on-disk sizes of `paths`; a missing path or a folder is an error naming it."""
    total = 0
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: file not found (listed for memory accounting)")
        if not path.is_file():
            raise ValueError(f"{path}: not a regular file; list the files it holds")
        total += path.stat().st_size
    return total


@dataclass
class MemoryReport:
    """Bytes per component; `total` is their sum."""

    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "total_mib": self.total / MIB,
                "components": {k: {"bytes": v, "mib": v / MIB} for k, v in self.components.items()}}


def measure(components: Mapping[str, Iterable[str | os.PathLike]]) -> MemoryReport:
    """A MemoryReport from {component: its files}. Each file is counted once: the same file (also through
    another path or a hard link) listed twice is an error."""
    owner: dict[tuple[int, int], tuple[str, Path]] = {}
    sizes = {}
    for name, paths in components.items():
        paths = [Path(p) for p in paths]
        sizes[name] = file_bytes(paths)
        for path in paths:
            st = path.stat()
            key = (st.st_dev, st.st_ino)
            if key in owner:
                first, first_path = owner[key]
                raise ValueError(f"{path}: already listed as {first_path} under {first!r}; "
                                 f"a file is counted once (now under {name!r})")
            owner[key] = (name, path)
    return MemoryReport(sizes)


def per_task(report: MemoryReport, num_tasks: int, shared: Iterable[str] = ("pools",)) -> dict:
    """The paper's convention (seed 004_ Table 1, official calculate_memory.py): what every task stores
    (indices + BN for NWS) divided by the number of tasks, and the shared "assist" memory (pools) apart."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    shared = set(shared)
    assist = sum(v for k, v in report.components.items() if k in shared)
    task = report.total - assist
    return {"per_task": task / num_tasks, "per_task_mib": task / num_tasks / MIB,
            "assist": assist, "assist_mib": assist / MIB, "num_tasks": num_tasks}
