"""What every benchmark shares: naming the machine, and replacing its own section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from nws.io import atomic_write_bytes

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def cpu_name() -> str:
    """The CPU model with the vector instruction set torch uses on it (two machines named "AMD EPYC" differ: AVX2
    or AVX-512), the GPU when there is one, and the cores this process sees."""
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    cpu += f" ({torch.backends.cpu.get_cpu_capability()})"
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    return f"{cpu}, {os.cpu_count()} cores visible"


def write_section(heading: str, command: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section `heading` of BENCHMARKS.md; the other sections stay as they are."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    section = f"{heading}\n\nCommand: `{command}`\n\n{body.strip()}\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    atomic_write_bytes(path, text.encode())
