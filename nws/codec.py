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
older readers refuse the newer blobs as an unknown mode id."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from nws.entropy import as_index_array, conditional_entropy_bits, empirical_entropy_bits
from nws.near import MAX_POOL, neighbour_order, pool_array, pools_hash, rank_table

MAGIC = b"NWSI"
VERSION = 1
MODES = ("packed", "entropy", "delta")  # the modes that need no pools
POOL_MODES = ("near",)  # the modes that code against the pool kernels too
ALL_MODES = MODES + POOL_MODES  # in mode-id order
NEEDS_PREV = ("delta", "near")  # blobs that decode only with the previous task's indices
_PARTIAL_IDS = {"delta": 4, "near": 5}  # their ids when prev covers only some of the layers
_MODE_OF_ID = {**dict(enumerate(ALL_MODES)), **{i: m for m, i in _PARTIAL_IDS.items()}}
_PREFIX = struct.Struct("<4sBBI")
_CHECK = 8
_HASH = 8
_MAX_N = 2**31


class CorruptBlob(ValueError):
    """The bytes are not an intact index blob (bad magic, truncated, checksum mismatch, ...)."""


@dataclass(frozen=True)
class Layer:
    name: str
    n: int
    length: int


@dataclass(frozen=True)
class BlobInfo:
    """What a blob holds; header_bytes + payload_bytes + 8 (checksum) == len(blob)."""

    mode: str
    layers: tuple[Layer, ...]
    header_bytes: int
    payload_bytes: int


def packed_bits(n: int) -> int:
    """ceil(log2 n): the bits of one index into a pool of n kernels (0 for n == 1)."""
    return (n - 1).bit_length()


def encode(idx: Mapping[str, torch.Tensor], pool_sizes: Mapping[str, int], mode: str = "packed",
           prev: Mapping[str, torch.Tensor] | None = None,
           pools: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """Bytes storing `idx` ({layer: 1-D int tensor}, order kept); `prev` is used by the modes "delta" and "near"
    only, `pools` ({layer: n × d pool kernels}) by "near" only. A layer is coded against `prev` when prev holds it
    with as many kernels, else without it (see the module docstring)."""
    layers, arrays = _validate(idx, pool_sizes)
    mode_id = ALL_MODES.index(mode) if mode in ALL_MODES else -1
    if mode == "packed":
        tail = _encode_packed(layers, arrays)
    elif mode == "entropy":
        tail = _encode_entropy(layers, arrays)
    elif mode in NEEDS_PREV:
        if prev is None:
            raise ValueError(f"mode={mode!r} needs prev= (the previous task's indices)")
        ref = [layer.name in prev and len(prev[layer.name]) == layer.length for layer in layers]
        near = _near_pools(_referenced(layers, ref), pools) if mode == "near" else None
        tail = _encode_delta(layers, arrays, prev, ref, near)
        if not all(ref):
            mode_id = _PARTIAL_IDS[mode]
    else:
        raise ValueError(f"unknown codec mode {mode!r}; valid modes: {', '.join(ALL_MODES)}")
    body = _layer_table(layers) + tail
    if len(body) >= 2**32:
        raise ValueError(f"index blob body of {len(body)} bytes exceeds the format's 4 GiB limit")
    head = _PREFIX.pack(MAGIC, VERSION, mode_id, len(body)) + body
    return head + hashlib.sha256(head).digest()[:_CHECK]


def decode(blob: bytes, prev: Mapping[str, torch.Tensor] | None = None,
           pools: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """{layer: int64 tensor} stored in `blob`; delta and near blobs need `prev`, the previous task's indices (at
    least the layers coded against it), and near blobs the pools they were coded with."""
    mode, layers, extra, reader = _open(blob)
    if mode == "packed":
        arrays = _decode_packed(layers, reader)
    elif mode == "entropy":
        arrays = _decode_entropy(layers, reader)
    else:
        near = None
        if mode == "near":
            if pools is None:
                raise ValueError("this is a near blob: decode(blob, prev=..., pools=...) needs the pools")
            near = _near_pools(_referenced(layers, extra[3]), pools)
        arrays = _decode_delta(layers, extra, reader, prev, near)
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


# --- validation and header -------------------------------------------------------------------------------

def _validate(idx, pool_sizes) -> tuple[list[Layer], list[np.ndarray]]:
    layers, arrays = [], []
    for name, values in idx.items():
        if not isinstance(name, str):
            raise ValueError(f"layer names must be strings, got {name!r}")
        if name not in pool_sizes:
            raise ValueError(f"layer {name!r}: no pool size given in pool_sizes")
        n = int(pool_sizes[name])
        if not 1 <= n <= _MAX_N:
            raise ValueError(f"layer {name!r}: pool size {n} must be in [1, 2**31]")
        x = as_index_array(name, values)
        if x.size >= 2**32:
            raise ValueError(f"layer {name!r}: {x.size} indices exceed the format's 2**32 limit")
        if x.size and (x.min() < 0 or x.max() >= n):
            bad = int(x.min()) if x.min() < 0 else int(x.max())
            raise ValueError(f"layer {name!r}: index {bad} out of range [0, {n})")
        layers.append(Layer(name, n, int(x.size)))
        arrays.append(x)
    return layers, arrays


def _layer_table(layers: list[Layer]) -> bytes:
    out = bytearray(_varint(len(layers)))
    for layer in layers:
        name = layer.name.encode("utf-8")
        out += _varint(len(name)) + name + _varint(layer.n) + _varint(layer.length)
    return bytes(out)


def _open(blob) -> tuple[str, list[Layer], tuple, _Reader]:
    """Check magic, version, length and checksum, then read the layer table (and the delta header)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"an index blob is bytes, got {type(blob).__name__}")
    data = bytes(blob)
    if data[:4] != MAGIC[: len(data[:4])]:
        raise CorruptBlob(f"bad magic {data[:4]!r}: not an NWS index blob (expected {MAGIC!r})")
    if len(data) < _PREFIX.size:
        raise CorruptBlob(f"truncated: {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    _, version, mode_id, body_len = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise CorruptBlob(f"unsupported index blob version {version} (this code reads version {VERSION})")
    end = _PREFIX.size + body_len
    if len(data) < end + _CHECK:
        raise CorruptBlob(f"truncated: {len(data)} of {end + _CHECK} bytes")
    if len(data) > end + _CHECK:
        raise CorruptBlob(f"{len(data) - end - _CHECK} trailing bytes after the checksum")
    if hashlib.sha256(data[:end]).digest()[:_CHECK] != data[end:]:
        raise CorruptBlob("checksum mismatch: the index blob is corrupted")
    if mode_id not in _MODE_OF_ID:
        raise CorruptBlob(f"unknown mode id {mode_id}")
    reader = _Reader(data, _PREFIX.size, end)
    layers, seen = [], set()
    for _ in range(reader.varint()):
        try:
            name = reader.take(reader.varint()).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptBlob("layer name is not utf-8") from None
        n, length = reader.varint(), reader.varint()
        if name in seen or not 1 <= n <= _MAX_N:
            raise CorruptBlob(f"layer {name!r}: repeated or with pool size {n} out of range")
        seen.add(name)
        layers.append(Layer(name, n, length))
    extra: tuple = ()
    mode = _MODE_OF_ID[mode_id]
    if mode in NEEDS_PREV:
        prev_hash = reader.take(_HASH)
        pool_hash = reader.take(_HASH) if mode == "near" else b""
        ref = [True] * len(layers)
        if mode_id == _PARTIAL_IDS[mode]:
            bits = np.unpackbits(np.frombuffer(reader.take(-(-len(layers) // 8)), np.uint8))
            if bits[len(layers):].any():
                raise CorruptBlob("nonzero padding bits after the reference bitmap")
            ref = [bool(b) for b in bits[: len(layers)]]
        num_changed = [reader.varint() if r else layer.length for layer, r in zip(layers, ref, strict=True)]
        extra = (prev_hash, num_changed, pool_hash, ref)
    return mode, layers, extra, reader


class _Reader:
    """Reads the verified body; running past its end is a CorruptBlob, never an IndexError."""

    def __init__(self, data: bytes, pos: int, end: int):
        self.data, self.pos, self.end = data, pos, end

    def take(self, k: int) -> bytes:
        if self.pos + k > self.end:
            raise CorruptBlob(f"truncated body: needs {k} bytes at offset {self.pos}, ends at {self.end}")
        self.pos += k
        return self.data[self.pos - k: self.pos]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        raise CorruptBlob(f"varint longer than 10 bytes at offset {self.pos}")

    def rest(self) -> bytes:
        return self.take(self.end - self.pos)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# --- packed ----------------------------------------------------------------------------------------------

def _encode_packed(layers: list[Layer], arrays: list[np.ndarray]) -> bytes:
    bits = [_fixed_width_bits(x, packed_bits(layer.n)) for layer, x in zip(layers, arrays, strict=True)]
    return np.packbits(np.concatenate(bits) if bits else np.zeros(0, np.uint8)).tobytes()


def _decode_packed(layers: list[Layer], reader: _Reader) -> list[np.ndarray]:
    total = sum(layer.length * packed_bits(layer.n) for layer in layers)
    payload = reader.rest()
    if len(payload) != -(-total // 8):
        raise CorruptBlob(f"packed payload has {len(payload)} bytes, expected {-(-total // 8)}")
    if total % 8 and payload[-1] & ((1 << (8 - total % 8)) - 1):
        raise CorruptBlob("nonzero padding bits after the packed indices")
    data = np.frombuffer(payload + bytes(5), np.uint8)
    arrays, pos = [], 0
    for layer in layers:
        width = packed_bits(layer.n)
        x = _read_fields(data, pos, width, layer.length)
        pos += layer.length * width
        if x.size and x.max() >= layer.n:
            raise CorruptBlob(f"layer {layer.name!r}: decoded index {int(x.max())} >= pool size {layer.n}")
        arrays.append(x)
    return arrays


def _fixed_width_bits(x: np.ndarray, width: int) -> np.ndarray:
    """Each value as `width` bits, MSB first, as one flat uint8 0/1 array (vectorised through byte views)."""
    if width == 0 or x.size == 0:
        return np.zeros(0, np.uint8)
    nbytes = 1 if width <= 8 else 2 if width <= 16 else 4
    rows = np.unpackbits(x.astype(f">u{nbytes}").view(np.uint8).reshape(-1, nbytes), axis=1)
    return rows[:, 8 * nbytes - width:].ravel()


def _read_fields(data: np.ndarray, start: int, width: int, count: int) -> np.ndarray:
    """`count` fields of `width` <= 32 bits from bit `start` of `data` (zero padded by 5 bytes): each field
    lies in the 40-bit big-endian window at its first byte, so 5 gathers decode them all."""
    if width == 0 or count == 0:
        return np.zeros(count, np.int64)
    first = start + np.arange(count, dtype=np.int64) * width
    byte = first >> 3
    window = np.zeros(count, np.uint64)
    for j in range(5):
        window = (window << np.uint64(8)) | data[byte + j].astype(np.uint64)
    shift = (40 - width - (first & 7)).astype(np.uint64)
    return ((window >> shift) & np.uint64((1 << width) - 1)).astype(np.int64)


# --- entropy and delta -----------------------------------------------------------------------------------

def _encode_entropy(layers: list[Layer], arrays: list[np.ndarray]) -> bytes:
    counts = [np.bincount(x, minlength=layer.n) for layer, x in zip(layers, arrays, strict=True)]
    coder = constriction.stream.stack.AnsCoder()
    for x, c in zip(reversed(arrays), reversed(counts), strict=True):
        _push_symbols(coder, x, c)
    return _model_bytes(counts) + _ans_bytes(coder)


def _decode_entropy(layers: list[Layer], reader: _Reader) -> list[np.ndarray]:
    counts = _read_model(reader, [layer.n for layer in layers], [layer.length for layer in layers])
    coder = _ans_reader(reader)
    arrays = [_pop_symbols(coder, c, layer.length) for layer, c in zip(layers, counts, strict=True)]
    _check_empty(coder)
    return arrays


def _encode_delta(layers: list[Layer], arrays: list[np.ndarray], prev: Mapping[str, torch.Tensor],
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
        _push_symbols(coder, v, c)
        if 0 < c.sum() < m.size:
            coder.encode_reverse(m.astype(np.int32), _bernoulli(int(c.sum()), m.size))
    names = [layer.name for layer in _referenced(layers, ref)]
    head = _prev_hash(names, [b for b in before if b is not None])
    if near is not None:
        head += pools_hash(names, near)
    if not all(ref):
        head += np.packbits(np.array(ref, np.uint8)).tobytes()
    head += b"".join(_varint(int(c.sum())) for c, r in zip(counts, ref, strict=True) if r)
    return head + _model_bytes(counts) + _ans_bytes(coder)


def _decode_delta(layers: list[Layer], extra: tuple, reader: _Reader, prev,
                  near: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    prev_hash, num_changed, pool_hash, ref = extra
    kind = "near" if near is not None else "delta"
    if prev is None:
        raise ValueError(f"this is a {kind} blob: decode(blob, prev=...) needs the previous task's indices")
    referenced = _referenced(layers, ref)
    _check_prev(referenced, prev)
    before = [as_index_array(layer.name, prev[layer.name]) if r else None for layer, r in zip(layers, ref,
                                                                                               strict=True)]
    names = [layer.name for layer in referenced]
    if _prev_hash(names, [b for b in before if b is not None]) != prev_hash:
        raise ValueError(f"{kind} blob was coded against a different previous task (prev hash mismatch)")
    if near is not None and pools_hash(names, near) != pool_hash:
        raise ValueError("near blob was coded with other pools (pools hash mismatch)")
    sizes = [layer.n - 1 if near is not None and r else layer.n for layer, r in zip(layers, ref, strict=True)]
    counts = _read_model(reader, sizes, num_changed)
    coder = _ans_reader(reader)
    arrays = []
    for layer, b, c, k in zip(layers, before, counts, num_changed, strict=True):
        if k > layer.length:
            raise CorruptBlob(f"layer {layer.name!r}: {k} changed kernels of {layer.length}")
        mask = np.full(layer.length, k == layer.length)
        if 0 < k < layer.length:
            mask = coder.decode(_bernoulli(k, layer.length), layer.length).astype(bool)
            if int(mask.sum()) != k:
                raise CorruptBlob(f"layer {layer.name!r}: changed bits do not match the changed count")
        values = _pop_symbols(coder, c, k)
        if b is None:  # not coded against prev: the values themselves
            arrays.append(values)
            continue
        x = b.copy()
        if near is not None and k:
            values = neighbour_order(near[layer.name])[b[mask], values].astype(np.int64)
        x[mask] = values
        arrays.append(x)
    _check_empty(coder)
    return arrays


def _near_pools(layers: list[Layer], pools) -> dict[str, np.ndarray]:
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


def _referenced(layers: list[Layer], ref: list[bool]) -> list[Layer]:
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


def _bernoulli(changed: int, length: int):
    return constriction.stream.model.Bernoulli(changed / length, perfect=False)


def _push_symbols(coder, x: np.ndarray, counts: np.ndarray) -> None:
    """Code `x` with a Categorical over its used symbols at their counts (nothing when one symbol is used)."""
    used = counts > 0
    if used.sum() > 1:
        rank = np.cumsum(used) - 1
        model = constriction.stream.model.Categorical(counts[used] / x.size, perfect=False)
        coder.encode_reverse(rank[x].astype(np.int32), model)


def _pop_symbols(coder, counts: np.ndarray, length: int) -> np.ndarray:
    used = np.flatnonzero(counts)
    if used.size <= 1:
        return np.full(length, used[0] if used.size else 0, np.int64)
    model = constriction.stream.model.Categorical(counts[used] / length, perfect=False)
    return used[coder.decode(model, length)].astype(np.int64)


def _ans_bytes(coder) -> bytes:
    return coder.get_compressed().astype("<u4").tobytes()


def _ans_reader(reader: _Reader):
    words = reader.rest()
    if len(words) % 4:
        raise CorruptBlob(f"ANS payload of {len(words)} bytes is not whole 32-bit words")
    return constriction.stream.stack.AnsCoder(np.frombuffer(words, "<u4").astype(np.uint32))


def _check_empty(coder) -> None:
    if not coder.is_empty():
        raise CorruptBlob("ANS payload holds data beyond the coded indices")


# --- the model: per-layer symbol counts as exp-Golomb codes ----------------------------------------------

def _model_bytes(counts: list[np.ndarray]) -> bytes:
    """Counts of every coded layer (those with a nonzero total), each with the exp-Golomb order k that makes
    them shortest; about log2(mean count) + 2 bits per symbol, ~0.5 KiB per 512-kernel layer."""
    values, widths = [], []
    for c in counts:
        if c.sum():
            k = _best_order(c)
            v, w = _exp_golomb_fields(c.astype(np.uint64), k)
            values += [np.array([k], np.uint64), v]
            widths += [np.array([5], np.int64), w]
    empty = np.zeros(0, np.uint8)
    bits = _var_width_bits(np.concatenate(values), np.concatenate(widths)) if values else empty
    model = np.packbits(bits).tobytes()
    return _varint(len(model)) + model


def _read_model(reader: _Reader, sizes: list[int], totals: list[int]) -> list[np.ndarray]:
    model = reader.take(reader.varint())
    text = (np.unpackbits(np.frombuffer(model, np.uint8)) + ord("0")).tobytes().decode("ascii")
    pos, counts = 0, []
    for n, total in zip(sizes, totals, strict=True):
        c = np.zeros(n, np.int64)
        if total:
            k, pos = _read_bits(text, pos, 5), pos + 5
            for i in range(n):
                c[i], pos = _read_exp_golomb(text, pos, k)
            if int(c.sum()) != total:
                raise CorruptBlob(f"model counts sum to {int(c.sum())}, expected {total}")
        counts.append(c)
    if len(text) - pos >= 8 or "1" in text[pos:]:
        raise CorruptBlob("model bit stream has data beyond the counts")
    return counts


def _best_order(counts: np.ndarray) -> int:
    c = counts.astype(np.uint64)
    costs = [int((2 * _bit_length((c >> np.uint64(k)) + np.uint64(1)) - 1).sum()) + k * c.size
             for k in range(32)]
    return int(np.argmin(costs))


def _bit_length(u: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64)), u, side="right")


def _exp_golomb_fields(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Order-k exp-Golomb as two fields per value: u = (c >> k) + 1 in 2*bitlen(u) - 1 bits (leading zeros
    spell the length), then the k low bits of c."""
    u = (c >> np.uint64(k)) + np.uint64(1)
    low = c & np.uint64((1 << k) - 1)
    widths = np.stack([2 * _bit_length(u).astype(np.int64) - 1, np.full(c.size, k, np.int64)], 1).ravel()
    return np.stack([u, low], 1).ravel(), widths


def _var_width_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    ends = np.cumsum(widths)
    shift = np.repeat(ends, widths) - 1 - np.arange(int(ends[-1]) if ends.size else 0)
    return ((np.repeat(values, widths) >> shift.astype(np.uint64)) & np.uint64(1)).astype(np.uint8)


def _read_bits(text: str, pos: int, width: int) -> int:
    if pos + width > len(text):
        raise CorruptBlob("model bit stream ends early")
    return int(text[pos: pos + width], 2) if width else 0


def _read_exp_golomb(text: str, pos: int, k: int) -> tuple[int, int]:
    one = text.find("1", pos)
    if one < 0:
        raise CorruptBlob("model bit stream ends early")
    zeros = one - pos
    u = _read_bits(text, one, zeros + 1)
    return ((u - 1) << k) | _read_bits(text, one + zeros + 1, k), one + zeros + 1 + k


__all__ = ["ALL_MODES", "MAGIC", "MODES", "NEEDS_PREV", "POOL_MODES", "VERSION", "BlobInfo", "CorruptBlob", "Layer",
           "conditional_entropy_bits", "decode", "empirical_entropy_bits", "encode", "info", "packed_bits", "smallest"]
