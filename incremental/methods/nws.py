"""Neural Weight Search as a method of the task loop (seed 004_ Algorithm 1; notes/algorithms.md §1.4-1.5).

- Shared, stored once: the pretrained pools (`pools.safetensors`, copied from the pretrain stage), frozen, and the
  pretrained base model's indices (`base_indices.bin`, a copy of the pretrain stage's `base_model/indices.bin`):
  task 0 is coded against them, as every later task against the one before (issue 9).
- Task t starts from W_t = D(C_{t-1}; M) (Algorithm 1 line 3): the temporary kernels, BatchNorm and head of the
  previous task rebuilt from its stored artifact (task 0 from the pretrained base model); then a head for the
  task's classes (NWS layer over the head pool, or float, by `incremental.head`).
- Training: the temporary kernels, BatchNorm and head train in `search` mode; loss CE + beta Σ_l Eq. 2 term.
- Stored: the task artifact of nws.artifact (indices coded by `incremental.codec`, default the smallest mode
  that round-trips; delta and near are coded against the previous task, task 0 against the base model's indices,
  so decoding follows the chain from `base_indices.bin`; near also against the pools; a head whose kernel count
  differs from the previous one's, as task 0's from the pretraining head, is coded without reference, nws.codec)
  + BN/head state. The storage lever `incremental.options.nws.keep_margin` (nws.levers, issue 9) may change the
  stored indices of tasks t > 0 first: a kernel keeps its previous index unless the nearest pool kernel is nearer
  by more than that factor. (The §5.7 sparsification, nws.levers.sparsify, was measured as a lever too and lost:
  BENCHMARKS.md, Storage; it is not an option.)
- Rebuilt: pools + the artifact (+ the earlier tasks' and the base model's indices for a delta/near chain),
  materialised to plain layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

import nws
from base.layout import BASE_MODEL, POOLS
from incremental.methods import Method, MethodOptions
from incremental.methods import _nws_net as nws_net
from incremental.methods._backbone import check_pretrain_meta
from incremental.stored import StoredTaskError, share_copy
from nws.artifact import INDICES, MANIFEST, STATE, ArtifactError, load_task, read_manifest, save_task
from nws.io import load_tensors, save_tensors
from nws.levers import keep_previous

BASE_INDICES = "base_indices.bin"
REPORTS = "reports"


def file_key(path: Path) -> tuple[int, int, int]:
    """Which version of a shared file is on disk (inode, size, mtime), without reading it: the key of the decoded
    pools and base indices kept in memory. Every write replaces a file (a rename), so a new version gets a new key;
    the bytes themselves are verified where the loop verifies them (incremental.stored), not hashed for a cache."""
    st = Path(path).stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


@contextmanager
def stored_task() -> Iterator[None]:
    """nws.artifact's errors about a stored task raised as the loop's StoredTaskError (the message and the exit code
    unchanged), as every method raises them."""
    try:
        yield
    except StoredTaskError:
        raise
    except ArtifactError as e:
        raise StoredTaskError(str(e)) from None


class Options(MethodOptions):
    """`incremental.options.nws`: storage levers (issue 9; measured in BENCHMARKS.md, Storage)."""

    keep_margin: float = Field(0.0, ge=0)  # 0 = off; keep the previous index within (1 + margin) × the nearest
    # where task t's temporary kernels start: the network task t-1 stored (the official code, notes/algorithms.md
    # §1) or the pretrained base network for every task (BENCHMARKS.md: on short budgets over unrelated tasks the
    # previous task's network is a worse start than the pretrained one)
    start: Literal["previous", "pretrained"] = "previous"


class NWS(Method):
    name = "nws"
    ignores = ("recipe",)  # beta, head and codec are NWS settings; its official optimizer is the paper's SGD
    Options = Options

    def __init__(self, ctx):
        super().__init__(ctx)
        self._indices: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self._pools: tuple[str, dict[str, torch.Tensor]] | None = None

    @property
    def pools_path(self) -> Path:
        return self.ctx.method_dir / POOLS

    @property
    def base_indices_path(self) -> Path:
        return self.ctx.method_dir / BASE_INDICES

    @property
    def base_dir(self) -> Path:
        return self.ctx.pretrain_dir / BASE_MODEL

    def prepare(self) -> None:
        """Copy the shared files (pools, base model's indices) into the method folder once; a source that differs
        from the copy the stored tasks were coded with is refused."""
        src = self.ctx.pretrain_dir / POOLS
        if not src.is_file():
            raise FileNotFoundError(f"{src}: file not found; run `nws pretrain` (kind nws or both) first")
        check_pretrain_meta(src, self.ctx.cfg.model)
        read_manifest(self.base_dir)  # present and intact
        stored = [t for t in range(len(self.ctx.tasks)) if (self.ctx.task_dir(t) / MANIFEST).is_file()]
        share_copy(src, self.pools_path, "pools", stored)
        # a folder stored before the base indices were shared has no copy: its task 0 was coded without them
        share_copy(self.base_dir / INDICES, self.base_indices_path, "base model's indices", stored, missing_ok=True)

    def shared_files(self) -> dict[str, list[Path]]:
        return {"pools": [self.pools_path], "base_indices": [self.base_indices_path]}

    def pools(self) -> dict[str, torch.Tensor]:
        key = file_key(self.pools_path)
        if self._pools is None or self._pools[0] != key:
            self._pools = (key, load_tensors(self.pools_path))
        return self._pools[1]

    def base_indices(self) -> dict[str, torch.Tensor]:
        """The pretrained base model's indices from the shared copy (what task 0 is coded against)."""
        if not self.base_indices_path.is_file():
            raise FileNotFoundError(f"{self.base_indices_path}: file not found; the method's prepare() copies it")
        key = (-1, file_key(self.base_indices_path))
        if key not in self._indices:
            self._indices[key] = nws.codec.decode(self.base_indices_path.read_bytes())
        return self._indices[key]

    def reference(self, t: int) -> dict[str, torch.Tensor]:
        """The indices task t is coded against: task t-1's, the base model's for task 0."""
        return self.indices(t - 1) if t > 0 else self.base_indices()

    def indices(self, t: int) -> dict[str, torch.Tensor]:
        """C_t decoded from task t's stored artifact (checksums verified; a delta blob decodes its chain, down to
        the base model's indices)."""
        folder = self.ctx.task_dir(t)
        with stored_task():
            manifest = read_manifest(folder)
        key = (t, manifest["files"][INDICES]["sha256"])
        if key not in self._indices:
            prev = self.reference(t) if manifest["codec"] in nws.codec.NEEDS_PREV else None
            pools = self.pools() if manifest["codec"] in nws.codec.POOL_MODES else None
            self._indices[key] = nws.codec.decode((folder / INDICES).read_bytes(), prev=prev, pools=pools)
        return self._indices[key]

    def load(self, t: int, verified: bool = False) -> nn.Module:
        """Task t's NWS network from its artifact: pools, K_t = D(C_t; M), and its BN/head state (the artifact's own
        checksums checked once, none when the caller `verified` the folder)."""
        folder = self.ctx.task_dir(t)
        with stored_task():
            manifest = read_manifest(folder, verify=not verified)
        float_head = manifest["meta"]["head"] == "float"
        net = nws_net.build(self.ctx.cfg.model, self.ctx.tasks[t].num_classes, self.pools(), float_head,
                            str(self.pools_path))
        prev = self.reference(t) if manifest["codec"] in nws.codec.NEEDS_PREV else None
        with stored_task():
            load_task(folder, net, prev=prev, manifest=manifest)
        return net

    def setup_task(self, t: int) -> nn.Module:
        if t == 0 or self.opts.start == "pretrained":
            manifest = read_manifest(self.base_dir)
            num = nws_net.base_num_classes(manifest, self.base_dir)
            net = nws_net.build(self.ctx.cfg.model, num, self.pools(), float_head=False, source=str(self.pools_path))
            load_task(self.base_dir, net)
        else:
            net = self.load(t - 1)
        nws_net.swap_head(net, self.ctx.tasks[t].num_classes, self.inc.head, self.pools().get("fc"))
        return nws.set_mode(net, "search")

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return self.inc.beta * nws.search_loss(model) if self.inc.beta > 0 else None

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        """Task t's artifact; delta/near (and `smallest`, which tries them) code it against `reference(t)`, layers
        of another kernel count (task 0's head against the pretraining head) without reference."""
        idx = self.levers(model, nws.export_indices(model), self.indices(t - 1) if t > 0 else None)
        mode = self.inc.codec
        prev = self.reference(t) if mode in ("smallest", *nws.codec.NEEDS_PREV) else None
        head = "nws" if isinstance(model.fc, nws.NWSLayer) else "float"
        save_task(folder, model, codec_mode=mode, prev=prev, indices=idx,
                  meta={"task": self.ctx.tasks[t].name, "num_classes": self.ctx.tasks[t].num_classes, "head": head})

    def levers(self, model: nn.Module, idx: dict[str, torch.Tensor], prev: dict[str, torch.Tensor] | None
               ) -> dict[str, torch.Tensor]:
        """The indices to store after the keep_margin lever; the model's layers are set to them (so the stored
        state and the model agree). No lever, or no previous task: `idx` as it is."""
        if not self.opts.keep_margin or prev is None:
            return idx
        layers = dict(nws.nws_layers(model))
        out = {}
        for name, x in idx.items():
            layer = layers[name]
            if prev.get(name) is not None and prev[name].numel() == x.numel():
                x = keep_previous(layer.flat_weight().detach().cpu(), layer.pool.detach().cpu(), x, prev[name],
                                  self.opts.keep_margin)
            out[name] = x
        nws.set_mode(model, "frozen")
        nws.load_indices(model, out)
        return out

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        if folder != self.ctx.task_dir(t):
            raise ValueError(f"task {t} is stored in {self.ctx.task_dir(t)}, not {folder}")
        return nws.materialize(nws.set_mode(self.load(t, verified), "frozen"))

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"indices": [folder / INDICES], "state": [folder / STATE], "metadata": [folder / MANIFEST]}

    def task_report(self, t: int, folder: Path) -> dict:
        """Fig. 4 data (KUR, layer sparsity per layer) and the appendix §6 index histograms, from the stored
        indices; the histograms (selection counts per pool kernel) go to reports/task{t}_index_histograms."""
        with stored_task():
            manifest = read_manifest(folder)
        idx, sizes = self.indices(t), manifest["pool_sizes"]
        hist = {name: torch.bincount(v, minlength=sizes[name]) for name, v in idx.items()}
        path = self.ctx.method_dir / REPORTS / f"{folder.name}_index_histograms.safetensors"
        save_tensors(path, hist, metadata={"task": self.ctx.tasks[t].name, "content": "selection counts"})
        index_bytes = manifest["files"][INDICES]["bytes"]
        return {"kernels": manifest["kernels"], "codec": manifest["codec"], "index_bytes": index_bytes,
                "state_bytes": manifest["files"][STATE]["bytes"], "bits_per_kernel": 8 * index_bytes /
                manifest["kernels"], "index_histograms": str(path.relative_to(self.ctx.method_dir)),
                "layers": nws.stats.task_stats(idx, sizes)}

    def run_report(self, reports: list[dict]) -> dict:
        layers = list(reports[0]["layers"]) if reports else []
        kernels = [r["kernels"] for r in reports]
        index_bytes = sum(r["index_bytes"] for r in reports)
        return {
            "kernels_per_task": kernels,
            "bits_per_kernel": 8 * index_bytes / max(sum(kernels), 1),
            "bits_per_kernel_per_task": [r["bits_per_kernel"] for r in reports],
            "codec_per_task": [r["codec"] for r in reports],
            "layers": layers,
            "kur": {name: [r["layers"].get(name, {}).get("kur") for r in reports] for name in layers},
            "layer_sparsity": {name: [r["layers"].get(name, {}).get("layer_sparsity") for r in reports]
                               for name in layers},
            "index_histograms": [r["index_histograms"] for r in reports],
        }


METHOD = NWS
