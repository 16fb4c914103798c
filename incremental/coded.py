"""Coded memory (issue 15): every method's stored files under the best lossless coding the project has, written
and read back, so that a reader can tell NWS's advantage in memory from the coding of its indices.

The memory "as stored" (incremental.memory) is the paper's convention: the official code measures the saved files
(compressed index files for NWS, saved masks and weights for KSM, PackNet, CPG; notes/frameworks.md "Memory
accounting conventions"). But NWS entropy-codes its indices (nws.codec) while the baselines store 1-bit masks,
bit-plane owner maps and float32 weights as they are. Here every file a method's memory counts
(`memory.components`) is written again under `<method_dir>/coded/` (same relative path), each tensor of a
safetensors file as the smallest of the codings that give it back bit for bit:
- `raw`: as stored (float tensors always: weights, BatchNorm, heads, pools);
- `values`: an integer tensor (owner maps, counters) as x - min, indices into a pool of max - min + 1 symbols coded
  by nws.codec.smallest (ceil(log2 n) bits each, or ANS with the tensor's histogram);
- `bits`: a bool tensor or a bit-packed mask (uint8, incremental.masks) as its bits, n = 2, by nws.codec;
- `sparse`: the same bits as the gaps between set bits (SupSup's ~2.5% dense masks), by nws.codec;
- `planes`: the bit planes `<name>.bit0` ... `<name>.bit{B-1}` of one shape (PackNet's owner map) joined into their
  integer values, coded as `values` (the owner of a weight is one symbol, not B independent bits).
A safetensors file that would not get smaller is kept as it is (a hard link where possible), and so are the other
files: NWS's index blobs (already coded: "NWS indices as now"), manifests and checksums. So the coded memory is at
most the stored one, file by file.

Every coded file is decoded right after it is written and must give the stored file back byte for byte (`write`);
`restore` writes the decoded files into another folder, from which the method rebuilds its tasks
(tests/incremental/test_coded.py: identical logits for every method). A coded container is a safetensors file: the
stored file's header verbatim (uint8 tensor `nws_coded.header`: names, dtypes, shapes, offsets, metadata), the raw
tensors under their names, each coded tensor as a uint8 nws.codec blob under its name (a plane group under its
first plane's), and the metadata key `nws_coded`: {name: how it is coded}. The stored files are never changed: this
is an extra measurement, written at the end of a method's run and written again (the same bytes) by a rerun.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from incremental import memory
from incremental.masks import SHAPES
from nws import codec
from nws.io import atomic_write_bytes, load_metadata, load_tensors
from nws.memory import MIB, measure

CODED = "coded"
KEY = "nws_coded"
HEADER = "nws_coded.header"  # the stored file's safetensors header, kept verbatim
MAX_SYMBOLS = 2**16  # larger alphabets stay raw: nws.codec reads a model of one count per symbol
_PLANE = re.compile(r"^(.*)\.bit(\d+)$")


# --- one tensor --------------------------------------------------------------------------------------------

def _blob(x: np.ndarray, n: int) -> bytes:
    return codec.smallest({"x": torch.from_numpy(x)}, {"x": n})[1]


def _unblob(blob: torch.Tensor) -> np.ndarray:
    return codec.decode(blob.numpy().tobytes())["x"].numpy()


def _bits(x: torch.Tensor) -> np.ndarray:
    return x.numpy().astype(np.int64).ravel() if x.dtype == torch.bool else np.unpackbits(x.numpy().ravel())


def _candidates(x: torch.Tensor) -> list[tuple[dict, bytes]]:
    """(info, blob) of every coding that applies to `x` (integer or bool; floats stay raw)."""
    out = []
    flat = x.numpy().ravel().astype(np.int64)
    if flat.size and int(flat.max()) - int(flat.min()) < MAX_SYMBOLS:
        low = int(flat.min())
        out.append(({"kind": "values", "offset": low}, _blob(flat - low, int(flat.max()) - low + 1)))
    if x.dtype in (torch.bool, torch.uint8):
        bits = _bits(x)
        out.append(({"kind": "bits"}, _blob(bits, 2)))
        gaps = np.diff(np.flatnonzero(bits), prepend=-1) - 1
        if gaps.size and int(gaps.max()) < MAX_SYMBOLS:
            out.append(({"kind": "sparse", "ones": int(gaps.size)}, _blob(gaps, int(gaps.max()) + 1)))
    return out


def _decode_one(info: dict, blob: torch.Tensor) -> torch.Tensor:
    dtype, shape = getattr(torch, info["dtype"]), tuple(info["shape"])
    if info["kind"] == "values":
        flat = _unblob(blob) + info["offset"]
        return torch.from_numpy(flat).to(dtype).reshape(shape)
    if info["kind"] == "bits":
        bits = _unblob(blob)
    else:  # sparse: the gaps between set bits
        count = int(np.prod(shape)) * (1 if dtype == torch.bool else 8)
        bits = np.zeros(count, np.int64)
        bits[np.cumsum(_unblob(blob) + 1) - 1] = 1
    if dtype == torch.bool:
        return torch.from_numpy(bits.astype(bool)).reshape(shape)
    return torch.from_numpy(np.packbits(bits.astype(np.uint8))).reshape(shape)


# --- one file ----------------------------------------------------------------------------------------------

def _plane_groups(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, tuple[list[str], list[int]]]:
    """{first plane: (plane names, bool shape)} for every complete group `<name>.bit0..bit{B-1}`, B > 1, of
    bit-packed masks (incremental.masks) of one shape."""
    shapes = json.loads(meta.get(SHAPES, "{}"))
    found: dict[str, dict[int, str]] = {}
    for name in tensors:
        m = _PLANE.match(name)
        if m and name in shapes and tensors[name].dtype == torch.uint8:
            found.setdefault(m.group(1), {})[int(m.group(2))] = name
    out = {}
    for planes in found.values():
        names = [planes.get(b) for b in range(len(planes))]
        if len(names) > 1 and None not in names and len({json.dumps(shapes[n]) for n in names}) == 1:
            out[names[0]] = (names, shapes[names[0]])
    return out


def _join_planes(tensors: dict[str, torch.Tensor], names: list[str], shape: list[int]) -> torch.Tensor:
    count = int(np.prod(shape))
    values = sum(np.unpackbits(tensors[n].numpy(), count=count).astype(np.int64) << b for b, n in enumerate(names))
    return torch.from_numpy(values)


def _split_planes(info: dict, blob: torch.Tensor) -> dict[str, torch.Tensor]:
    values = _unblob(blob) + info["offset"]
    return {n: torch.from_numpy(np.packbits(((values >> b) & 1).astype(np.uint8))).reshape(info["shape"])
            for b, n in enumerate(info["planes"])}


def encode_file(path: Path) -> bytes:
    """The coded bytes of one stored file (a copy of it when coding does not make it smaller)."""
    stored = Path(path).read_bytes()
    if Path(path).suffix != ".safetensors":
        return stored
    tensors, meta = load_tensors(path), load_metadata(path)
    header = stored[8: 8 + int.from_bytes(stored[:8], "little")]
    out, infos = {HEADER: torch.frombuffer(bytearray(header), dtype=torch.uint8)}, {}
    for first, (names, shape) in _plane_groups(tensors, meta).items():
        joined = _join_planes(tensors, names, shape).numpy()
        low = int(joined.min())
        if int(joined.max()) - low < MAX_SYMBOLS:
            blob = _blob(joined - low, int(joined.max()) - low + 1)
            if len(blob) < sum(tensors[n].numel() for n in names):
                out[first] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
                infos[first] = {"kind": "planes", "planes": names, "offset": low, "shape": list(tensors[first].shape)}
    done = {n for info in infos.values() for n in info["planes"]}
    for name, x in tensors.items():
        if name in done:
            continue
        best = min([] if x.is_floating_point() else _candidates(x), key=lambda c: len(c[1]), default=None)
        if best is None or len(best[1]) >= x.numel() * x.element_size():
            out[name] = x
        else:
            out[name] = torch.frombuffer(bytearray(best[1]), dtype=torch.uint8)
            infos[name] = {**best[0], "dtype": str(x.dtype).removeprefix("torch."), "shape": list(x.shape)}
    coded = safetensors.torch.save(out, metadata={KEY: json.dumps(infos, separators=(",", ":"), sort_keys=True)})
    return coded if len(coded) < len(stored) else stored


def decode_bytes(path: Path) -> bytes:
    """The bytes of the stored file that `path` (a coded file) stands for: its tensors decoded and laid out under
    the stored header, so the file comes back byte for byte (its stored.json checksum holds)."""
    if Path(path).suffix != ".safetensors":
        return Path(path).read_bytes()
    meta = load_metadata(path)
    if KEY not in meta:
        return Path(path).read_bytes()
    infos, tensors = json.loads(meta[KEY]), load_tensors(path)
    header = tensors.pop(HEADER).numpy().tobytes()
    out = {}
    for name, x in tensors.items():
        info = infos.get(name)
        if info is None:
            out[name] = x
        elif info["kind"] == "planes":
            out.update(_split_planes(info, x))
        else:
            out[name] = _decode_one(info, x)
    layout = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
    data = bytearray(max((v["data_offsets"][1] for v in layout.values()), default=0))
    for name, entry in layout.items():
        start, end = entry["data_offsets"]
        data[start:end] = _raw(out[name]).numpy().tobytes()
    return len(header).to_bytes(8, "little") + header + bytes(data)


def decode_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the stored safetensors file that `path` (a coded file) stands for."""
    data = decode_bytes(path)
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    return safetensors.torch.load(data), header.get("__metadata__") or {}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same names, dtypes, shapes and bytes (bit for bit: -0.0 and NaN payloads included)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and _raw(a[k]).equal(_raw(b[k])) for k in a)


def _raw(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().reshape(-1).view(torch.uint8)


# --- a method's files --------------------------------------------------------------------------------------

def coded_path(method_dir: Path, path: Path) -> Path:
    return Path(method_dir) / CODED / Path(path).relative_to(method_dir)


def write(method, num_tasks: int) -> dict[str, list[Path]]:
    """Code every file the memory of tasks 0..num_tasks-1 counts into `<method_dir>/coded/`, check that each decodes
    to the stored file byte for byte, and return {component: coded files} (as memory.components)."""
    method_dir = method.ctx.method_dir
    out: dict[str, list[Path]] = {}
    for name, paths in memory.components(method, num_tasks).items():
        for path in paths:
            dst = coded_path(method_dir, path)
            _place(dst, encode_file(path), path)
            if decode_bytes(dst) != path.read_bytes():
                raise RuntimeError(f"{dst}: does not decode to the bytes of {path} (a coding bug)")
            out.setdefault(name, []).append(dst)
    return out


def _place(dst: Path, data: bytes, stored: Path) -> None:
    """Write `data` to `dst` unless it already holds it; a file that codes to itself is a hard link to the stored one
    where the file system allows (no second copy of a float32 network on disk)."""
    if dst.is_file() and dst.read_bytes() == data:
        return
    if data == stored.read_bytes():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            os.link(stored, dst)
            return
        except OSError:
            pass
    atomic_write_bytes(dst, data)


def report(method, num_tasks: int) -> dict:
    """memory_coded_bytes (total + per component), in MiB too, and after each task; writes the coded files."""
    parts = write(method, num_tasks)
    mem = measure(parts)
    method_dir = method.ctx.method_dir
    cumulative = [measure({k: [coded_path(method_dir, p) for p in v]
                           for k, v in memory.components(method, t + 1).items()}).total for t in range(num_tasks)]
    return {"memory_coded_bytes": {"total": mem.total, **mem.components},
            "memory_coded_mib": {"total": mem.total / MIB, **{k: v / MIB for k, v in mem.components.items()}},
            "memory_coded_bytes_cumulative": cumulative}


def restore(method, num_tasks: int, out_dir: Path):
    """The decoded coded files of tasks 0..num_tasks-1 written into `out_dir` (same layout as the method folder),
    and the method over that folder: its `rebuild(t, ctx.task_dir(t))` reads only what the coded files gave back."""
    method_dir, out_dir = method.ctx.method_dir, Path(out_dir)
    for paths in memory.components(method, num_tasks).values():
        for path in paths:
            src, dst = coded_path(method_dir, path), out_dir / Path(path).relative_to(method_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, decode_bytes(src))
    return type(method)(replace(method.ctx, method_dir=out_dir))
