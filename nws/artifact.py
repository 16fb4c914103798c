"""The stored form of one NWS task model (Algorithm 1, line 13: "save model as indices").

A task artifact is a folder holding
- `indices.bin`: the task's kernel indices C_t, encoded by nws.codec (the only per-task cost of the searched layers),
- `state.safetensors`: the rest of the task's state (BatchNorm parameters and statistics, float heads, biases),
- `artifact.json`: layer names, pool sizes, codec mode, and the size and sha256 of both files.
The pools are not part of it: they are stored once for all tasks. `load_task` rebuilds the task model from these files
alone and refuses a corrupted artifact (checksum) with an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nws import codec, exits
from nws.convert import export_indices, export_pools, load_indices, nws_layers, pool_sizes
from nws.io import atomic_write_bytes, atomic_write_json, load_tensors, read_json, save_tensors, sha256_file

FORMAT = "nws-task/1"
INDICES, STATE, MANIFEST = "indices.bin", "state.safetensors", "artifact.json"
_SEARCHED = ("weight", "pool", "indices")  # what the indices + pools stand for in an NWS layer's state


class ArtifactError(ValueError):
    """A task artifact that cannot be used (missing file, checksum mismatch, wrong network)."""

    EXIT_CODE = exits.CORRUPTED


def task_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything in the state dict that indices + pools do not already give: BN, heads, biases."""
    skip = {f"{name}.{key}" if name else key for name, _ in nws_layers(model) for key in _SEARCHED}
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def save_task(folder: str | Path, model: nn.Module, codec_mode: str = "smallest",
              prev: dict[str, torch.Tensor] | None = None, meta: dict | None = None,
              indices: dict[str, torch.Tensor] | None = None) -> dict:
    """Write the task artifact of `model` (an NWS network) to `folder`; returns its manifest.

    codec_mode: "packed", "entropy", "delta" or "near" (both need `prev`, the previous task's indices, or for a
    first task the base model's; layers that prev lacks or holds with another kernel count, as a head for other
    classes, are coded without it; near also codes against the model's pools) or "smallest" (every mode that
    applies, keeping the smallest blob that round-trips). `indices` defaults to a fresh export from the model.
    """
    folder = Path(folder)
    idx = indices if indices is not None else export_indices(model)
    sizes = pool_sizes(model)
    pools = export_pools(model) if prev is not None else None
    if codec_mode == "smallest":
        codec_mode, blob = codec.smallest(idx, sizes, prev=prev, pools=pools)
    else:
        blob = codec.encode(idx, sizes, mode=codec_mode, prev=prev, pools=pools)
    atomic_write_bytes(folder / INDICES, blob)
    save_tensors(folder / STATE, task_state(model))
    manifest = {
        "format": FORMAT,
        "codec": codec_mode,
        "layers": list(idx),
        "pool_sizes": sizes,
        "kernels": int(sum(v.numel() for v in idx.values())),
        "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
                  for name in (INDICES, STATE)},
        "meta": meta or {},
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | Path, verify: bool = True) -> dict:
    """The artifact's manifest, after checking its format, that both files are there and, with `verify`, their size
    and sha256. verify=False is for a caller that has just checked these bytes itself (the task loop, against its
    stored.json), so that one evaluation hashes them once."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(f"{folder}: not a task artifact (no {MANIFEST})")
    manifest = read_json(folder / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name, info in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing file of the task artifact")
        if verify and (path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]):
            raise ArtifactError(f"{path}: checksum mismatch, the task artifact is corrupted")
    return manifest


def read_indices(folder: str | Path, prev: dict[str, torch.Tensor] | None = None,
                 pools: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The task's indices C_t, decoded after the checksums were verified (a near blob needs the pools too)."""
    folder = Path(folder)
    read_manifest(folder)
    return codec.decode((folder / INDICES).read_bytes(), prev=prev, pools=pools)


def load_task(folder: str | Path, model: nn.Module, prev: dict[str, torch.Tensor] | None = None,
              manifest: dict | None = None) -> dict:
    """Rebuild the task model in `model` (an NWS network with the shared pools loaded) from the artifact alone:
    K_t = D(C_t; M) plus the stored BN/head state. Returns the manifest. `manifest`: the folder's, as the caller
    read (and checked) it with `read_manifest`, so that it is not read and its files hashed a second time."""
    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    if manifest["pool_sizes"] != pool_sizes(model):
        raise ArtifactError(f"{folder}: stored for layers/pools {manifest['pool_sizes']}, the model has "
                            f"{pool_sizes(model)}")
    pools = export_pools(model) if manifest["codec"] == "near" else None
    load_indices(model, codec.decode((folder / INDICES).read_bytes(), prev=prev, pools=pools))
    state = load_tensors(folder / STATE)
    expected = task_state(model)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ArtifactError(f"{folder / STATE}: does not match the network (missing {missing}, unexpected {extra})")
    model.load_state_dict(state, strict=False)
    return manifest
