"""The pretraining data: the `pretrain` unit (every class of the source) written by the data stage."""

from __future__ import annotations

from pathlib import Path

from base.layout import MANIFEST
from data_prep.manifest import read_unit
from data_prep.prepare import PRETRAIN
from loaders import make_loader

EVAL_SPLITS = ("test", "val")


def unit_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir) / PRETRAIN
    if not (Path(data_dir) / MANIFEST).is_file():
        raise FileNotFoundError(f"{Path(data_dir) / MANIFEST}: no prepared data; run `nws data prepare` "
                                "with the same config first (data.pretrain_set must be true)")
    read_unit(path)  # names the prepared units when `pretrain` is missing
    return path


def data_hash(data_dir: str | Path) -> str:
    """The data stage's hash of the `pretrain` unit: what the stage's own hash adds so that new data means a new run."""
    return read_unit(unit_dir(data_dir))["config_hash"]


def num_classes(data_dir: str | Path) -> int:
    return len(read_unit(unit_dir(data_dir))["classes"]["names"])


def eval_split(data_dir: str | Path) -> str:
    splits = read_unit(unit_dir(data_dir))["splits"]
    for name in EVAL_SPLITS:
        if name in splits:
            return name
    raise KeyError(f"{unit_dir(data_dir)}: no evaluation split (one of {EVAL_SPLITS}); it has {sorted(splits)}")


def split_size(data_dir: str | Path, split: str) -> int:
    """Images in a split of the `pretrain` unit (the manifest's count)."""
    return int(read_unit(unit_dir(data_dir))["splits"][split]["num_samples"])


def train_loader(data_dir, data_cfg, cfg, micro_batch: int, seed: int, rank: int, world_size: int):
    """This rank's share of each epoch, in full micro-batches (every rank takes the same number of steps)."""
    return make_loader(unit_dir(data_dir), "train", fmt=data_cfg.loader, batch_size=micro_batch, train=True,
                       augment=cfg.augment, image_size=data_cfg.image_size, seed=seed, rank=rank,
                       world_size=world_size, num_workers=cfg.num_workers, drop_last=True)


def eval_loader(data_dir, data_cfg, cfg, rank: int, world_size: int):
    """This rank's share of the evaluation split; over all ranks every sample is seen exactly once."""
    return make_loader(unit_dir(data_dir), eval_split(data_dir), fmt=data_cfg.loader,
                       batch_size=cfg.eval_batch_size, train=False, image_size=data_cfg.image_size, rank=rank,
                       world_size=world_size, num_workers=cfg.num_workers)
