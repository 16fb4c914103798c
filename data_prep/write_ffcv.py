"""FFCV writer: one `{split}.beton` per unit and split, fields image (RGBImageField), label and index (IntField).

`index` is the sample's position in the split's write order, the same order as the webdataset shards, so
loaders of either format can name every sample the same way (the cross-format test compares by it).
FFCV's DatasetWriter writes in place and waits for its worker processes by polling a counter: a worker that
raises would leave a half-written file and hang the parent. So the file is written under a temp name and
renamed when complete, and reading errors inside workers are caught, logged to a side file and re-raised
here after the writer returns. A worker can still die writing its pages (a full disk: issue 17); `_watch_workers`
sees it, stops the wait and the other workers, and names the file (DiskFull when the disk is full).
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import os
import threading
from pathlib import Path

import numpy as np

from data_prep.manifest import file_record
from data_prep.progress import bar as progress_bar
from data_prep.write_wds import LOSSLESS_MAX_PIXELS
from nws.disk import NEARLY_FULL, DiskFull, free_bytes, writing

WRITE_MODES = ("auto", "raw", "jpg", "smart", "proportion")


class _Guarded:
    """An indexed dataset whose failures are written to `error_log` (append, one line each) instead of raised
    in the worker, where they would hang FFCV's writer."""

    def __init__(self, dataset, error_log: Path):
        self.dataset, self.error_log = dataset, error_log

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            image, label, index = self.dataset[i]
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
            return image, int(label), int(index)
        except Exception as e:  # noqa: BLE001 - reported to the parent through the log
            with open(self.error_log, "a") as f:
                f.write(f"sample {i}: {type(e).__name__}: {e}\n".replace("\n", " ").rstrip() + "\n")
            return np.zeros((1, 1, 3), np.uint8), 0, int(i)


def image_field(write_mode: str, max_resolution: int | None, jpeg_quality: int):
    """RGBImageField from the options; `auto` = FFCV's `smart` mode with the 64x64-pixel area threshold, i.e.
    raw (lossless) for small images and JPEG above, the same rule as the webdataset writer's `auto`."""
    with keep_torch_threads():
        from ffcv.fields import RGBImageField

    if write_mode not in WRITE_MODES:
        raise ValueError(f"ffcv write_mode must be one of {WRITE_MODES}, got {write_mode!r}")
    if write_mode == "auto":
        return RGBImageField(write_mode="smart", smart_threshold=LOSSLESS_MAX_PIXELS * 3,
                             max_resolution=max_resolution, jpeg_quality=jpeg_quality)
    return RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality)


def resolve_write_mode(write_mode: str, min_pixels: int, max_pixels: int) -> str:
    """`auto` for a split whose images all fall on one side of the threshold becomes plain raw or jpg (FFCV's
    smart mode JPEG-encodes every image, even those it then stores raw)."""
    if write_mode != "auto":
        return write_mode
    if max_pixels <= LOSSLESS_MAX_PIXELS:
        return "raw"
    return "jpg" if min_pixels > LOSSLESS_MAX_PIXELS else "auto"


def page_size_for(max_image_bytes: int) -> int:
    """FFCV needs every sample to fit in one page (a power of two, at least 2 MiB); JPEG of noise can exceed
    the raw size, hence the margin."""
    need = max(1 << 21, 4 * int(max_image_bytes) + 4096)
    return 1 << (need - 1).bit_length()


@contextlib.contextmanager
def keep_torch_threads():
    """FFCV calls torch.set_num_threads(n) for the whole process: 1 when imported, its loader's num_workers when a
    loader starts an epoch. Training code owns that setting, so it is put back after FFCV touched it."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _progress(desc: str, enabled: bool):
    """FFCV's writer draws its own tqdm bar; name it after the unit/split, as plain lines in a log (data_prep.progress),
    or silence it."""
    import ffcv.writer

    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = functools.partial(progress_bar, desc=desc, enabled=enabled)  # FFCV calls tqdm(total=n)
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


@contextlib.contextmanager
def _watch_workers(path: Path, period: float = 0.2):
    """FFCV's writer polls a counter its workers raise and waits forever for one that died. The worker processes
    it starts are recorded (ffcv.writer.Process replaced for the block); a thread that sees one end with an error
    interrupts the wait, the other workers are stopped, and the error names `path`."""
    import ffcv.writer

    started: list = []
    original = ffcv.writer.Process

    class Recorded(original):
        def start(self):
            started.append(self)
            super().start()

    died: list[int] = []
    done = threading.Event()

    def watch():
        while not done.wait(period):
            codes = [w.exitcode for w in started if w.exitcode not in (None, 0)]
            if codes:
                died.extend(codes)
                _thread.interrupt_main()
                return

    ffcv.writer.Process = Recorded
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    except KeyboardInterrupt:
        if not died:
            raise
        for w in started:
            w.terminate()
        if (free_bytes(path) or 0) < NEARLY_FULL:
            raise DiskFull(path) from None
        raise RuntimeError(f"{path}: an FFCV writer process died (exit code {died[0]}); its error is printed "
                           "above") from None
    finally:
        done.set()
        watcher.join()
        ffcv.writer.Process = original


def write_beton(path: Path, dataset, *, write_mode: str = "auto", max_resolution: int | None = None,
                jpeg_quality: int = 90, max_image_bytes: int = 0, num_workers: int = 1,
                desc: str = "ffcv", progress: bool = True) -> dict:
    """Write `dataset` (len + [i] -> (HxWx3 uint8, label, index)) to `path` atomically; returns the file
    record {path, sha256, bytes, num_samples} (path relative to the file's folder)."""
    with keep_torch_threads():
        from ffcv.fields import IntField
        from ffcv.fields.rgb_image import IMAGE_MODES
        from ffcv.writer import DatasetWriter

    IMAGE_MODES["raw"]  # compiles numba's typed-dict lookup once here, not again in every forked writer

    path = Path(path)
    if len(dataset) == 0:
        raise ValueError(f"{path}: no samples to write")
    tmp = path.with_name(f".{path.name}.tmp")
    errors = path.with_name(f".{path.name}.errors")
    errors.unlink(missing_ok=True)
    fields = {"image": image_field(write_mode, max_resolution, jpeg_quality), "label": IntField(),
              "index": IntField()}
    try:
        # every writer process fills pages of its own (2 MiB at least): small splits get fewer processes
        writers = max(1, min(num_workers, len(dataset) // 2000))
        writer = DatasetWriter(str(tmp), fields, page_size=page_size_for(max_image_bytes), num_workers=writers)
        try:
            with _progress(desc, progress), writing(path), _watch_workers(path):  # a full disk names the .beton
                writer.from_indexed_dataset(_Guarded(dataset, errors))
        except BaseException:
            with contextlib.suppress(Exception):  # the header's shared memory FFCV frees only when it finishes
                writer.metadata_sm.close()
                writer.metadata_sm.unlink()
            raise
        if errors.is_file() and errors.stat().st_size:
            first = errors.read_text().splitlines()[0]
            raise RuntimeError(f"{path}: reading a sample failed while writing the .beton ({first})")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)
    return {**file_record(path, path.parent), "num_samples": len(dataset)}
