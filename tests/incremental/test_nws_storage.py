"""NWS storage in the task loop (issue 9): the default codec codes later tasks against the previous one, metrics.json
gives the stored index bytes as their own memory component with the kernels per task, and the keep_margin lever of
`incremental.options.nws` keeps more indices unchanged, on models rebuilt from the stored files."""

import json
import math

import nws
from incremental.loop import run
from nws.artifact import INDICES, read_manifest
from nws.io import load_tensors
from tests.incremental.fixtures import make_config


def stored(out):
    """[(manifest, decoded indices)] of every NWS task under `out`, decoding the delta/near chain."""
    pools = load_tensors(out / "nws" / "pools.safetensors")
    prev, chain = None, []
    for folder in sorted(p for p in (out / "nws").iterdir() if p.name.startswith("task")):
        manifest = read_manifest(folder)
        idx = nws.codec.decode((folder / INDICES).read_bytes(), prev=prev, pools=pools)
        chain.append((manifest, idx))
        prev = idx
    return chain, pools


def changed(chain):
    return sum(int((b[k] != a[k]).sum()) for (_, a), (_, b) in zip(chain[:-1], chain[1:], strict=True) for k in b)


def test_default_codec_and_levers_in_the_loop(digits, pretrained, tmp_path):
    plain = run(make_config(num_tasks=3), digits, pretrained, tmp_path / "plain", methods=["nws"])["nws"]
    chain, _ = stored(tmp_path / "plain")
    assert [m["codec"] for m, _ in chain][0] in ("packed", "entropy")  # task 0 has nothing to code against
    assert all(m["codec"] in nws.codec.NEEDS_PREV for m, _ in chain[1:])  # near or delta: smaller than alone
    index_files = [tmp_path / "plain" / "nws" / d / INDICES for d in plain["task_dirs"]]
    assert plain["memory_bytes"]["indices"] == sum(p.stat().st_size for p in index_files)
    assert plain["kernels_per_task"] == [m["kernels"] for m, _ in chain]
    assert math.isclose(plain["bits_per_kernel"], 8 * plain["memory_bytes"]["indices"] / sum(
        plain["kernels_per_task"]))

    cfg = make_config(num_tasks=3, codec="near", options={"nws": {"keep_margin": 1.0}})
    levered = run(cfg, digits, pretrained, tmp_path / "levers", methods=["nws"])["nws"]
    chain2, _ = stored(tmp_path / "levers")
    assert [m["codec"] for m, _ in chain2] == ["entropy", "near", "near"]
    assert changed(chain2) < 0.8 * changed(chain)  # the prior keeps unchanged indices unchanged
    assert levered["memory_bytes"]["indices"] < plain["memory_bytes"]["indices"]
    assert levered["final_avg_acc"] > 0.75  # 2-way digit tasks, rebuilt from the stored (levered) indices
    doc = json.loads((tmp_path / "levers" / "nws" / "metrics.json").read_text())
    assert doc["codec_per_task"] == ["entropy", "near", "near"]

