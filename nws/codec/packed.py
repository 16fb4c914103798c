"""The `packed` mode: every index in ceil(log2 n) bits, MSB first, all layers in one zero-padded bit stream (the
paper's count: 9 bits at 512-kernel pools), written and read as whole numpy arrays, never bit by bit."""

from __future__ import annotations

import numpy as np

from nws.codec.container import CorruptBlob, Layer, Reader


def packed_bits(n: int) -> int:
    """ceil(log2 n): the bits of one index into a pool of n kernels (0 for n == 1)."""
    return (n - 1).bit_length()


def encode_packed(layers: list[Layer], arrays: list[np.ndarray]) -> bytes:
    bits = [_fixed_width_bits(x, packed_bits(layer.n)) for layer, x in zip(layers, arrays, strict=True)]
    return np.packbits(np.concatenate(bits) if bits else np.zeros(0, np.uint8)).tobytes()


def decode_packed(layers: list[Layer], reader: Reader) -> list[np.ndarray]:
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
