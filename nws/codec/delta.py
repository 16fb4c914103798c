"""The `delta` and `near` modes: a task coded against the previous task. Per layer a "changed?" bit per kernel
(Bernoulli at the layer's changed fraction), then the changed kernels' new values (delta) or their new pool kernels'
ranks among the neighbours of the previous ones (near, nws.near: temporary kernels move by small steps). A layer
that the previous task does not hold with as many kernels is coded by value, all changed. Hashes of the previous
indices (and of the pools) make a blob refuse to decode against anything but what it was coded with."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import constriction
import numpy as np
import torch

from nws.codec.ans import ans_bytes, ans_reader, bernoulli, check_empty, pop_symbols, push_symbols
from nws.codec.container import PARTIAL_IDS, CorruptBlob, Layer, Reader, varint
from nws.codec.model import model_bytes, read_model
from nws.entropy import as_index_array
from nws.near import MAX_POOL, neighbour_order, pool_array, pools_hash, rank_table

_HASH = 8


def encode_delta(layers: list[Layer], arrays: list[np.ndarray], prev: Mapping[str, torch.Tensor],
                 ref: list[bool], near: dict[str, np.ndarray] | None = None) -> bytes:
    """delta (near is None): the changed kernels' new values; near: their neighbour ranks in the pool. Layers not
    referenced (`ref` False) count as all changed and are coded by value."""
    before = [as_index_array(layer.name, prev[layer.name]) if r else None for layer, r in zip(layers, ref,
                                                                                               strict=True)]
    changed = [x != b if b is not None else np.ones(x.size, bool) for x, b in zip(arrays, before, strict=True)]
    symbols, sizes = [], []
    for layer, x, b, m in zip(layers, arrays, before, changed, strict=True):
        if near is None or b is None:
            symbols.append(x[m])
            sizes.append(layer.n)
        else:
            rank = rank_table(neighbour_order(near[layer.name])) if m.any() else None
            symbols.append(rank[b[m], x[m]].astype(np.int64) if m.any() else np.zeros(0, np.int64))
            sizes.append(layer.n - 1)
    counts = [np.bincount(v, minlength=n) for v, n in zip(symbols, sizes, strict=True)]
    coder = constriction.stream.stack.AnsCoder()
    for v, m, c in zip(reversed(symbols), reversed(changed), reversed(counts), strict=True):
        push_symbols(coder, v, c)
        if 0 < c.sum() < m.size:
            coder.encode_reverse(m.astype(np.int32), bernoulli(int(c.sum()), m.size))
    names = [layer.name for layer in referenced(layers, ref)]
    head = _prev_hash(names, [b for b in before if b is not None])
    if near is not None:
        head += pools_hash(names, near)
    if not all(ref):
        head += np.packbits(np.array(ref, np.uint8)).tobytes()
    head += b"".join(varint(int(c.sum())) for c, r in zip(counts, ref, strict=True) if r)
    return head + model_bytes(counts) + ans_bytes(coder)


def read_head(reader: Reader, mode: str, mode_id: int, layers: list[Layer]) -> tuple:
    """(prev hash, #changed per layer, pools hash, referenced per layer): the part of a delta or near blob between
    the layer table and the count model."""
    prev_hash = reader.take(_HASH)
    pool_hash = reader.take(_HASH) if mode == "near" else b""
    ref = [True] * len(layers)
    if mode_id == PARTIAL_IDS[mode]:
        bits = np.unpackbits(np.frombuffer(reader.take(-(-len(layers) // 8)), np.uint8))
        if bits[len(layers):].any():
            raise CorruptBlob("nonzero padding bits after the reference bitmap")
        ref = [bool(b) for b in bits[: len(layers)]]
    num_changed = [reader.varint() if r else layer.length for layer, r in zip(layers, ref, strict=True)]
    return prev_hash, num_changed, pool_hash, ref


def decode_delta(layers: list[Layer], extra: tuple, reader: Reader, prev,
                 near: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    prev_hash, num_changed, pool_hash, ref = extra
    kind = "near" if near is not None else "delta"
    if prev is None:
        raise ValueError(f"this is a {kind} blob: decode(blob, prev=...) needs the previous task's indices")
    coded = referenced(layers, ref)
    _check_prev(coded, prev)
    before = [as_index_array(layer.name, prev[layer.name]) if r else None for layer, r in zip(layers, ref,
                                                                                               strict=True)]
    names = [layer.name for layer in coded]
    if _prev_hash(names, [b for b in before if b is not None]) != prev_hash:
        raise ValueError(f"{kind} blob was coded against a different previous task (prev hash mismatch)")
    if near is not None and pools_hash(names, near) != pool_hash:
        raise ValueError("near blob was coded with other pools (pools hash mismatch)")
    sizes = [layer.n - 1 if near is not None and r else layer.n for layer, r in zip(layers, ref, strict=True)]
    counts = read_model(reader, sizes, num_changed)
    coder = ans_reader(reader)
    arrays = []
    for layer, b, c, k in zip(layers, before, counts, num_changed, strict=True):
        if k > layer.length:
            raise CorruptBlob(f"layer {layer.name!r}: {k} changed kernels of {layer.length}")
        mask = np.full(layer.length, k == layer.length)
        if 0 < k < layer.length:
            mask = coder.decode(bernoulli(k, layer.length), layer.length).astype(bool)
            if int(mask.sum()) != k:
                raise CorruptBlob(f"layer {layer.name!r}: changed bits do not match the changed count")
        values = pop_symbols(coder, c, k)
        if b is None:  # not coded against prev: the values themselves
            arrays.append(values)
            continue
        x = b.copy()
        if near is not None and k:
            values = neighbour_order(near[layer.name])[b[mask], values].astype(np.int64)
        x[mask] = values
        arrays.append(x)
    check_empty(coder)
    return arrays


def near_pools(layers: list[Layer], pools) -> dict[str, np.ndarray]:
    """The pools of the coded layers as float32 arrays, each with its layer's pool size (else a clear error)."""
    if pools is None:
        raise ValueError("mode='near' needs pools= (the pool kernels of every layer)")
    out = {}
    for layer in layers:
        if layer.name not in pools:
            raise ValueError(f"layer {layer.name!r}: no pool given in pools (mode 'near' ranks pool neighbours)")
        p = pool_array(layer.name, pools[layer.name])
        if p.shape[0] != layer.n:
            raise ValueError(f"layer {layer.name!r}: pool of {p.shape[0]} kernels, the indices need {layer.n}")
        if p.shape[0] > MAX_POOL:
            raise ValueError(f"layer {layer.name!r}: pool of {p.shape[0]} kernels; mode 'near' supports at most "
                             f"{MAX_POOL}")
        out[layer.name] = p
    return out


def referenced(layers: list[Layer], ref: list[bool]) -> list[Layer]:
    return [layer for layer, r in zip(layers, ref, strict=True) if r]


def _check_prev(layers: list[Layer], prev: Mapping[str, torch.Tensor]) -> None:
    """`prev` holds every layer coded against it, each with as many kernels (its other layers are ignored)."""
    missing = [layer.name for layer in layers if layer.name not in prev]
    if missing:
        raise ValueError(f"prev does not hold the layers coded against it: missing {missing}")
    for layer in layers:
        if len(prev[layer.name]) != layer.length:
            raise ValueError(f"layer {layer.name!r}: {layer.length} indices but prev has {len(prev[layer.name])}")


def _prev_hash(names: list[str], arrays: list[np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for name, x in zip(names, arrays, strict=True):
        h.update(name.encode("utf-8") + b"\0" + len(x).to_bytes(8, "little"))
        h.update(x.astype("<i8").tobytes())
    return h.digest()[:_HASH]
