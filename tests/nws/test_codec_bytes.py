"""nws.codec writes the same bytes it wrote before it became a package (issue 18): one fixed task coded in every
mode (delta and near against a previous task covering every layer, and covering only some) must give exactly the
blobs recorded from the single-module codec, so stored tasks and their hashes do not change with the layout."""

import hashlib

import numpy as np
import pytest
import torch

from nws import codec

# (length, sha256) of each blob, recorded from nws/codec.py (one module) before the split (constriction 0.5.0)
RECORDED = {
    "packed": (307, "88d2453752821a8b301bfaec6d5a6f108b3a7d59b62b9adc8b0f78ec633ab2a3"),
    "entropy": (269, "a63ae2cde0915c5f77e57108388008b34c5a814d72e04f56a6d9c6de1c06a63b"),
    "delta": (171, "b0131b53e5ec78c2ffff27820fefc446704586c7ada1f4d6ef6575fc232b0390"),
    "delta_partial": (179, "cbb29bc46e8b394e79ae60fc2219825b8e297ac1eee3f3a22e70946b1d317bc1"),
    "near": (186, "4c3437ac8d9fe54687ae8f5bb2fc8ab0c22efb045b7c3af292e5d8217022b688"),
    "near_partial": (194, "3adf1e684be2c8d307354ea572f30efb94aa7671cbf80f3370ac67233c61d005"),
}


def fixed_task():
    """Indices, pool sizes, a previous task (about 20% of two layers' kernels changed), the same without `fc`,
    and pools: all from one seeded generator, so the input never changes."""
    rng = np.random.default_rng(18)
    sizes = {"conv1": 16, "layer1.conv": 300, "fc": 10, "empty": 5}
    cur = {"conv1": rng.integers(0, 16, 40), "layer1.conv": rng.integers(0, 30, 200),
           "fc": rng.integers(0, 10, 12), "empty": np.zeros(0, np.int64)}
    prev = {k: v.copy() for k, v in cur.items()}
    for k in ("conv1", "layer1.conv"):
        moved = rng.random(prev[k].size) < 0.2
        prev[k][moved] = rng.integers(0, sizes[k], int(moved.sum()))
    pools = {k: torch.from_numpy(rng.standard_normal((n, 9)).astype(np.float32)) for k, n in sizes.items()}
    cur, prev = ({k: torch.from_numpy(v) for k, v in d.items()} for d in (cur, prev))
    return cur, sizes, prev, {k: v for k, v in prev.items() if k != "fc"}, pools


@pytest.mark.parametrize("case", RECORDED)
def test_blob_bytes_are_the_recorded_ones(case):
    cur, sizes, prev, partial, pools = fixed_task()
    mode = case.removesuffix("_partial")
    ref = partial if case.endswith("_partial") else prev
    blob = codec.encode(cur, sizes, mode, prev=ref, pools=pools)
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == RECORDED[case]
    back = codec.decode(blob, prev=ref, pools=pools)
    assert all(torch.equal(back[k], cur[k]) for k in cur)


def test_smallest_picks_the_recorded_blob():
    cur, sizes, prev, _, pools = fixed_task()
    mode, blob = codec.smallest(cur, sizes, prev=prev, pools=pools)
    assert mode == "delta" and hashlib.sha256(blob).hexdigest() == RECORDED["delta"][1]
