"""The ANS coder (constriction's stack) and the `entropy` mode: each layer coded with its own empirical histogram,
order 0 (trained tasks use the pool unevenly: appendix §6 of 001_, >30% of the first layers' kernels are one pool
kernel). The helpers here code one layer's symbols and are shared with the delta and near modes.

constriction's `perfect=False` quantisation is part of the format (nws.codec.VERSION pins it)."""

from __future__ import annotations

import constriction
import numpy as np

from nws.codec.container import CorruptBlob, Layer, Reader
from nws.codec.model import model_bytes, read_model


def encode_entropy(layers: list[Layer], arrays: list[np.ndarray]) -> bytes:
    counts = [np.bincount(x, minlength=layer.n) for layer, x in zip(layers, arrays, strict=True)]
    coder = constriction.stream.stack.AnsCoder()
    for x, c in zip(reversed(arrays), reversed(counts), strict=True):
        push_symbols(coder, x, c)
    return model_bytes(counts) + ans_bytes(coder)


def decode_entropy(layers: list[Layer], reader: Reader) -> list[np.ndarray]:
    counts = read_model(reader, [layer.n for layer in layers], [layer.length for layer in layers])
    coder = ans_reader(reader)
    arrays = [pop_symbols(coder, c, layer.length) for layer, c in zip(layers, counts, strict=True)]
    check_empty(coder)
    return arrays


def bernoulli(changed: int, length: int):
    return constriction.stream.model.Bernoulli(changed / length, perfect=False)


def push_symbols(coder, x: np.ndarray, counts: np.ndarray) -> None:
    """Code `x` with a Categorical over its used symbols at their counts (nothing when one symbol is used)."""
    used = counts > 0
    if used.sum() > 1:
        rank = np.cumsum(used) - 1
        model = constriction.stream.model.Categorical(counts[used] / x.size, perfect=False)
        coder.encode_reverse(rank[x].astype(np.int32), model)


def pop_symbols(coder, counts: np.ndarray, length: int) -> np.ndarray:
    used = np.flatnonzero(counts)
    if used.size <= 1:
        return np.full(length, used[0] if used.size else 0, np.int64)
    model = constriction.stream.model.Categorical(counts[used] / length, perfect=False)
    return used[coder.decode(model, length)].astype(np.int64)


def ans_bytes(coder) -> bytes:
    return coder.get_compressed().astype("<u4").tobytes()


def ans_reader(reader: Reader):
    words = reader.rest()
    if len(words) % 4:
        raise CorruptBlob(f"ANS payload of {len(words)} bytes is not whole 32-bit words")
    return constriction.stream.stack.AnsCoder(np.frombuffer(words, "<u4").astype(np.uint32))


def check_empty(coder) -> None:
    if not coder.is_empty():
        raise CorruptBlob("ANS payload holds data beyond the coded indices")
