"""A full disk is named (issue 17: it said only `basic_ios::clear: iostream error`): the atomic writers raise
DiskFull with the path and "no space left on device" on a real full file system (a small tmpfs), leave no temp file
and keep the previous version of the file; torch.save's wordless stream errors count only when the disk is full."""

from __future__ import annotations

import errno

import pytest
import torch

from nws.disk import DiskFull, disk_full, writing
from nws.io import atomic_write_bytes, save_tensors
from tests.small_disk import small_disk


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "64k") as d:
        yield d


def _no_temp_files(folder) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(disk):
    path = disk.path / "a.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(DiskFull) as info:
        atomic_write_bytes(path, b"x" * 200_000)
    assert str(info.value).startswith(f"{path}: no space left on device")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == b"old"
    _no_temp_files(disk.path)
    disk.resize("1m")  # space freed: the same write goes through
    atomic_write_bytes(path, b"x" * 200_000)
    assert path.stat().st_size == 200_000


def test_safetensors_on_a_full_disk_names_the_file(disk):
    path = disk.path / "t.safetensors"
    with pytest.raises(DiskFull) as info:
        save_tensors(path, {"w": torch.zeros(100_000)})
    assert str(info.value).startswith(f"{path}: no space left on device")
    assert not path.exists()
    _no_temp_files(disk.path)


def test_torch_save_stream_errors_count_only_on_a_full_disk(disk, tmp_path):
    wordless = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5120 vs 5014")
    assert disk_full(wordless, tmp_path / "x.pt") is None  # room left: some other failure, passed on unchanged
    (disk.path / "fill").write_bytes(b"\0" * 60_000)  # nearly full now
    assert str(disk_full(wordless, disk.path / "x.pt")).startswith(f"{disk.path / 'x.pt'}: no space left")
    with pytest.raises(DiskFull, match="no space left on device"), writing(disk.path / "ckpt"):
        with open(disk.path / "ckpt", "wb") as f:
            f.write(b"y" * 100_000)
    with pytest.raises(ValueError, match="other"), writing(disk.path / "ckpt"):  # other errors pass unchanged
        raise ValueError("other")
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), "q") is not None
    assert disk_full(OSError(errno.EACCES, "Permission denied"), "q") is None
