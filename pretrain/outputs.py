"""What pretraining hands to the later stages (DESIGN §2), written by rank 0, atomically, no pickle:

- `pools.safetensors`: one pool (n × k·k) per NWS layer, stored once for all tasks; metadata: architecture, pool
  size, config hash (nws.load_pools refuses pools of another shape, naming the layer);
- `base_model/`: the pretrained NWS network as a task artifact (indices + BatchNorm + biases, nws.artifact) that
  incremental task 0 starts from;
- `plain_backbone.safetensors`: the float network of `kind: plain`, the baselines' starting point;
- `summary_<kind>.json` per finished kind, then `pretrain.json` (all of them, with their health: pretrain/health.py)
  and `complete`, written last and only when the health check passed or degenerate outputs are allowed.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

import nws
from base.layout import BASE_MODEL, COMPLETE, PLAIN, POOLS, PRETRAIN_SUMMARY
from nws.artifact import save_task
from nws.io import atomic_write_json, read_json, save_tensors


def model_metadata(model_cfg, config_hash: str, num_classes: int) -> dict[str, str]:
    return {"arch": model_cfg.arch, "stem": model_cfg.stem, "width": str(model_cfg.width),
            "pool_size": str(model_cfg.pool_size), "num_classes": str(num_classes), "config_hash": config_hash}


def write_nws(out: Path, model: nn.Module, meta: dict[str, str]) -> None:
    save_tensors(Path(out) / POOLS, nws.export_pools(model), metadata=meta)
    save_task(Path(out) / BASE_MODEL, model, meta=meta)


def write_plain(out: Path, model: nn.Module, meta: dict[str, str]) -> None:
    save_tensors(Path(out) / PLAIN, model.state_dict(), metadata=meta)


def kind_summary_path(out: Path, kind: str) -> Path:
    return Path(out) / f"summary_{kind}.json"


def finished(out: Path, kind: str, config_hash: str) -> bool:
    """A kind is finished when its summary exists for this very config (its files are written before it)."""
    path = kind_summary_path(out, kind)
    return path.is_file() and read_json(path).get("config_hash") == config_hash


def is_complete(out: Path, config_hash: str) -> bool:
    path = Path(out) / COMPLETE
    return path.is_file() and json.loads(path.read_text() or "{}").get("config_hash") == config_hash


def write_summary(out: Path, kinds: list[str], config_hash: str, extra: dict, updates: dict | None = None,
                  complete: bool = True) -> dict:
    """pretrain.json: every kind's summary (with `updates[kind]` merged in: the health judged at the end), then the
    `complete` mark unless `complete` is false (outputs the health check stopped: kept for inspection only)."""
    kind_summaries = {k: {**read_json(kind_summary_path(out, k)), **(updates or {}).get(k, {})} for k in kinds}
    summary = {"config_hash": config_hash, **extra, **kind_summaries}
    atomic_write_json(Path(out) / PRETRAIN_SUMMARY, summary)
    if complete:
        atomic_write_json(Path(out) / COMPLETE, {"config_hash": config_hash})
    return summary
