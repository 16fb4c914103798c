"""The FFCV format: .beton files read by FFCV's own Loader, on CPU, in the order loaders.ranks deals."""

from __future__ import annotations

import torch

from data_prep.augment import EVAL_CROP_RATIO
from data_prep.write_ffcv import keep_torch_threads
from loaders.ranks import rank_share
from loaders.unit import UnitLoader


class FfcvLoader(UnitLoader):
    """FFCV's Loader on CPU (no ToDevice) with a traversal order that deals positions to ranks as
    `rank_share` does, so it needs no torch.distributed group and matches the memory loader exactly."""

    def __init__(self, unit_dir, split: str, **kw):
        super().__init__(unit_dir, split, **kw)
        if "ffcv" not in self.split_entry:
            raise FileNotFoundError(f"{self.unit_dir}: split {split!r} has no .beton; prepare with --format ffcv")
        self._loader = None

    def _make(self):
        with keep_torch_threads():
            from ffcv.fields.decoders import (
                CenterCropRGBImageDecoder,
                IntDecoder,
                RandomResizedCropRGBImageDecoder,
                SimpleRGBImageDecoder,
            )
            from ffcv.loader import Loader
            from ffcv.transforms import ToTensor

        size = (self.image_size, self.image_size)
        if self.stored_size is not None:
            decoder = SimpleRGBImageDecoder()
        elif self.augment:
            decoder = RandomResizedCropRGBImageDecoder(size)
        else:
            decoder = CenterCropRGBImageDecoder(size, ratio=EVAL_CROP_RATIO)
        pipelines = {"image": [decoder, ToTensor()], "label": [IntDecoder(), ToTensor()],
                     "index": [IntDecoder(), ToTensor()]}
        with keep_torch_threads():
            return Loader(str(self.files_dir / self.split_entry["ffcv"]["path"]), batch_size=self.batch_size,
                          num_workers=max(1, self.num_workers), order=_rank_order(self), drop_last=self.drop_last,
                          seed=self.seed, pipelines=pipelines)

    def _batches(self):
        if self._loader is None:
            self._loader = self._make()
        self._loader.next_epoch = self.epoch
        with keep_torch_threads() as threads:
            for images, labels, index in self._loader:  # FFCV reuses its output buffers: copy what outlives the step
                if torch.get_num_threads() != threads:  # FFCV's batch thread sets it when the epoch starts
                    torch.set_num_threads(threads)
                yield images.permute(0, 3, 1, 2), labels[:, 0].clone(), index[:, 0].clone()


def _rank_order(owner: UnitLoader):
    """An FFCV TraversalOrder instance (FFCV calls it with the Loader) whose epoch order is `owner._positions`."""
    from ffcv.traversal_order.base import TraversalOrder

    class RankOrder(TraversalOrder):
        def __init__(self):
            pass

        def __call__(self, loader):
            self.loader, self.indices = loader, loader.indices
            return self

        def sample_order(self, epoch: int):
            return rank_share(len(self.indices), owner.rank, owner.world_size, owner.shuffle, owner.seed, epoch,
                              owner.equal)

    return RankOrder()

