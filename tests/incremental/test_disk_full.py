"""`nws incremental` on a full disk (issue 17): the disk fills up (another process's file) while task 1 trains;
the run stops with exit 8 naming the file it was writing and "no space left on device", leaves no half-written
checkpoint or temp file and keeps task 0; after space is freed the same command goes on from there (task 0 is not
trained again) and ends with the results of a run that never ran out of space."""

from __future__ import annotations

import json

import pytest

from incremental import checkpoint
from nws.disk import DiskFull, free_bytes
from pipeline.cli import main as nws
from tests.incremental.test_cli import write_config
from tests.small_disk import small_disk


def test_a_full_disk_is_named_and_the_run_goes_on_from_the_stored_tasks(digits, pretrained, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    args = ["-c", str(cfg), "--method", "nws", "--data", str(digits), "--pretrain", str(pretrained),
            "incremental.augment=false"]
    assert nws(["incremental", *args, "--out", str(tmp_path / "reference")]) == 0
    reference = json.loads((tmp_path / "reference" / "nws" / "metrics.json").read_text())
    capsys.readouterr()
    real_save, filled = checkpoint.save, []

    def fill_then_save(accelerator, root, progress, state):
        """Task 1's epoch checkpoint finds the disk full: another file took all but one page."""
        if root.name == "task01" and not filled:
            filler.write_bytes(b"\0" * (free_bytes(filler.parent) - 4096))
            filled.append(filler)
        real_save(accelerator, root, progress, state)

    with small_disk(tmp_path / "disk", "20m") as disk, pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save", fill_then_save)
        out, filler = disk.path / "out", disk.path / "someone-elses-file"
        assert nws(["incremental", *args, "--out", str(out)]) == DiskFull.EXIT_CODE
        first = capsys.readouterr()
        error = first.err.strip().splitlines()[-1]
        assert error.startswith(f"error: {out / 'nws'}/") and ": no space left on device" in error, error
        assert "stored and evaluated from its artifact: R[0]" in first.out and "R[1]" not in first.out
        assert not [p for p in out.rglob(".*.tmp")]  # no temp file left behind
        assert list(out.rglob("epoch*")) == []  # nor a half-written checkpoint
        filler.unlink()  # space freed
        assert nws(["incremental", *args, "--out", str(out)]) == 0
        second = capsys.readouterr()
        assert "task 0 (task00) stored and evaluated by an earlier run, kept: R[0]" in second.out
        assert "task 0 (1/2) epoch" not in second.out and "task 1 (2/2) epoch 1/1" in second.out
        resumed = json.loads((out / "nws" / "metrics.json").read_text())
    assert resumed["acc_matrix"] == reference["acc_matrix"]
    assert resumed["memory_bytes"] == reference["memory_bytes"]
