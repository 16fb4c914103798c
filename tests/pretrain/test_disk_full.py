"""`nws pretrain` on a full disk (issue 17: a full disk gave `RuntimeError: basic_ios::clear: iostream error`,
naming nothing): a checkpoint that does not fit stops the run with exit 8 naming the checkpoint folder and "no space
left on device", its half-written folder is removed (latest.json still names the last complete one); after space is
freed the same command resumes from that checkpoint and ends with the pools of a run that never ran out of space."""

from __future__ import annotations

import torch

from nws.disk import DiskFull
from nws.io import load_tensors, read_json
from tests.pretrain.conftest import run_pretrain
from tests.small_disk import small_disk

# 8 steps, a checkpoint every 2 (2.4 MB each at this size), five kept: a 4 MB disk holds the first one only
RUN = ["pretrain.max_steps_per_epoch=8", "pretrain.checkpoint_every=2", "pretrain.keep_checkpoints=5",
       "pretrain.precision=fp32"]


def test_a_checkpoint_that_does_not_fit_is_named_and_the_run_resumes(digits, tmp_path):
    reference = run_pretrain(tmp_path, digits, tmp_path / "reference", *RUN)
    assert reference.returncode == 0, reference.stderr[-2000:]
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = disk.path / "pretrain"
        first = run_pretrain(tmp_path, digits, out, *RUN)
        assert first.returncode == DiskFull.EXIT_CODE, first.stderr[-3000:]
        ckpt = out / "checkpoints" / "nws"
        error = first.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: {ckpt}/e0000-b00000") and ": no space left on device" in error, error
        kept = read_json(ckpt / "latest.json")["tag"]
        assert kept == "e0000-b000002" and error.split()[1] != f"{ckpt / kept}:"
        assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == [kept]  # the half-written one is gone
        assert not (out / "complete").exists()
        disk.resize("40m")
        second = run_pretrain(tmp_path, digits, out, *RUN)
        assert second.returncode == 0, second.stderr[-3000:]
        assert f"resumed from checkpoint {kept} (step 2/8)" in second.stdout
        a, b = load_tensors(tmp_path / "reference" / "pools.safetensors"), load_tensors(out / "pools.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
