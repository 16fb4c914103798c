"""`nws data prepare` on a full disk (issue 17): exit 8 naming the shard or .beton being written and "no space left on
device", no unit counted that is not complete; after space is freed the same command finishes, keeping the units
already built, and the shards are byte for byte those of a run that never ran out of space."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.manifest import split_files
from nws.disk import DiskFull
from nws.io import read_json
from tests.small_disk import small_disk

ROOT = Path(__file__).resolve().parents[2]


def _prepare(out: Path, fmt: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "data", "prepare", "digits", "--out", str(out), "--format",
                           fmt, "--tasks", "blocks", "--classes-per-task", "2", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _hashes(out: Path) -> dict:
    return {name: [f["sha256"] for split in unit["splits"].values() for f in split_files(split)]
            for name, unit in read_json(out / "manifest.json")["units"].items()}


# room for some units, not all: 0.7 MiB a unit in shards, 8 MiB in .betons (FFCV writes whole 4 MiB pages)
@pytest.mark.parametrize(("fmt", "size", "freed", "suffix"), [("wds", "2m", "20m", ".tar"),
                                                             ("ffcv", "20m", "64m", ".beton")])
def test_prepare_on_a_full_disk_stops_naming_the_file_and_resumes(tmp_path, fmt, size, freed, suffix):
    """For FFCV the failing write happens in one of its worker processes, which its writer would wait for forever
    (data_prep.write_ffcv._watch_workers)."""
    reference = tmp_path / "reference"
    assert _prepare(reference, fmt).returncode == 0
    with small_disk(tmp_path / "disk", size) as disk:
        out = disk.path / "data"
        first = _prepare(out, fmt)
        assert first.returncode == DiskFull.EXIT_CODE, first.stderr[-2000:]
        error = first.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: {out}/") and f"{suffix}: no space left on device" in error, error
        built = _hashes(out)
        assert built and len(built) < len(_hashes(reference))  # some units done, the run stopped in the middle
        assert all(built[name] == _hashes(reference)[name] for name in built)  # what is counted is complete
        disk.resize(freed)
        second = _prepare(out, fmt)
        assert second.returncode == 0, second.stderr[-2000:]
        assert all(f"{name} " in line and "verified, skipped" in line
                   for name in built for line in second.stdout.splitlines() if line.startswith(f"{name} "))
        assert _hashes(out) == _hashes(reference)
        assert not list(out.glob(".*partial"))
        verify = subprocess.run([sys.executable, "-m", "pipeline", "data", "verify", str(out)], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert verify.returncode == 0, verify.stdout + verify.stderr
