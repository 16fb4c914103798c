"""The count model of the ANS modes: each coded layer's symbol counts travel in the blob (the decoder must build
the very Categorical the encoder used), written as exp-Golomb codes in one bit stream."""

from __future__ import annotations

import numpy as np

from nws.codec.container import CorruptBlob, Reader, varint


def model_bytes(counts: list[np.ndarray]) -> bytes:
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
    return varint(len(model)) + model


def read_model(reader: Reader, sizes: list[int], totals: list[int]) -> list[np.ndarray]:
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
