"""nws.codec: exact round trips in every mode, exact packed sizes, entropy-mode bytes near the empirical
entropy, delta coding, and corrupted, truncated or mismatched blobs that raise, never give wrong indices."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nws import codec
from nws.codec import CorruptBlob

POOL_SIZES = [2, 128, 512, 1024]


def zipf(rng, n, length, s):
    """Zipf-like indices over a permuted pool of n kernels, as trained layers use their pools (001_ §6)."""
    p = 1.0 / np.arange(1, n + 1) ** s
    return torch.from_numpy(rng.permutation(n)[rng.choice(n, size=length, p=p / p.sum())])


def make_task(seed, n, lengths, skew):
    rng = np.random.default_rng(seed)
    idx = {}
    for i, length in enumerate(lengths):
        if skew == "uniform":
            idx[f"layer{i}.conv"] = torch.from_numpy(rng.integers(0, n, length))
        else:
            idx[f"layer{i}.conv"] = zipf(rng, n, length, 2.0 if skew == "very" else 1.1)
    return idx, {k: n for k in idx}


def change(idx, n, rate, seed):
    """A next task: each kernel gets a new index with probability `rate`."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in idx.items():
        x = v.numpy().copy()
        mask = rng.random(x.size) < rate
        x[mask] = rng.integers(0, n, int(mask.sum()))
        out[k] = torch.from_numpy(x)
    return out


def assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == torch.int64 and a[k].dim() == 1
        assert torch.equal(a[k], b[k].to(torch.int64)), k


def varint_len(v):
    return max(1, math.ceil(v.bit_length() / 7))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from(POOL_SIZES),
       lengths=st.lists(st.sampled_from([0, 0, 1, 7, 100, 2048, 5000]), min_size=1, max_size=5),
       skew=st.sampled_from(["uniform", "zipf", "very"]), rate=st.sampled_from([0.0, 0.05, 0.5, 1.0]))
def test_round_trip_every_mode(seed, n, lengths, skew, rate):
    prev, pools = make_task(seed, n, lengths, skew)
    idx = change(prev, n, rate, seed + 1)
    for mode in codec.MODES:
        blob = codec.encode(idx, pools, mode, prev=prev)
        assert codec.info(blob).mode == mode
        assert_same(codec.decode(blob, prev=prev), idx)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from(POOL_SIZES),
       skew=st.sampled_from(["uniform", "very"]))
def test_round_trip_two_million(seed, n, skew):
    prev, pools = make_task(seed, n, [2_000_000, 0, 3], skew)
    idx = change(prev, n, 0.05, seed + 1)
    for mode in codec.MODES:
        assert_same(codec.decode(codec.encode(idx, pools, mode, prev=prev), prev=prev), idx)


def test_pool_of_one_kernel_costs_no_payload():
    idx = {"a": torch.zeros(1000, dtype=torch.int64)}
    blob = codec.encode(idx, {"a": 1})
    assert codec.info(blob).payload_bytes == 0
    assert_same(codec.decode(blob), idx)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 2, 3, 128, 512, 1000, 1024, 70000]),
       lengths=st.lists(st.integers(0, 3000), min_size=0, max_size=4))
def test_packed_size_is_header_plus_ceil_log2_n_bits(seed, n, lengths):
    idx, pools = make_task(seed, n, lengths, "uniform")
    blob = codec.encode(idx, pools, "packed")
    bits = math.ceil(math.log2(n)) if n > 1 else 0
    header = 4 + 1 + 1 + 4 + varint_len(len(idx)) + sum(
        varint_len(len(k)) + len(k) + varint_len(n) + varint_len(len(v)) for k, v in idx.items())
    payload = math.ceil(sum(len(v) for v in idx.values()) * bits / 8)
    assert len(blob) == header + payload + 8
    info = codec.info(blob)
    assert (info.header_bytes, info.payload_bytes) == (header, payload)


def test_resnet18_task_packs_to_nine_bits_per_index():
    """The official NWS ResNet-18 (issue 2): 1,395,392 kernels at 512-kernel pools are 9 bits each."""
    lengths = [192, 4096, 4096, 4096, 4096, 8192, 16384, 16384, 16384, 8192, 32768, 65536, 65536, 65536,
               32768, 131072, 262144, 262144, 262144, 131072, 2560]
    idx, pools = make_task(0, 512, lengths, "uniform")
    assert sum(lengths) == 1_395_392
    assert codec.info(codec.encode(idx, pools)).payload_bytes == 1_395_392 * 9 // 8


def skewed_task(seed):
    """Layers like a trained task: the first very skewed (>30% one kernel, 001_ §6), the rest Zipf-like."""
    rng = np.random.default_rng(seed)
    idx = {"conv1": zipf(rng, 512, 20_000, 2.0)}
    idx.update({f"layer{i}": zipf(rng, 512, 100_000, 1.1) for i in range(3)})
    return idx, {k: 512 for k in idx}


def test_entropy_mode_reaches_the_empirical_entropy():
    idx, pools = skewed_task(1)
    first = np.bincount(idx["conv1"].numpy()).max() / len(idx["conv1"])
    assert first > 0.3
    limit = codec.empirical_entropy_bits(idx) / 8
    blob = codec.encode(idx, pools, "entropy")
    payload = codec.info(blob).payload_bytes
    assert limit * 0.999 < payload < limit * 1.02
    assert len(blob) < 0.8 * len(codec.encode(idx, pools, "packed"))
    assert codec.smallest(idx, pools) == ("entropy", blob)


def test_smallest_keeps_packed_for_uniform_indices():
    idx, pools = make_task(2, 512, [50_000, 30_000], "uniform")
    mode, blob = codec.smallest(idx, pools)
    assert mode == "packed" and blob == codec.encode(idx, pools, "packed")


def test_delta_with_few_changes_is_much_smaller_than_entropy():
    prev, pools = skewed_task(3)
    idx = change(prev, 512, 0.05, 4)
    entropy = codec.encode(idx, pools, "entropy")
    delta = codec.encode(idx, pools, "delta", prev=prev)
    assert len(delta) < 0.15 * len(entropy)
    mode, blob = codec.smallest(idx, pools, prev=prev)
    assert (mode, blob) == ("delta", delta)
    assert_same(codec.decode(blob, prev=prev), idx)


def test_delta_refuses_a_wrong_or_missing_prev():
    prev, pools = make_task(5, 128, [500, 300], "zipf")
    idx = change(prev, 128, 0.1, 6)
    blob = codec.encode(idx, pools, "delta", prev=prev)
    with pytest.raises(ValueError, match="needs the previous task"):
        codec.decode(blob)
    wrong = {k: v.clone() for k, v in prev.items()}
    wrong["layer1.conv"][7] = (wrong["layer1.conv"][7] + 1) % 128
    with pytest.raises(ValueError, match="different previous task"):
        codec.decode(blob, prev=wrong)
    with pytest.raises(ValueError, match="layer0.conv.*500 indices but prev has 499"):
        codec.decode(blob, prev={**prev, "layer0.conv": prev["layer0.conv"][:-1]})
    with pytest.raises(ValueError, match="missing \\['layer1.conv'\\]"):
        codec.decode(blob, prev={"layer0.conv": prev["layer0.conv"]})
    with pytest.raises(ValueError, match="needs prev"):
        codec.encode(idx, pools, "delta")


def make_pools(seed, sizes, d=9):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, d, generator=g) for name, n in sizes.items()}


@pytest.mark.parametrize("mode", codec.NEEDS_PREV)
def test_prev_covering_some_layers_codes_the_others_alone(mode):
    """Task 0 against the pretrained base model: the head has another number of kernels (other classes), a layer
    may be missing from prev, prev may hold layers the task lacks; the covered layers are still coded against it."""
    prev, sizes = make_task(11, 128, [3000, 2000, 0, 500], "zipf")
    idx = change(prev, 128, 0.05, 12)
    pools = make_pools(11, sizes)
    idx["layer3.conv"] = idx["layer3.conv"][:200]  # a head of another size: coded without prev
    base = {k: v for k, v in prev.items() if k != "layer1.conv"}  # not in prev: coded without it
    base["extra"] = torch.arange(5)  # a layer of prev the task does not have: ignored
    blob = codec.encode(idx, sizes, mode, prev=base, pools=pools)
    assert blob[5] == {"delta": 4, "near": 5}[mode]  # the mode id of a partial prev
    assert codec.info(blob).mode == mode
    assert_same(codec.decode(blob, prev=base, pools=pools), idx)
    alone = {k: idx[k] for k in ("layer1.conv", "layer3.conv")}
    covered = {k: idx[k] for k in ("layer0.conv", "layer2.conv")}
    # the covered layers cost what they cost against prev, the others about what `entropy` pays for them
    budget = len(codec.encode(covered, sizes, mode, prev=base, pools=pools)) + len(codec.encode(alone, sizes,
                                                                                                "entropy"))
    assert len(blob) <= budget + 8
    assert len(blob) < 0.6 * len(codec.encode(idx, sizes, "entropy"))
    assert codec.smallest(idx, sizes, prev=base, pools=pools)[0] in codec.NEEDS_PREV
    wrong = {**base, "layer0.conv": base["layer0.conv"].flip(0)}
    with pytest.raises(ValueError, match="different previous task"):
        codec.decode(blob, prev=wrong, pools=pools)
    with pytest.raises(ValueError, match="missing \\['layer0.conv'\\]"):
        codec.decode(blob, prev={"layer2.conv": base["layer2.conv"]}, pools=pools)
    with pytest.raises(ValueError, match="'layer0.conv': 3000 indices but prev has 2999"):
        codec.decode(blob, prev={**base, "layer0.conv": base["layer0.conv"][:-1]}, pools=pools)
    # no layer covered at all still round-trips (every layer by value)
    none = codec.encode(idx, sizes, mode, prev={"extra": torch.arange(5)}, pools=pools)
    assert_same(codec.decode(none, prev={"extra": torch.arange(5)}, pools=pools), idx)


def test_partial_prev_blob_corruption_raises():
    prev, sizes = make_task(13, 64, [400, 300, 9], "zipf")
    idx = change(prev, 64, 0.1, 14)
    idx["layer2.conv"] = idx["layer2.conv"][:4]
    blob = codec.encode(idx, sizes, "delta", prev=prev)
    for where in range(len(blob)):
        bad = bytearray(blob)
        bad[where] ^= 0x41
        with pytest.raises(CorruptBlob):
            codec.decode(bytes(bad), prev=prev)


@pytest.fixture(scope="module")
def blobs():
    prev, pools = make_task(7, 512, [300, 0, 200], "very")
    idx = change(prev, 512, 0.2, 8)
    return prev, {mode: codec.encode(idx, pools, mode, prev=prev) for mode in codec.MODES}


@settings(max_examples=150, deadline=None)
@given(mode=st.sampled_from(codec.MODES), where=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_a_flipped_byte_anywhere_raises(blobs, mode, where, flip):
    prev, by_mode = blobs
    blob = bytearray(by_mode[mode])
    blob[int(where * len(blob))] ^= flip
    with pytest.raises(CorruptBlob):
        codec.decode(bytes(blob), prev=prev)


@settings(max_examples=100, deadline=None)
@given(mode=st.sampled_from(codec.MODES), where=st.floats(0, 1, exclude_max=True))
def test_a_truncated_blob_raises(blobs, mode, where):
    prev, by_mode = blobs
    blob = by_mode[mode]
    with pytest.raises(CorruptBlob):
        codec.decode(blob[: int(where * len(blob))], prev=prev)


def test_corruption_messages_say_what_is_wrong(blobs):
    prev, by_mode = blobs
    blob = by_mode["entropy"]
    with pytest.raises(CorruptBlob, match="bad magic"):
        codec.decode(b"PK\x03\x04" + blob[4:])
    with pytest.raises(CorruptBlob, match="truncated"):
        codec.decode(blob[:-1])
    with pytest.raises(CorruptBlob, match="trailing"):
        codec.decode(blob + b"\0")
    with pytest.raises(CorruptBlob, match="checksum mismatch"):
        codec.decode(blob[:20] + bytes([blob[20] ^ 1]) + blob[21:])
    with pytest.raises(CorruptBlob, match="version"):
        codec.decode(blob[:4] + b"\x07" + blob[5:])
    assert issubclass(CorruptBlob, ValueError)


def test_bad_indices_raise_naming_the_layer():
    ok = torch.arange(10)
    with pytest.raises(ValueError, match="'b': index 10 out of range \\[0, 10\\)"):
        codec.encode({"a": ok, "b": torch.arange(11)}, {"a": 10, "b": 10})
    with pytest.raises(ValueError, match="'b': index -1 out of range"):
        codec.encode({"a": ok, "b": torch.tensor([-1, 2])}, {"a": 10, "b": 10})
    with pytest.raises(ValueError, match="'b': no pool size"):
        codec.encode({"a": ok, "b": ok}, {"a": 10})
    with pytest.raises(ValueError, match="'a': indices must be 1-D"):
        codec.encode({"a": ok.view(2, 5)}, {"a": 10})
    with pytest.raises(ValueError, match="'a': indices must be integers"):
        codec.encode({"a": ok.float()}, {"a": 10})
    with pytest.raises(ValueError, match="unknown codec mode"):
        codec.encode({"a": ok}, {"a": 10}, mode="lzma")


# Blobs written by format version 1 (constriction 0.5.0): they must keep decoding to these indices, so that
# stored task artifacts stay readable when the entropy-coding library is upgraded.
GOLDEN_CUR = {"conv1": [3, 3, 3, 0, 3, 1, 3, 3, 2, 3, 3, 0], "fc": [5, 6, 7, 5, 5, 5, 9, 5], "empty": []}
GOLDEN_PREV = {"conv1": [3, 3, 3, 0, 3, 3, 3, 3, 2, 3, 3, 0], "fc": [5, 5, 7, 5, 5, 5, 5, 5], "empty": []}
GOLDEN = {
    "packed": "4e57534901001e0000000305636f6e7631040c0266630a0805656d707479800400fcdfbc56755595"
        "511340434af406a9",
    "entropy": "4e5753490101260000000305636f6e7631040c0266630a0805656d707479800400060a7940f992a0"
        "8b0aa17d1e9b0200d6299779736ef18d",
    "delta": "4e57534901022f0000000305636f6e7631040c0266630a0805656d707479800400e1c6ea43ba5b47"
        "d3010200040560fd68b83e00bf09000000096280780425ea55",
}


@pytest.mark.parametrize("mode", codec.MODES)
def test_version_1_blobs_still_decode(mode):
    as_tensors = {k: torch.tensor(v, dtype=torch.int64) for k, v in GOLDEN_CUR.items()}
    prev = {k: torch.tensor(v, dtype=torch.int64) for k, v in GOLDEN_PREV.items()}
    assert_same(codec.decode(bytes.fromhex(GOLDEN[mode]), prev=prev), as_tensors)


def test_entropy_limits():
    half = {"a": torch.tensor([0, 1] * 50), "b": torch.tensor([0, 1, 2, 3] * 25),
            "c": torch.zeros(0, dtype=torch.int64)}
    assert codec.empirical_entropy_bits(half) == pytest.approx(100 * 1 + 100 * 2)
    assert codec.conditional_entropy_bits(half, half) == pytest.approx(0)
    shifted = {k: (v + 5) % 7 for k, v in half.items()}
    assert codec.conditional_entropy_bits(shifted, half) == pytest.approx(0)
    constant = {k: torch.zeros_like(v) for k, v in half.items()}
    assert codec.conditional_entropy_bits(half, constant) == pytest.approx(300)
    with pytest.raises(ValueError, match="missing"):
        codec.conditional_entropy_bits(half, {"a": half["a"]})
