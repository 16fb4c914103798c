"""nws.memory: bytes measured from real files, each counted once, and the paper's per-task convention."""

import os

import pytest
import torch

from nws import codec, memory


def write(path, size):
    path.write_bytes(os.urandom(size))
    return path


def test_file_bytes_sums_sizes_on_disk(tmp_path):
    a, b = write(tmp_path / "a.bin", 1000), write(tmp_path / "b.bin", 24)
    assert memory.file_bytes([a, str(b)]) == 1024
    assert memory.file_bytes([]) == 0
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        memory.file_bytes([a, tmp_path / "missing.bin"])
    with pytest.raises(ValueError, match="not a regular file"):
        memory.file_bytes([tmp_path])


def test_measure_reports_components_and_mib(tmp_path):
    pools = write(tmp_path / "pools.safetensors", 3 * memory.MIB)
    idx = [write(tmp_path / f"task{t}.idx", 1000 + t) for t in range(3)]
    bn = [write(tmp_path / f"task{t}.bn.safetensors", 500) for t in range(3)]
    report = memory.measure({"pools": [pools], "indices": idx, "bn": bn, "heads": []})
    assert report.components == {"pools": 3 * 2**20, "indices": 3003, "bn": 1500, "heads": 0}
    assert report.total == 3 * 2**20 + 4503
    d = report.to_dict()
    assert d["total"] == report.total and d["total_mib"] == pytest.approx(report.total / 1024 / 1024)
    assert d["components"]["pools"] == {"bytes": 3 * 2**20, "mib": 3.0}
    assert d["components"]["bn"]["mib"] == pytest.approx(1500 / 2**20)

    per = memory.per_task(report, num_tasks=3)
    assert per["per_task"] == pytest.approx((3003 + 1500) / 3)
    assert per["assist"] == 3 * 2**20 and per["assist_mib"] == 3.0
    assert memory.per_task(report, 3, shared=())["per_task"] == pytest.approx(report.total / 3)
    with pytest.raises(ValueError, match="num_tasks"):
        memory.per_task(report, 0)


def test_a_file_is_counted_once(tmp_path):
    a, b = write(tmp_path / "a.bin", 10), write(tmp_path / "b.bin", 20)
    with pytest.raises(ValueError, match="counted once"):
        memory.measure({"indices": [a, b], "bn": [tmp_path / "." / "a.bin"]})
    with pytest.raises(ValueError, match="counted once"):
        memory.measure({"indices": [a, a]})
    os.link(b, tmp_path / "b_link.bin")
    with pytest.raises(ValueError, match="counted once"):
        memory.measure({"indices": [b], "heads": [tmp_path / "b_link.bin"]})
    with pytest.raises(FileNotFoundError, match="gone.bin"):
        memory.measure({"indices": [a, tmp_path / "gone.bin"]})


def test_stored_index_blobs_are_measured_as_written(tmp_path):
    """The index component is the size of the codec's blobs on disk: 9 bits per kernel at 512-kernel pools."""
    idx = {"conv": torch.arange(4096) % 512, "fc": torch.arange(2560) % 512}
    blob = codec.encode(idx, {"conv": 512, "fc": 512}, "packed")
    (tmp_path / "task0.idx").write_bytes(blob)
    report = memory.measure({"indices": [tmp_path / "task0.idx"]})
    assert report.components["indices"] == len(blob)
    assert codec.info(blob).payload_bytes == (4096 + 2560) * 9 // 8
