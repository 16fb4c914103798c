"""Storage of a task's kernel indices (seed 004_ §3: a task is kept as indices into the frozen pools, Eq. 1).

Four modes, all in one self-describing, checksummed format:
- `packed`: ceil(log2 n) bits per index, the paper's count (9 bits at 512-kernel pools) without int16 + lzma.
- `entropy`: each layer coded by ANS (constriction) with its own empirical histogram, order 0; trained tasks
  use the pool unevenly (appendix §6 of 001_: >30% of the first layers' kernels are one pool kernel).
- `delta`: a task coded against the previous task: a "changed?" bit per kernel, then the new values.
- `near`: as `delta`, but a changed kernel is coded as the rank of its new pool kernel among the neighbours of its
  previous one (nws.near: temporary kernels move by small steps); needs the pools to code and to decode.
`prev` may cover only some layers (task 0 against the pretrained base model, whose head has the pretraining
classes): a layer is coded against prev when prev holds it with as many kernels, the others as in `entropy` (their
values, one histogram per layer); prev's other layers are ignored.

Layout (integers little-endian, varint = unsigned LEB128):
  b"NWSI" | version u8 | mode u8 | body length u32 | body | sha256(all before)[:8]
  body    = varint #layers | per layer: varint len(name), name (utf-8), varint n (pool size), varint length
  packed  : body += the indices of all layers, MSB first, one zero-padded bit stream
  entropy : body += varint len(model) | model | ANS words (u32)
  delta   : body += prev hash (8) | per layer varint #changed | varint len(model) | model | ANS words
  near    : body += prev hash (8) | pools hash (8) | per layer varint #changed | varint len(model) | model | ANS
            words (the model and the symbols are neighbour ranks 0..n-2 in place of the values)
  delta / near with prev covering only some layers (mode ids 4 / 5): as above, but after the hashes (which cover
  the referenced layers only) a bitmap of ceil(#layers / 8) bytes, bit i (MSB first) set when layer i is coded
  against prev, zero padding; #changed is written for the referenced layers only (the others: all changed, their
  symbols are the values 0..n-1, never ranks). A blob whose prev covers every layer keeps ids 2 / 3.
  model   = bit stream; per coded layer 5 bits k, then each symbol's count (0..n-1) as exp-Golomb of order k
  ANS     = one stack; decoded layer by layer: (delta: changed bits, Bernoulli(#changed/length)), then the
            indices (delta: the new values; near: their ranks) with a Categorical over the layer's used symbols
            at their counts.
The model uses constriction's `perfect=False` quantisation; `VERSION` pins it (a golden test guards it). The
`near` mode (id 3) and the partial-prev ids 4 and 5 came later inside version 1: older blobs read as before, and
older readers refuse the newer blobs as an unknown mode id.

One file per part: `container` (prefix, layer table, checksum, varints), `packed` (bit packing), `ans` (the ANS
coder and the `entropy` mode) with `model` (its counts), `delta` (`delta` and `near`); here, the choice of mode."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from nws.codec.ans import decode_entropy, encode_entropy
from nws.codec.container import (
    ALL_MODES,
    MAGIC,
    MODES,
    NEEDS_PREV,
    PARTIAL_IDS,
    POOL_MODES,
    VERSION,
    BlobInfo,
    CorruptBlob,
    Layer,
    Reader,
    frame,
    layer_table,
    open_blob,
    validate,
)
from nws.codec.delta import decode_delta, encode_delta, near_pools, read_head, referenced
from nws.codec.packed import decode_packed, encode_packed, packed_bits
from nws.entropy import as_index_array, conditional_entropy_bits, empirical_entropy_bits
from nws.near import MAX_POOL


def encode(idx: Mapping[str, torch.Tensor], pool_sizes: Mapping[str, int], mode: str = "packed",
           prev: Mapping[str, torch.Tensor] | None = None,
           pools: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """Bytes storing `idx` ({layer: 1-D int tensor}, order kept); `prev` is used by the modes "delta" and "near"
    only, `pools` ({layer: n × d pool kernels}) by "near" only. A layer is coded against `prev` when prev holds it
    with as many kernels, else without it (see the module docstring)."""
    layers, arrays = validate(idx, pool_sizes)
    mode_id = ALL_MODES.index(mode) if mode in ALL_MODES else -1
    if mode == "packed":
        tail = encode_packed(layers, arrays)
    elif mode == "entropy":
        tail = encode_entropy(layers, arrays)
    elif mode in NEEDS_PREV:
        if prev is None:
            raise ValueError(f"mode={mode!r} needs prev= (the previous task's indices)")
        ref = [layer.name in prev and len(prev[layer.name]) == layer.length for layer in layers]
        near = near_pools(referenced(layers, ref), pools) if mode == "near" else None
        tail = encode_delta(layers, arrays, prev, ref, near)
        if not all(ref):
            mode_id = PARTIAL_IDS[mode]
    else:
        raise ValueError(f"unknown codec mode {mode!r}; valid modes: {', '.join(ALL_MODES)}")
    return frame(mode_id, layer_table(layers) + tail)


def decode(blob: bytes, prev: Mapping[str, torch.Tensor] | None = None,
           pools: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """{layer: int64 tensor} stored in `blob`; delta and near blobs need `prev`, the previous task's indices (at
    least the layers coded against it), and near blobs the pools they were coded with."""
    mode, layers, extra, reader = _open(blob)
    if mode == "packed":
        arrays = decode_packed(layers, reader)
    elif mode == "entropy":
        arrays = decode_entropy(layers, reader)
    else:
        near = None
        if mode == "near":
            if pools is None:
                raise ValueError("this is a near blob: decode(blob, prev=..., pools=...) needs the pools")
            near = near_pools(referenced(layers, extra[3]), pools)
        arrays = decode_delta(layers, extra, reader, prev, near)
    return {layer.name: torch.from_numpy(x) for layer, x in zip(layers, arrays, strict=True)}


def info(blob: bytes) -> BlobInfo:
    """Mode, layers and the header/payload split of a verified blob (for the memory tables, issue 9)."""
    mode, layers, _, reader = _open(blob)
    return BlobInfo(mode, tuple(layers), reader.pos, reader.end - reader.pos)


def smallest(idx: Mapping[str, torch.Tensor], pool_sizes: Mapping[str, int],
             prev: Mapping[str, torch.Tensor] | None = None,
             pools: Mapping[str, torch.Tensor] | None = None) -> tuple[str, bytes]:
    """(mode, blob) of the smallest mode that round-trips exactly; delta is tried when `prev` is given, near when
    `prev` and `pools` are given (and every pool is at most nws.near.MAX_POOL kernels)."""
    modes = ["packed", "entropy"]
    if prev is not None:
        modes.append("delta")
        if pools is not None and all(int(n) <= MAX_POOL for n in pool_sizes.values()):
            modes.append("near")
    best: tuple[str, bytes] | None = None
    for mode in modes:
        blob = encode(idx, pool_sizes, mode, prev=prev, pools=pools)
        if best is not None and len(blob) >= len(best[1]):
            continue
        back = decode(blob, prev=prev, pools=pools)
        if list(back) == list(idx) and all(
                np.array_equal(back[k].numpy(), as_index_array(k, v)) for k, v in idx.items()):
            best = (mode, blob)
    if best is None:
        raise RuntimeError("no codec mode round-trips these indices")
    return best


def _open(blob) -> tuple[str, list[Layer], tuple, Reader]:
    """The verified blob's mode and layers, the delta / near head (else ()), and a reader at the mode's payload."""
    mode, mode_id, layers, reader = open_blob(blob)
    extra = read_head(reader, mode, mode_id, layers) if mode in NEEDS_PREV else ()
    return mode, layers, extra, reader


__all__ = ["ALL_MODES", "MAGIC", "MODES", "NEEDS_PREV", "POOL_MODES", "VERSION", "BlobInfo", "CorruptBlob", "Layer",
           "conditional_entropy_bits", "decode", "empirical_entropy_bits", "encode", "info", "packed_bits", "smallest"]
