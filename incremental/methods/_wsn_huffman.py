"""Huffman coding of WSN's N-bit integer masks (Kang et al., ICML 2022, abstract: the binary masks "are encoded
into one N-bit binary digit mask, then compressed using Huffman coding"; official ihaeyong/WSN utils_huffman.py:
`accum_int_mask`, `Huffman_Encoding`).

WSN stores one binary mask per task and weight. The paper packs the masks of N consecutive tasks into one N-bit
integer per weight (bit b = task first + b's mask; official `bin2dec_mask`, N = `per_bits` = 7) and Huffman-codes
those integers, one code per layer built from the layer's symbol histogram. Because a task reuses most of the weights
of earlier subnetworks, few of the 2^N symbols occur, and the masks grow sub-linearly with the number of tasks.

Any Huffman tree is an optimal prefix code, so the coded length Σ count(s) · len(s) is the official one whatever the
tie-breaking. Here the code is canonical (codes follow from the lengths: Deflate's rule), so the code book stored is
one length per symbol (uint8), not a pickled tree. A layer whose weights all hold one symbol has the official empty
code (0 bits); its symbol is the one with a nonzero length in the table.

Decoding is vectorised: the code length starting at every bit position is read from a window of the maximum code
length (canonical codes are ordered, so one `searchsorted`), and the chain of code starts from bit 0 is followed by
pointer doubling (log2(symbols) gathers over the stream), no per-symbol Python loop.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import numpy as np
import torch

from incremental.stored import StoredTaskError
from nws.io import load_metadata, load_tensors, save_tensors

MAX_LENGTH = 56  # a code fits a 64-bit window read at its byte (+7 bits); Huffman depth ~ log_phi(count): 10^11 weights


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol (0 for symbols that do not occur; 1 for the only one, coded in 0 bits)."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]  # (weight, tie-break, symbols below)
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, k1, s1 = heapq.heappop(heap)
        w2, k2, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (w1 + w2, min(k1, k2), s1 + s2))
    if lengths.max(initial=0) > MAX_LENGTH:
        raise ValueError(f"Huffman code of {lengths.max()} bits exceeds {MAX_LENGTH}")
    return lengths


def canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code of every symbol, symbols in canonical order): codes by (length, symbol), each the previous + 1,
    shifted left when the length grows."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.array(sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)), dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.uint64)
    code, prev = 0, 0
    for s in order:
        code <<= int(lengths[s]) - prev
        codes[s], prev = code, int(lengths[s])
        code += 1
    return codes, order


def encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(code lengths uint8[alphabet], the bit stream packed MSB first (uint8), its length in bits)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet)[:alphabet])
    if np.count_nonzero(lengths) <= 1:  # one symbol (or none): the empty code
        return lengths.astype(np.uint8), np.zeros(0, np.uint8), 0
    codes, _ = canonical(lengths)
    n = lengths[symbols]
    total = int(n.sum())
    owner = np.repeat(np.arange(symbols.size), n)
    within = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    shift = (n[owner] - 1 - within).astype(np.uint64)
    bits = ((codes[symbols][owner] >> shift) & np.uint64(1)).astype(np.uint8)
    return lengths.astype(np.uint8), np.packbits(bits), total


def decode(lengths: np.ndarray, packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """The `count` symbols `encode` coded (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    used = np.flatnonzero(lengths)
    if nbits == 0:
        if count and used.size != 1:
            raise ValueError("an empty Huffman stream needs exactly one symbol in its code table")
        return np.full(count, used[0] if used.size else 0, dtype=np.int64)
    codes, order = canonical(lengths)
    longest = int(lengths.max())
    window = windows(np.asarray(packed, dtype=np.uint8), nbits, longest)
    per_length = np.bincount(lengths[used], minlength=longest + 1)
    first = np.zeros(longest + 1, dtype=np.int64)  # first canonical code of each length
    offset = np.zeros(longest + 1, dtype=np.int64)  # its place in `order`
    for n in range(1, longest + 1):
        first[n] = (first[n - 1] + per_length[n - 1]) << 1 if n > 1 else 0
        offset[n] = offset[n - 1] + per_length[n - 1]
    limits = np.array([(int(first[n]) + int(per_length[n])) << (longest - n) for n in range(1, longest + 1)],
                      dtype=np.uint64)  # left-aligned end of the codes of each length, non-decreasing
    n_at = np.minimum(np.searchsorted(limits, window, side="right") + 1, longest).astype(np.int64)
    jump = np.append(np.minimum(np.arange(nbits) + n_at, nbits), nbits).astype(np.int32)  # nbits absorbs
    starts = np.zeros(1, dtype=np.int32)
    while starts.size < count:  # chain of code starts from 0: next^i(0), i < 2^k after k doublings
        starts = np.concatenate([starts, jump[starts]])
        jump = jump[jump]
    starts = np.sort(starts[starts < nbits])  # the chain's positions are distinct below nbits
    if starts.size != count:
        raise ValueError(f"the Huffman stream of {nbits} bits holds {starts.size} codes, expected {count}")
    n = n_at[starts]
    rank = offset[n] + (window[starts] >> (longest - n).astype(np.uint64)).astype(np.int64) - first[n]
    out = order[rank]
    if not np.array_equal(codes[out], window[starts] >> (longest - n).astype(np.uint64)):
        raise ValueError("corrupt Huffman stream")
    return out


def windows(packed: np.ndarray, nbits: int, width: int) -> np.ndarray:
    """The `width` stream bits from every bit position (uint64, MSB first, zeros past the end): 8 byte gathers
    make a 64-bit big-endian word at each position's byte, shifted to its bit."""
    data = np.concatenate([packed, np.zeros(8, np.uint8)]).astype(np.uint64)
    pos = np.arange(nbits)
    byte = pos >> 3
    word = np.zeros(nbits, dtype=np.uint64)
    for i in range(8):
        word |= data[byte + i] << np.uint64(56 - 8 * i)
    return (word << (pos & 7).astype(np.uint64)) >> np.uint64(64 - width)


def pack_tasks(masks: list[np.ndarray]) -> np.ndarray:
    """The integer mask of a block of tasks: bit b of each weight's value = masks[b] (official `bin2dec_mask`)."""
    out = np.zeros(masks[0].size, dtype=np.int64)
    for b, m in enumerate(masks):
        out |= np.asarray(m, dtype=np.int64).ravel() << b
    return out


def unpack_task(values: np.ndarray, b: int) -> np.ndarray:
    """Task b's binary mask (bool) out of a block's integer mask."""
    return ((values >> b) & 1).astype(bool)


# --- a block file: the Huffman-coded integer masks of up to N consecutive tasks --------------------------------

CODES = "huffman"  # metadata: {layer: {"shape": [...], "bits": stream length}}


def save_block(path: Path, masks: list[dict[str, torch.Tensor]], first: int, width: int) -> None:
    """Write tasks first .. first + len(masks) - 1 (at most `width` = N) as one safetensors file: per layer
    `<layer>.lengths` (uint8 code length of each of the 2^k symbols, k tasks) and `<layer>.code` (the bit stream)."""
    if not 0 < len(masks) <= width:
        raise ValueError(f"a block holds 1 to {width} tasks, got {len(masks)}")
    tensors, info = {}, {}
    for name in masks[0]:
        values = pack_tasks([m[name].numpy() for m in masks])
        lengths, packed, nbits = encode(values, 1 << len(masks))
        tensors[f"{name}.lengths"] = torch.from_numpy(lengths)
        tensors[f"{name}.code"] = torch.from_numpy(packed)
        info[name] = {"shape": list(masks[0][name].shape), "bits": nbits}
    save_tensors(path, tensors, metadata={CODES: json.dumps(info), "first_task": str(first),
                                          "tasks": str(len(masks)), "huffman_bits": str(width)})


def load_block(path: Path) -> tuple[int, list[dict[str, torch.Tensor]]]:
    """(first task, [{layer: bool mask} per task of the block]) of a file `save_block` wrote."""
    try:
        meta = load_metadata(path)
        info, first, count = json.loads(meta[CODES]), int(meta["first_task"]), int(meta["tasks"])
        tensors = load_tensors(path)
        values = {name: decode(tensors[f"{name}.lengths"].numpy(), tensors[f"{name}.code"].numpy(), i["bits"],
                               int(np.prod(i["shape"]))) for name, i in info.items()}
    except (KeyError, ValueError, json.JSONDecodeError) as e:
        raise StoredTaskError(f"{path}: not a WSN Huffman mask block: {e}") from None
    return first, [{name: torch.from_numpy(unpack_task(v, b)).reshape(info[name]["shape"])
                    for name, v in values.items()} for b in range(count)]


def block_stats(path: Path) -> dict:
    """Weights, tasks, Huffman stream bits and file bytes of a block file, read without decoding."""
    meta = load_metadata(path)
    info, count = json.loads(meta[CODES]), int(meta["tasks"])
    weights = sum(int(np.prod(i["shape"])) for i in info.values())
    return {"weights": weights, "tasks": count, "code_bits": sum(i["bits"] for i in info.values()),
            "file_bytes": Path(path).stat().st_size}
