"""Dataset readers: each opens one dataset in its official on-disk format as a `Source` (data_prep/types.py).
Opening lists files and reads labels only; images are decoded by `Split.load(i)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from data_prep.sources.cifar100 import open_cifar100
from data_prep.sources.cub2sketches import open_cub2sketches
from data_prep.sources.digits import open_digits
from data_prep.sources.fashion_mnist import open_fashion_mnist
from data_prep.sources.image_folder import open_image_folder
from data_prep.sources.imagenet import open_imagenet
from data_prep.sources.miniimagenet import open_miniimagenet
from data_prep.types import Source

SOURCES: dict[str, Callable[..., Source]] = {
    "digits": open_digits,
    "fashion_mnist": open_fashion_mnist,
    "cifar100": open_cifar100,
    "imagenet": open_imagenet,
    "image_folder": open_image_folder,
    "cub2sketches": open_cub2sketches,
    "miniimagenet": open_miniimagenet,
}


def source_options(name: str) -> list[str]:
    """The options a source takes besides `root` (for config validation and help text)."""
    return [p for p in inspect.signature(_reader(name)).parameters if p != "root"]


def open_source(name: str, /, root=None, **options) -> Source:
    """Open source `name` at `root` (None: the source's default, where it has one). Unknown names and
    options are ValueErrors listing what is accepted; layout problems are LayoutErrors raised here, before
    any work. `name` is positional-only, so image_folder's own `name` option can be passed."""
    reader = _reader(name)
    unknown = sorted(set(options) - set(source_options(name)))
    if unknown:
        takes = source_options(name) or "no options"
        raise ValueError(f"source {name!r}: unknown options {unknown}; it takes {takes}")
    return reader(root, **options)


def _reader(name: str) -> Callable[..., Source]:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}")
    return SOURCES[name]
