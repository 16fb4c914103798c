"""Small datasets written in exactly the official on-disk formats, shared by the data_prep tests. Every writer
takes a folder and returns the root to pass to `open_source(name, root=...)`. Pixels come from `pattern`, so a
test can check decoded images against what was written (PNG is lossless; JPEG is not)."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# The official CIFAR-100 names (fine ids are alphabetical) and the true fine -> coarse array
# (notes/frameworks.md §5, from continuum/datasets/cifar100.py): independent of data_prep's JSON mapping.
CIFAR_FINE = """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
    cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp
    lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
    oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
    spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
    train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()
CIFAR_COARSE = """
    aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
    household_furniture insects large_carnivores large_man-made_outdoor_things
    large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals
    non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2
""".split()
CIFAR_FINE_TO_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7,
    6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16,
    12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]
CORRUPT_FILES = ("empty.jpg", "garbage.png", "truncated.jpg")  # in train/<first class>/ when corrupt=True
IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")
IMAGENET_NAMES = ("tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark")
CUB2SKETCHES = ("cubs_cropped", "stanford_cars_cropped", "flowers", "wikiart", "sketches")


def pattern(h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic HxWx3 uint8 image: smooth gradients (JPEG-friendly, no wrap-around edges) plus a
    seed-dependent offset in 0..63, so images of different seeds differ."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 191 // max(w - 1, 1), y * 191 // max(h - 1, 1), (x + y) * 95 // max(h + w - 2, 1)],
                    axis=-1)
    return (base + (seed * 37) % 64).astype(np.uint8)


def _save(path: Path, image: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt)


# ---------------------------------------------------------------------------------------------- CIFAR-100
class _Py2Pickler(pickle._Pickler):
    """Pickles as the official release was written (Python 2 cPickle, protocol 2): str as BINSTRING (py2 str
    is bytes, so numpy's dtype arguments arrive as bytes too) and numpy's old module path numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None)
        module = "numpy.core.multiarray" if module == "numpy._core.multiarray" else module
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_records(per_class: int, seed: int) -> dict[bytes, object]:
    """One official split pickle's dict: b'data' N x 3072 uint8 channel-planar (R, G, B planes of 32x32),
    fine/coarse labels as lists, file names, shuffled like the real files."""
    rng = np.random.RandomState(seed)
    fine = np.repeat(np.arange(100), per_class)[rng.permutation(100 * per_class)]
    images = np.stack([pattern(32, 32, 1000 * seed + i) for i in range(len(fine))])
    return {
        b"batch_label": b"training batch 1 of 1" if seed == 0 else b"testing batch 1 of 1",
        b"filenames": [f"{CIFAR_FINE[f]}_s_{i:06d}.png".encode() for i, f in enumerate(fine)],
        b"fine_labels": [int(f) for f in fine],
        b"coarse_labels": [CIFAR_FINE_TO_COARSE[f] for f in fine],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(fine), 3072).copy(),
    }


def cifar_image(split_dict: dict, i: int) -> np.ndarray:
    """The HxWx3 image of record i of a pickle dict (the official decoding, independent of data_prep)."""
    return split_dict[b"data"][i].reshape(3, 32, 32).transpose(1, 2, 0)


def write_cifar100_tarball(tmp, per_class_train: int = 2, per_class_test: int = 1,
                           wrong_coarse: str | None = None, extracted: bool = False) -> Path:
    """`<tmp>/cifar100/cifar-100-python.tar.gz` (or the extracted `cifar-100-python/` folder) with the
    official members train, test, meta (Python-2 style protocol-2 pickles with bytes keys). `wrong_coarse`
    names a fine class whose first train record gets a wrong coarse label. Returns `<tmp>/cifar100`."""
    root = Path(tmp) / "cifar100"
    root.mkdir(parents=True, exist_ok=True)
    train, test = cifar_records(per_class_train, 0), cifar_records(per_class_test, 1)
    if wrong_coarse is not None:
        f = CIFAR_FINE.index(wrong_coarse)
        i = train[b"fine_labels"].index(f)
        train[b"coarse_labels"][i] = (CIFAR_FINE_TO_COARSE[f] + 1) % 20
    meta = {b"fine_label_names": [n.encode() for n in CIFAR_FINE],
            b"coarse_label_names": [n.encode() for n in CIFAR_COARSE]}
    members = {name: py2_pickle(obj) for name, obj in (("train", train), ("test", test), ("meta", meta))}
    if extracted:
        for name, data in members.items():
            (root / "cifar-100-python").mkdir(exist_ok=True)
            (root / "cifar-100-python" / name).write_bytes(data)
        return root
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, data in (("file.txt~", b""), *members.items()):
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


def read_cifar_fixture(root: Path, split: str) -> dict:
    """The fixture's own pickle for `split` (tests compare the reader against it)."""
    with tarfile.open(Path(root) / "cifar-100-python.tar.gz") as tar:
        return pickle.loads(tar.extractfile(f"cifar-100-python/{split}").read(), encoding="bytes")


# ---------------------------------------------------------------------------------------------- ImageNet
def write_imagenet_tree(tmp, val: str = "flat", labels: str = "csv", per_class: int = 2,
                        val_per_class: int = 2) -> Path:
    """ILSVRC-2012 layout under `<tmp>/imagenet`: train/<wnid>/<wnid>_<k>.JPEG and val/ either flat
    (ILSVRC2012_val_%08d.JPEG, labels in LOC_val_solution.csv (labels="csv") or val_labels.txt with
    "<file> <wnid>" lines (labels="txt")) or in class folders (val="folders"). Val images cycle through the
    classes in reverse so the label file matters. Also writes LOC_synset_mapping.txt."""
    root = Path(tmp) / "imagenet"
    for c, wnid in enumerate(IMAGENET_WNIDS):
        for k in range(per_class):
            _save(root / "train" / wnid / f"{wnid}_{k + 1}.JPEG", pattern(12 + k, 16 + c, 10 * c + k), "JPEG")
    rows = []
    for i in range(val_per_class * len(IMAGENET_WNIDS)):
        wnid = IMAGENET_WNIDS[::-1][i % len(IMAGENET_WNIDS)]
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        folder = root / "val" / wnid if val == "folders" else root / "val"
        _save(folder / name, pattern(14, 10 + i, 500 + i), "JPEG")
        rows.append((name, wnid))
    if val == "flat" and labels == "csv":
        with open(root / "LOC_val_solution.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["ImageId", "PredictionString"])
            for name, wnid in reversed(rows):
                out.writerow([name.removesuffix(".JPEG"), f"{wnid} 1 2 10 12 {wnid} 0 0 5 5 "])
    elif val == "flat":
        (root / "val_labels.txt").write_text("".join(f"{n} {w}\n" for n, w in rows))
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(IMAGENET_WNIDS, IMAGENET_NAMES, strict=True)))
    return root


# ---------------------------------------------------------------------------------------------- image folder
def write_image_folder(tmp, corrupt: bool = False, layout: str = "split", classes=("cat", "dog", "fish"),
                       per_class: int = 3, name: str = "image_folder") -> Path:
    """`<tmp>/<name>/{train,test}/<class>/*.png` (layout="split", test gets per_class - 1 images) or
    `<tmp>/<name>/<class>/*.png` (layout="flat"); sizes vary per image. Image k of class c in split s is
    `pattern(8 + k, 9 + c, seed)` with seed = 100 * split_index + 10 * c + k. A stray notes.txt and a hidden
    file sit in each class folder (ignored by the reader); corrupt=True adds CORRUPT_FILES to the first
    train class: a truncated JPEG, a zero-byte file and random bytes named .png."""
    root = Path(tmp) / name
    splits = (("train", per_class), ("test", per_class - 1)) if layout == "split" else (("", per_class),)
    for s, (split, count) in enumerate(splits):
        for c, cls in enumerate(classes):
            folder = root / split / cls if split else root / cls
            for k in range(count):
                _save(folder / f"img_{k:03d}.png", pattern(8 + k, 9 + c, 100 * s + 10 * c + k))
            (folder / "notes.txt").write_text("not an image\n")
            (folder / ".hidden.png").write_bytes(b"")
    if corrupt:
        folder = root / "train" / classes[0] if layout == "split" else root / classes[0]
        buf = io.BytesIO()
        Image.fromarray(pattern(64, 64, 7)).save(buf, format="JPEG")
        (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "garbage.png").write_bytes(np.random.RandomState(0).bytes(300))
    return root


def write_cub2sketches(tmp, classes_per_dataset: int = 2, per_class: int = 2) -> Path:
    """`<tmp>/cub2sketches/<dataset>/{train,test}/<class>/*.png` for the five official dataset folders."""
    root = Path(tmp) / "cub2sketches"
    for dataset in CUB2SKETCHES:
        classes = [f"{c + 1:03d}.{dataset}_class_{c}" for c in range(classes_per_dataset)]
        write_image_folder(root, classes=classes, per_class=per_class, name=dataset)
    return root


# ---------------------------------------------------------------------------------------------- IDX
def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    """One IDX file (gzip if the name ends in .gz): big-endian magic, big-endian uint32 dims, uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def fashion_mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8), (np.arange(n) % 10).astype(np.uint8)


def write_idx_fashion_mnist(tmp, n_train: int = 30, n_test: int = 20) -> Path:
    """`<tmp>/fashion-mnist/` with the four official .gz IDX files; labels cycle 0..9, pixels from
    fashion_mnist_arrays(n, seed 0 train / 1 test)."""
    root = Path(tmp) / "fashion-mnist"
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = fashion_mnist_arrays(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
    return root


# ---------------------------------------------------------------------------------------------- miniImageNet
def write_miniimagenet(tmp, classes_per_split=(3, 2, 2), per_class: int = 4) -> Path:
    """`<tmp>/miniimagenet/images/<wnid><index:08d>.jpg` plus train/val/test.csv (`filename,label`), classes
    disjoint across the csv files as in the Ravi & Larochelle split."""
    root = Path(tmp) / "miniimagenet"
    wnid = 1000000
    for split, n_classes in zip(("train", "val", "test"), classes_per_split, strict=True):
        rows = []
        for _ in range(n_classes):
            wnid += 7
            for k in range(per_class):
                name = f"n{wnid:08d}{k + 1:08d}.jpg"
                _save(root / "images" / name, pattern(10, 12, wnid + k), "JPEG")
                rows.append((name, f"n{wnid:08d}"))
        with open(root / f"{split}.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["filename", "label"])
            out.writerows(rows)
    return root
