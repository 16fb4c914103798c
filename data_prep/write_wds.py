"""webdataset writer: tar shards `{split}-%06d.tar` of samples {__key__, png|jpg, cls}.

Each shard is written under a temp name and renamed when complete, so an interrupted run never leaves a
half-written shard under a real name (DESIGN §5). Tar members carry a fixed mtime, so the same input gives
byte-identical shards (and the same sha256) on every run.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from data_prep.manifest import file_record
from nws.disk import writing

try:
    import cv2
except ImportError:  # pragma: no cover - opencv comes with ffcv; webdataset-only installs use Pillow
    cv2 = None

# images of at most 64x64 pixels are stored losslessly by default (png here, raw in FFCV, whose `smart` mode
# uses the same area threshold): small sources (digits, Fashion-MNIST, CIFAR) then read back with identical
# pixels through both formats, while large ones (ImageNet, image folders) are stored as JPEG
LOSSLESS_MAX_PIXELS = 64 * 64


def image_ext(image: np.ndarray, image_format: str) -> str:
    """The stored encoding of one image: `png`, `jpg`, or `auto` = png up to 64x64 pixels, jpg above."""
    if image_format == "auto":
        return "png" if image.shape[0] * image.shape[1] <= LOSSLESS_MAX_PIXELS else "jpg"
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be auto, png or jpg, got {image_format!r}")
    return image_format


def encode_image(image: np.ndarray, ext: str, jpeg_quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if ext == "png":
        Image.fromarray(image).save(buf, format="PNG")
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB from png/jpg bytes: OpenCV when present (installed with FFCV; about 3x faster than Pillow
    on small images, the loaders' main cost), else Pillow. PNG decodes identically either way."""
    if cv2 is not None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot decode a {len(data)}-byte image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def check_key(key: str) -> str:
    """webdataset groups tar members by the text before the first dot of the file name: a key with a dot in
    its last path component would silently split a sample in two."""
    if not key or "." in key.rpartition("/")[2] or key.startswith("/"):
        raise ValueError(f"sample key {key!r} cannot be a webdataset key (no dot in the name, not absolute)")
    return key


class ShardWriter:
    """Writes `{split}-%06d.tar` shards of at most `max_per_shard` samples into `folder`; `close()` returns one
    record per shard: path, num_samples, sha256, bytes."""

    def __init__(self, folder: Path, split: str, max_per_shard: int):
        if max_per_shard < 1:
            raise ValueError(f"max_per_shard must be >= 1, got {max_per_shard}")
        self.folder, self.split, self.max_per_shard = Path(folder), split, max_per_shard
        self.records: list[dict] = []
        self._tar: wds.TarWriter | None = None
        self._file = None
        self._tmp: Path | None = None
        self._count = 0

    def _path(self, index: int) -> Path:
        return self.folder / f"{self.split}-{index:06d}.tar"

    def write(self, key: str, ext: str, data: bytes, label: int) -> None:
        with writing(self._path(len(self.records))):  # a full disk names the shard
            if self._tar is None:
                final = self._path(len(self.records))
                self._tmp = final.with_name(f".{final.name}.tmp")
                self._file = open(self._tmp, "wb")
                self._tar = wds.TarWriter(self._file, mtime=0)  # int: a float mtime costs a PAX header per member
                self._count = 0
            self._tar.write({"__key__": check_key(key), ext: data, "cls": str(int(label)).encode()})
            self._count += 1
            if self._count >= self.max_per_shard:
                self._finish()

    def _finish(self) -> None:
        with writing(self._path(len(self.records))):
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        final = self._path(len(self.records))
        os.replace(self._tmp, final)
        self.records.append({**file_record(final, self.folder), "num_samples": self._count})
        self._tar = self._file = self._tmp = None

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._finish()
        return self.records

    def abort(self) -> None:
        """Drop the shard in progress (finished shards stay: they are complete and recorded)."""
        if self._tar is not None:
            try:
                self._tar.close()
            except OSError:  # closing writes the tar's end blocks: on a full disk that fails too, and is moot
                pass
            finally:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._tmp.unlink(missing_ok=True)
            self._tar = self._file = self._tmp = None
