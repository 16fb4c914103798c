"""The container every index blob shares (the layout in nws.codec): magic, version, mode id, body length, the
layer table, a sha256 checksum, and the varints and bounds-checked reader the modes write and read their parts with.
A blob is verified whole before any of it is decoded, so a corrupted one raises CorruptBlob, never wrong indices."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from nws.entropy import as_index_array

MAGIC = b"NWSI"
VERSION = 1
MODES = ("packed", "entropy", "delta")  # the modes that need no pools
POOL_MODES = ("near",)  # the modes that code against the pool kernels too
ALL_MODES = MODES + POOL_MODES  # in mode-id order
NEEDS_PREV = ("delta", "near")  # blobs that decode only with the previous task's indices
PARTIAL_IDS = {"delta": 4, "near": 5}  # their ids when prev covers only some of the layers
_MODE_OF_ID = {**dict(enumerate(ALL_MODES)), **{i: m for m, i in PARTIAL_IDS.items()}}
_PREFIX = struct.Struct("<4sBBI")
_CHECK = 8
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


def validate(idx, pool_sizes) -> tuple[list[Layer], list[np.ndarray]]:
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


def layer_table(layers: list[Layer]) -> bytes:
    out = bytearray(varint(len(layers)))
    for layer in layers:
        name = layer.name.encode("utf-8")
        out += varint(len(name)) + name + varint(layer.n) + varint(layer.length)
    return bytes(out)


def frame(mode_id: int, body: bytes) -> bytes:
    """The whole blob: prefix, `body` (the layer table and the mode's part) and the checksum of both."""
    if len(body) >= 2**32:
        raise ValueError(f"index blob body of {len(body)} bytes exceeds the format's 4 GiB limit")
    head = _PREFIX.pack(MAGIC, VERSION, mode_id, len(body)) + body
    return head + hashlib.sha256(head).digest()[:_CHECK]


def open_blob(blob) -> tuple[str, int, list[Layer], Reader]:
    """Check magic, version, length and checksum, then read the layer table: (mode, mode id, layers, a reader at
    the mode's part)."""
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
    reader = Reader(data, _PREFIX.size, end)
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
    return _MODE_OF_ID[mode_id], mode_id, layers, reader


class Reader:
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


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
