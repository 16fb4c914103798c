"""`prepare`: a source as distributed -> task units of webdataset shards and FFCV .beton files, with tasks.json,
manifest.json and bad_images.log (DESIGN §2, the data stage).

Units are the tasks of tasks.json plus `pretrain` (every class, for pool pretraining; with the `all` task split
the single task is named `pretrain` and is that unit). Each unit is built in
`<out>/.<unit>.partial/`, one split at a time, every file temp-named then renamed and each finished split
recorded in the partial folder's progress.json; a complete unit is swapped into `<out>/<unit>/` and only then
entered in the manifest. So an interrupted run resumes at the next split, a failing run leaves every finished
unit as it was, and a re-run skips units whose manifest entry matches the request and whose files re-hash to
the recorded sha256 (DESIGN §5). Units of earlier requests that this one does not name stay as they are.

The tasks of a family (permuted, rotated) all hold every image of the source, so their images are written once:
the `pretrain` unit (every class, as for any kind) is built first and each task is a view of it in the manifest
(data_prep.manifest): the same file records, classes, statistics and label map (class id = label), plus the task's
transform, which the loaders apply on the fly. One set of files keeps the checksum logic as it is (the files are
hashed, verified and rebuilt as the `pretrain` unit's), and every reader that opens `<out>/<task>` through the
manifest gets the task's transform without knowing about families. A view's config hash includes its base's, so a
rebuilt base re-records its views; views cost no I/O and are recomputed on every run. The normalisation statistics
are the base's (a permutation keeps them exactly; a rotation's black corners shift them slightly, and SupSup
normalises every task with the same MNIST constants too).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from base.layout import TASKS
from data_prep import subset
from data_prep.manifest import (
    BAD_LOG,
    FORMAT_VERSION,
    PixelStats,
    config_hash,
    load_manifest,
    save_manifest,
    split_files,
    verify_files,
    verify_unit,
)
from data_prep.progress import bar as progress_bar
from data_prep.sources import open_source
from data_prep.tasks import FAMILIES, Task, load_tasks, save_tasks, split_tasks, task_records
from data_prep.types import BadImage, Source, Split
from data_prep.write_wds import ShardWriter, encode_image, image_ext
from nws.io import atomic_write_bytes, atomic_write_json, read_json

FORMATS = ("wds", "ffcv")
PRETRAIN = "pretrain"
PROGRESS = "progress.json"
CHUNK = 256
UNIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class PrepareError(ValueError):
    """Bad input found while preparing (a bad image under --strict, a task with no images in a split)."""


@dataclass
class WriteOptions:
    """What decides the bytes of a unit (all of it goes into the unit's config hash)."""

    formats: tuple[str, ...] = FORMATS
    max_per_shard: int = 10_000
    image_size: int | None = None  # store N x N: shorter side resized to N, then the central square
    max_resolution: int | None = None  # else: longer side at most this (aspect kept); None = as distributed
    image_format: str = "auto"  # webdataset: auto (png up to 64x64 pixels, jpg above) | png | jpg
    ffcv_write_mode: str = "auto"  # auto (raw up to 64x64 pixels, jpg above) | raw | jpg | smart | proportion
    jpeg_quality: int = 90
    shuffle_seed: int | None = 0  # write order shuffled (shards are not single-class); None = source order

    def __post_init__(self):
        self.formats = tuple(f for f in FORMATS if f in self.formats)
        if not self.formats:
            raise ValueError(f"formats must name at least one of {FORMATS}")
        if self.image_size is not None and self.max_resolution is not None:
            raise ValueError("give image_size (square) or max_resolution (aspect kept), not both")


def fit_image(image: np.ndarray, opts: WriteOptions) -> np.ndarray:
    """The stored pixels of one decoded image (resized by the options; bilinear with Pillow's antialiasing)."""
    h, w = image.shape[:2]
    if opts.image_size is not None:
        n = opts.image_size
        scale = n / min(h, w)
        if (h, w) != (n, n):
            nh, nw = max(n, round(h * scale)), max(n, round(w * scale))
            if (nh, nw) != (h, w):
                image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
            top, left = (nh - n) // 2, (nw - n) // 2
            image = image[top:top + n, left:left + n]
    elif opts.max_resolution is not None and max(h, w) > opts.max_resolution:
        scale = opts.max_resolution / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return np.ascontiguousarray(image)


def _check_image(image, key: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"sample {key!r}: expected an HxWx3 uint8 image from the source, got {got}")


@dataclass
class _Encoder:
    """Decode, fit, (encode) and count one chunk of records; runs inline or in forked pool workers."""

    split: Split
    task: Task
    opts: WriteOptions
    encode: bool

    def __call__(self, chunk: np.ndarray) -> tuple[list, PixelStats]:
        results, stats = [], PixelStats()
        for i, rec in zip(chunk, self.split.iter_records(chunk), strict=True):
            if isinstance(rec, BadImage):
                results.append((int(i), None, rec.path, rec.reason))
                continue
            _check_image(rec.image, rec.key)
            image = fit_image(rec.image, self.opts)
            stats.add(image)
            payload = None
            if self.encode:
                ext = image_ext(image, self.opts.image_format)
                payload = (ext, encode_image(image, ext, self.opts.jpeg_quality))
            results.append((int(i), rec.key, self.task.remap(rec.label), image.shape[:2], payload))
        return results, stats


_WORKER_ENCODER: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder


def _run_worker(chunk: np.ndarray):
    return _WORKER_ENCODER(chunk)


def _encoded(encoder: _Encoder, chunks: list[np.ndarray], workers: int):
    """Chunk results in order; a forked pool shares the source with the workers without pickling it."""
    if workers <= 1:
        yield from map(encoder, chunks)
        return
    with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
        yield from pool.imap(_run_worker, chunks)


class _BetonRecords:
    """The written records of a split as FFCV's indexed dataset: [j] -> (pixels, task label, j)."""

    def __init__(self, split: Split, records: list[int], task: Task, opts: WriteOptions):
        self.split, self.records, self.task, self.opts = split, records, task, opts

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, j: int):
        sample = self.split.load(self.records[j])
        return fit_image(sample.image, self.opts), self.task.remap(sample.label), j


def write_order(split: Split, task: Task, unit: str, split_name: str, seed: int | None) -> np.ndarray:
    records = task_records(split, task)
    if seed is None:
        return records
    rng = np.random.default_rng([seed, zlib.crc32(unit.encode()), zlib.crc32(split_name.encode())])
    return records[rng.permutation(len(records))]


def write_split(split: Split, task: Task, unit: str, split_name: str, folder: Path, opts: WriteOptions, *,
                strict: bool, workers: int, progress: bool) -> dict:
    """Write one split of one unit into `folder`: shards and/or .beton; returns its manifest entry."""
    for stale in [*folder.glob(f"{split_name}-*.tar"), *folder.glob(f".{split_name}*"),
                  folder / f"{split_name}.beton"]:
        stale.unlink(missing_ok=True)
    order = write_order(split, task, unit, split_name, opts.shuffle_seed)
    encoder = _Encoder(split, task, opts, encode="wds" in opts.formats)
    sink = ShardWriter(folder, split_name, opts.max_per_shard) if "wds" in opts.formats else None
    good, bad, sizes, stats = [], [], set(), PixelStats()
    bar = progress_bar(total=len(order), desc=f"{unit}/{split_name}", enabled=progress)
    encoded = _encoded(encoder, [order[s:s + CHUNK] for s in range(0, len(order), CHUNK)], workers)
    try:
        for results, chunk_stats in encoded:
            stats.merge(chunk_stats)
            for res in results:
                if res[1] is None:
                    if strict:
                        raise PrepareError(f"{res[2]}: {res[3]} (--strict: bad images stop the run)")
                    bad.append((res[2], res[3]))
                    continue
                idx, key, label, hw, payload = res
                if sink is not None:
                    sink.write(key, payload[0], payload[1], label)
                good.append(idx)
                sizes.add(tuple(int(v) for v in hw))
            bar.update(len(results))
        shards = sink.close() if sink is not None else None
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        encoded.close()  # stops the worker pool now, also when the loop above raised
        bar.close()
    if not good:
        raise PrepareError(f"unit {unit!r}: split {split_name!r} has no readable images of classes "
                           f"{task.class_names[:5]}{'...' if task.num_classes > 5 else ''}")
    entry = {"num_samples": len(good), "stats": stats.to_dict(),
             "image_size": list(next(iter(sizes))) if len(sizes) == 1 else None,
             "max_image_size": [max(s[0] for s in sizes), max(s[1] for s in sizes)],
             "bad_images": {"count": len(bad), "names": [b[0] for b in bad], "reasons": [b[1] for b in bad]}}
    if shards is not None:
        entry["wds"] = {"shards": shards, "samples_per_shard": [s["num_samples"] for s in shards]}
    if "ffcv" in opts.formats:
        from data_prep.write_ffcv import resolve_write_mode, write_beton

        pixels = [h * w for h, w in sizes]
        entry["ffcv"] = write_beton(
            folder / f"{split_name}.beton", _BetonRecords(split, good, task, opts),
            write_mode=resolve_write_mode(opts.ffcv_write_mode, min(pixels), max(pixels)),
            max_resolution=opts.max_resolution, jpeg_quality=opts.jpeg_quality, max_image_bytes=3 * max(pixels),
            num_workers=workers, desc=f"{unit}/{split_name} ffcv", progress=progress)
    return entry


def unit_entry(task: Task, kind: str, cfg_hash: str, splits: dict[str, dict]) -> dict:
    """The manifest entry of a finished unit: classes, image size, train-split mean/std, splits."""
    sizes = {tuple(s["image_size"]) if s["image_size"] else None for s in splits.values()}
    stats_split = "train" if "train" in splits else next(iter(splits))
    mean, std = PixelStats.from_dict(splits[stats_split]["stats"]).mean_std()
    return {
        "kind": kind, "config_hash": cfg_hash,
        "classes": {"names": list(task.class_names), "ids": list(task.class_ids)},
        "num_classes": task.num_classes,
        "image_size": list(next(iter(sizes))) if len(sizes) == 1 and None not in sizes else None,
        "max_image_size": [max(s["max_image_size"][0] for s in splits.values()),
                           max(s["max_image_size"][1] for s in splits.values())],
        "mean": mean, "std": std, "stats_split": stats_split,
        "splits": {name: {k: v for k, v in s.items() if k != "stats"} for name, s in splits.items()},
        "bad_images": sum(s["bad_images"]["count"] for s in splits.values()),
    }


def build_unit(source: Source, task: Task, kind: str, out: Path, cfg_hash: str, opts: WriteOptions, *,
               strict: bool, workers: int, progress: bool) -> dict:
    """Build (or finish) one unit in its partial folder and swap it into place; returns its manifest entry."""
    unit_dir, partial = out / task.name, out / f".{task.name}.partial"
    record_path = partial / PROGRESS
    done: dict[str, dict] = {}
    if record_path.is_file():
        record = read_json(record_path)
        if record.get("config_hash") == cfg_hash:
            done = {s: e for s, e in record["splits"].items() if not verify_files(partial, split_files(e))}
    if not done and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for split_name, split in source.splits.items():
        if split_name in done:
            continue
        done[split_name] = write_split(split, task, task.name, split_name, partial, opts, strict=strict,
                                       workers=workers, progress=progress)
        atomic_write_json(record_path, {"config_hash": cfg_hash, "splits": done})
    entry = unit_entry(task, kind, cfg_hash, {s: done[s] for s in source.splits})
    record_path.unlink()
    old = out / f".{task.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if unit_dir.exists():
        unit_dir.rename(old)
    partial.rename(unit_dir)
    if old.exists():
        shutil.rmtree(old)
    return entry


def view_entry(task: Task, base: str, base_entry: dict) -> dict:
    """The manifest entry of a family task: the entry of its base unit (files, classes, statistics) as a view of it,
    with the task's transform; its config hash follows the base's and the task's record."""
    entry = json.loads(json.dumps(base_entry))
    entry.update(kind="task", view_of=base, transform=dict(task.transform),
                 config_hash=config_hash({"view_of": base, "base": base_entry["config_hash"], "unit": task.to_dict()}))
    return entry


def _units(source: Source, task_kind: str, task_opts: dict, pretrain_set: bool) -> list[tuple[Task, str]]:
    """(task, kind) of every unit, in build order: kind task, pretrain, or view (a family's task, after its base)."""
    opts = dict(task_opts)
    if task_kind == "all":
        opts.setdefault("name", PRETRAIN)
    tasks = split_tasks(source, task_kind, **opts)
    if task_kind in FAMILIES:
        if not pretrain_set:
            raise ValueError(f"{task_kind} tasks are views of the all-classes unit {PRETRAIN!r} (their images, stored "
                             "once): the pretraining set cannot be skipped (data.pretrain_set, --no-pretrain-set)")
        base = Task(PRETRAIN, list(source.classes), list(range(len(source.classes))))
        return [(base, PRETRAIN), *((t, "view") for t in tasks)]
    units = [(t, "task") for t in tasks]
    if pretrain_set and not (task_kind == "all" and tasks[0].name == PRETRAIN):
        if PRETRAIN in {t.name for t in tasks}:
            raise ValueError(f"a task is named {PRETRAIN!r}, the name of the pretraining unit; rename it or "
                             "skip the pretraining set")
        units.append((Task(PRETRAIN, list(source.classes), list(range(len(source.classes)))), PRETRAIN))
    for t, _ in units:
        if not UNIT_NAME.fullmatch(t.name):
            raise ValueError(f"task name {t.name!r} cannot name a folder (letters, digits, _ . + - only)")
    return units


def _write_bad_log(out: Path, manifest: dict) -> None:
    lines = [f"{unit}\t{split}\t{name}\t{reason}"
             for unit, e in sorted(manifest["units"].items()) if not e.get("view_of")
             for split, s in e["splits"].items()
             for name, reason in zip(s["bad_images"]["names"], s["bad_images"]["reasons"], strict=True)]
    atomic_write_bytes(out / BAD_LOG, ("".join(line + "\n" for line in lines)).encode())


def _retire_other_tasks_file(path: Path, tasks: list[Task], meta: dict) -> None:
    """tasks.json is written when every unit of the request is complete. A tasks.json of another request is
    removed first: while units are being rebuilt it would describe units that are no longer what it says."""
    if not path.is_file():
        return
    try:
        old_tasks, old_meta = load_tasks(path)
        same = [t.to_dict() for t in old_tasks] == [t.to_dict() for t in tasks] and old_meta == meta
    except ValueError:
        same = False
    if not same:
        path.unlink()


def prepare(source_name: str, root, out, formats=FORMATS, task_kind: str = "blocks",
            task_opts: dict | None = None, *, source_options: dict | None = None, pretrain_set: bool = True,
            max_per_shard: int = 10_000, image_size: int | None = None, max_resolution: int | None = None,
            image_format: str = "auto", ffcv_write_mode: str = "auto", jpeg_quality: int = 90,
            shuffle_seed: int | None = 0, strict: bool = False, force: bool = False, workers: int = 1,
            progress: bool = True, source: Source | None = None, per_class: dict[str, int] | None = None,
            per_class_seed: int = 0) -> dict:
    """Prepare every unit of `source_name` (at `root`) under `out`; returns the summary (also stored in the
    manifest). `task_opts` go to data_prep.tasks.split_tasks; `source` may be given already opened; `per_class`
    keeps that many images of each class in the named splits (data_prep.subset, seeded by `per_class_seed`)."""
    start = time.time()
    out = Path(out)
    task_opts, source_options = dict(task_opts or {}), dict(source_options or {})
    opts = WriteOptions(tuple(formats), max_per_shard, image_size, max_resolution, image_format, ffcv_write_mode,
                        jpeg_quality, shuffle_seed)
    if source is None:
        source = open_source(source_name, root, **source_options)
    per_class = dict(per_class or {})
    if per_class:
        source = subset.per_class(source, per_class, per_class_seed)
    units = _units(source, task_kind, task_opts, pretrain_set)
    root_text = None if root is None else str(Path(root).expanduser().resolve())
    meta = {"source": source_name, "root": root_text, "source_options": source_options, "task_kind": task_kind,
            "task_options": task_opts, "pretrain_set": pretrain_set}
    if per_class:
        meta["per_class"] = {"counts": per_class, "seed": per_class_seed}
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t for t, kind in units if kind in ("task", "view")]
    _retire_other_tasks_file(out / TASKS, tasks, meta)
    manifest = load_manifest(out)
    summary = Summary(source=source_name, out=str(out))
    summary.other_units = sorted(set(manifest["units"]) - {t.name for t, _ in units})
    for task, kind in units:
        if kind == "view":
            entry = view_entry(task, PRETRAIN, manifest["units"][PRETRAIN])
            built = manifest["units"].get(task.name) != entry
            if (out / task.name).is_dir():  # the folder of a unit of an earlier request: this name is a view now
                shutil.rmtree(out / task.name)
            if built:
                manifest["units"][task.name] = entry
                save_manifest(out, manifest)
            summary.add(task.name, entry, built=built)
            continue
        cfg = {"format_version": FORMAT_VERSION, "source": source_name, "root": root_text,
               "source_options": source_options, "unit": task.to_dict(), "kind": kind, "write": asdict(opts),
               "splits": {s: int(len(task_records(sp, task))) for s, sp in source.splits.items()}}
        if per_class:
            cfg["per_class"] = meta["per_class"]
        cfg_hash = config_hash(cfg)
        entry = manifest["units"].get(task.name)
        if (not force and entry is not None and entry.get("config_hash") == cfg_hash
                and not verify_unit(out / task.name, entry)):
            if strict and entry["bad_images"]:
                first = next(s["bad_images"]["names"][0] for s in entry["splits"].values()
                             if s["bad_images"]["count"])
                raise PrepareError(f"{first}: listed as a bad image of unit {task.name!r} "
                                   "(--strict: bad images stop the run)")
            summary.add(task.name, entry, built=False)
            continue
        entry = build_unit(source, task, kind, out, cfg_hash, opts, strict=strict, workers=workers,
                           progress=progress)
        manifest["units"][task.name] = entry
        save_manifest(out, manifest)
        _write_bad_log(out, manifest)
        summary.add(task.name, entry, built=True)
    _write_bad_log(out, manifest)
    save_tasks(out / TASKS, tasks, meta)
    manifest.update(format_version=FORMAT_VERSION, source=meta, write_options=asdict(opts),
                    summary=summary.finish(time.time() - start))
    save_manifest(out, manifest)
    return manifest["summary"]


@dataclass
class Summary:
    """Images per unit and split, bytes, bad images, what was built and what was skipped as verified."""

    source: str
    out: str
    units: dict = field(default_factory=dict)
    built: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    other_units: list = field(default_factory=list)  # complete units of earlier requests, kept as they are
    bytes_written: int = 0
    bytes_total: int = 0
    bad_images: int = 0

    def add(self, name: str, entry: dict, built: bool) -> None:
        """A view (a family's task) stores no file: 0 bytes and no bad image of its own (both are its base's)."""
        view = bool(entry.get("view_of"))
        size = 0 if view else sum(f["bytes"] for s in entry["splits"].values() for f in split_files(s))
        bad = 0 if view else entry["bad_images"]
        self.units[name] = {"splits": {s: e["num_samples"] for s, e in entry["splits"].items()},
                            "classes": len(entry["classes"]["ids"]), "bytes": size, "bad_images": bad, "built": built}
        if view:
            self.units[name]["view_of"] = entry["view_of"]
        (self.built if built else self.skipped).append(name)
        self.bytes_total += size
        self.bytes_written += size if built else 0
        self.bad_images += bad

    def finish(self, seconds: float) -> dict:
        return {**asdict(self), "seconds": round(seconds, 2)}
