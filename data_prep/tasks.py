"""Task splits: which original classes form each task of a continual-learning benchmark, and the label remap
class_ids[j] -> j that every method and the evaluation use. Saved as tasks.json next to the shards.

Kinds (split_tasks):
- group: one task per group of `source.groups`: the 20 superclass tasks of Split-CIFAR-100 (seed 004_
  §4; CPG/NWS convention: superclasses alphabetical, labels 0-4 by alphabetical fine name) and the
  dataset-per-task CUB-to-Sketches (paper order, i.e. the order the source lists its datasets).
- blocks: consecutive blocks of k classes in class-id order (CL-with-DST's 5/10/20-task CIFAR-100,
  seed 003_).
- random: RandomState(seed).permutation(num_classes), then blocks (SupSup's RandSplitCIFAR100, seed 002_);
  labels follow the permutation order inside a task.
- explicit: lists of class names or ids from the config, each optionally named.
- all: one task with every class (the pool pretraining set).
- permuted: a task family (SupSup's PermutedMNIST, seed 002_): `count` tasks, each with every class of the source
  and its own pixel permutation, seeded `seed + t` as SupSup seeds task t (so task 0 is permuted too, not the
  identity).
- rotated: a task family (SupSup's RotatingMNIST, seed 002_): `count` tasks with every class, each rotated by its
  angle: the given `angles`, else t * max_angle / count (max_angle 360 as SupSup's i * (360 // num_tasks), here
  without the integer division).

A family task carries a `transform` record (data_prep.task_transform) that the loaders apply on the fly; its
images are the source's, stored once (data_prep.prepare). tasks.json files written before families existed have
no such field and load as they did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.task_transform import check_transform, same_effect
from data_prep.types import Source, Split
from nws.io import atomic_write_json, read_json

KINDS = ("group", "blocks", "random", "explicit", "all", "permuted", "rotated")
FAMILIES = ("permuted", "rotated")  # every task has every class; tasks differ by their transform
DEFAULT_MAX_ANGLE = 360.0
# order=None for the group kind: the paper's task order per source (alphabetical superclasses for CIFAR-100);
# every other source uses its own order (first seen by ascending class id).
DEFAULT_GROUP_ORDER = {"cifar100": "alphabetical"}
TASKS_VERSION = 1
# tasks.json of a family (tasks with a transform) is version 2: code from before families refuses it instead of
# reading every task as the untransformed source; files without transforms stay version 1, byte for byte
FAMILY_TASKS_VERSION = 2


@dataclass
class Task:
    """One task: its classes as original ids and names; label remap class_ids[j] -> j (0..v-1); for a task of a
    family, the pixel transform its loaders apply (data_prep.task_transform), else None."""

    name: str
    class_names: list[str]
    class_ids: list[int]
    transform: dict | None = None
    _index: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.class_ids = [int(c) for c in self.class_ids]
        self.class_names = [str(n) for n in self.class_names]
        if not self.name:
            raise ValueError("a task needs a non-empty name")
        if not self.class_ids:
            raise ValueError(f"task {self.name!r} has no classes")
        if len(self.class_ids) != len(self.class_names):
            raise ValueError(f"task {self.name!r}: {len(self.class_ids)} class ids but "
                             f"{len(self.class_names)} class names")
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError(f"task {self.name!r}: a class appears twice in {self.class_ids}")
        if self.transform is not None:
            self.transform = check_transform(self.transform, f"task {self.name!r}: transform")
        self._index = {c: j for j, c in enumerate(self.class_ids)}

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def remap(self, original_label: int) -> int:
        """The task label (0..v-1) of an original class id."""
        try:
            return self._index[int(original_label)]
        except KeyError:
            raise ValueError(f"class {original_label} is not in task {self.name!r} "
                             f"(classes {self.class_ids})") from None

    def remap_labels(self, original_labels: np.ndarray) -> np.ndarray:
        """Vectorised remap (int64); every label must belong to the task."""
        lut = np.full(max(self.class_ids) + 1, -1, dtype=np.int64)
        lut[self.class_ids] = np.arange(self.num_classes)
        labels = np.asarray(original_labels, dtype=np.int64)
        out = lut[np.clip(labels, 0, len(lut) - 1)]
        bad = (labels < 0) | (labels >= len(lut)) | (out < 0)
        if bad.any():
            raise ValueError(f"class {int(labels[bad][0])} is not in task {self.name!r}")
        return out

    def to_dict(self) -> dict:
        """The tasks.json entry; `transform` only when there is one, so a task of another kind writes (and hashes
        into its unit's config hash) what it did before families existed."""
        d = {"name": self.name, "class_names": list(self.class_names), "class_ids": list(self.class_ids)}
        if self.transform is not None:
            d["transform"] = dict(self.transform)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        missing = {"name", "class_names", "class_ids"} - set(d)
        if missing:
            raise ValueError(f"task entry {d!r} lacks keys {sorted(missing)}")
        stray = set(d) - {"name", "class_names", "class_ids", "transform"}
        if stray:
            raise ValueError(f"task entry {d.get('name')!r} has unknown keys {sorted(stray)}")
        return cls(name=d["name"], class_names=list(d["class_names"]), class_ids=list(d["class_ids"]),
                   transform=d.get("transform"))


def split_tasks(source: Source, kind: str, *, classes_per_task: int | None = None,
                num_tasks: int | None = None, seed: int = 0, order: str | None = None,
                explicit: list | None = None, name: str | None = None, count: int | None = None,
                angles: list[float] | None = None, max_angle: float | None = None) -> list[Task]:
    """Tasks of `source` for split `kind` (see the module docstring). Options that do not apply to the kind
    must be left unset (seed is only read by `random` and `permuted`). Task names: the group name, `name` for
    `all` (default "all"), the given names for `explicit`, else task{t:02d}."""
    if kind not in KINDS:
        raise ValueError(f"unknown task split kind {kind!r}; known kinds: {', '.join(KINDS)}")
    given = {"classes_per_task": classes_per_task, "num_tasks": num_tasks, "order": order,
             "explicit": explicit, "name": name, "count": count, "angles": angles, "max_angle": max_angle}
    allowed = {"group": {"order"}, "blocks": {"classes_per_task", "num_tasks"},
               "random": {"classes_per_task", "num_tasks"}, "explicit": {"explicit"}, "all": {"name"},
               "permuted": {"count"}, "rotated": {"count", "angles", "max_angle"}}[kind]
    stray = sorted(k for k, v in given.items() if v is not None and k not in allowed)
    if stray:
        raise ValueError(f"task split {kind!r} does not take {stray}; it takes {sorted(allowed)}")
    n = len(source.classes)
    if kind == "group":
        tasks = _group_tasks(source, order or DEFAULT_GROUP_ORDER.get(source.name, "source"))
    elif kind == "blocks":
        tasks = _blocks(source, list(range(n)), classes_per_task, num_tasks)
    elif kind == "random":
        permuted = np.random.RandomState(seed).permutation(n).tolist()
        tasks = _blocks(source, permuted, classes_per_task, num_tasks)
    elif kind == "explicit":
        tasks = _explicit(source, explicit)
    elif kind == "permuted":
        tasks = _family(source, [{"kind": "permute", "seed": seed + t} for t in range(_count(count))])
    elif kind == "rotated":
        tasks = _family(source, [{"kind": "rotate", "degrees": a} for a in rotation_angles(count, angles, max_angle)])
    else:
        tasks = [Task(name or "all", list(source.classes), list(range(n)))]
    check_tasks(tasks)
    return tasks


def _count(count: int | None) -> int:
    if count is None or isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"a task family needs count >= 1 (the number of tasks), got {count!r}")
    return count


def rotation_angles(count: int | None, angles: list[float] | None, max_angle: float | None) -> list[float]:
    """The rotated family's angles: `angles` as given (count, if given too, must be their number), else count
    angles evenly spaced over [0, max_angle) (default 360: SupSup's RotatingMNIST)."""
    if angles is not None:
        if max_angle is not None:
            raise ValueError("rotated tasks take angles or max_angle, not both")
        if not angles or (count is not None and count != len(angles)):
            raise ValueError(f"rotated tasks: count {count} but {len(angles or [])} angles {angles}")
        return [float(a) for a in angles]
    limit = DEFAULT_MAX_ANGLE if max_angle is None else float(max_angle)
    if not 0 < limit <= 360:
        raise ValueError(f"rotated tasks: max_angle must lie in (0, 360], got {max_angle}")
    n = _count(count)
    return [t * limit / n for t in range(n)]


def _family(source: Source, transforms: list[dict]) -> list[Task]:
    ids = list(range(len(source.classes)))
    return [Task(f"task{t:02d}", list(source.classes), ids, transform=tr) for t, tr in enumerate(transforms)]


def _group_tasks(source: Source, order: str) -> list[Task]:
    """One task per group. order="alphabetical": groups sorted by name, classes by name inside a task;
    order="source": groups in first-seen order over ascending class ids, classes by id inside a task."""
    if not source.groups:
        raise ValueError(f"source {source.name!r} defines no class groups; use blocks, random or explicit")
    ungrouped = [source.classes[c] for c in range(len(source.classes)) if c not in source.groups]
    if ungrouped:
        raise ValueError(f"source {source.name!r}: classes without a group: {ungrouped[:5]}")
    members: dict[str, list[int]] = {}
    for c in sorted(source.groups):
        members.setdefault(source.groups[c], []).append(c)
    if order == "alphabetical":
        groups = sorted(members)
        members = {g: sorted(members[g], key=lambda c: source.classes[c]) for g in groups}
    elif order != "source":
        raise ValueError(f"group order {order!r}: expected 'alphabetical' or 'source'")
    return [Task(g, [source.classes[c] for c in ids], ids) for g, ids in members.items()]


def _blocks(source: Source, ids: list[int], classes_per_task: int | None, num_tasks: int | None
            ) -> list[Task]:
    n = len(ids)
    if (classes_per_task is None) == (num_tasks is None):
        raise ValueError("give exactly one of classes_per_task and num_tasks")
    parts = classes_per_task if classes_per_task is not None else num_tasks
    if parts < 1 or n % parts or n == 0:
        what = f"{num_tasks} tasks" if classes_per_task is None else f"{classes_per_task} classes per task"
        raise ValueError(f"source {source.name!r}: {n} classes cannot be split into {what} of equal size")
    k = classes_per_task if classes_per_task is not None else n // num_tasks
    return [Task(f"task{t:02d}", [source.classes[c] for c in ids[t * k:(t + 1) * k]], ids[t * k:(t + 1) * k])
            for t in range(n // k)]


def _explicit(source: Source, explicit: list | None) -> list[Task]:
    """Each entry is a list of class names/ids, or {"name": ..., "classes": [...]}. A string is a class name
    (so "3" is the digits class named "3"); an int is a class id."""
    if not explicit:
        raise ValueError("task split 'explicit' needs explicit=[[class, ...], ...]")
    by_name = {c: i for i, c in enumerate(source.classes)}
    tasks = []
    for t, entry in enumerate(explicit):
        task_name, items = f"task{t:02d}", entry
        if isinstance(entry, dict):
            if "classes" not in entry or set(entry) - {"name", "classes"}:
                raise ValueError(f"explicit task {t}: expected {{'name': ..., 'classes': [...]}}, "
                                 f"got {entry!r}")
            task_name, items = entry.get("name") or task_name, entry["classes"]
        ids = []
        for item in items:
            if isinstance(item, str):
                if item not in by_name:
                    raise ValueError(f"explicit task {task_name!r}: unknown class name {item!r} in source "
                                     f"{source.name!r}")
                ids.append(by_name[item])
            elif isinstance(item, int | np.integer) and not isinstance(item, bool):
                if not 0 <= item < len(source.classes):
                    raise ValueError(f"explicit task {task_name!r}: class id {item} out of range "
                                     f"0..{len(source.classes) - 1}")
                ids.append(int(item))
            else:
                raise ValueError(f"explicit task {task_name!r}: {item!r} is neither a class name nor an id")
        tasks.append(Task(task_name, [source.classes[c] for c in ids], ids))
    return tasks


def check_tasks(tasks: list[Task]) -> None:
    """Task names are unique and no class is in two tasks (of one split kind: the `all` set is separate); the
    tasks of a family share their classes instead, and no two of them transform the images alike."""
    seen_names, owner = set(), {}
    family = [t for t in tasks if t.transform is not None]
    if family and len(family) != len(tasks):
        raise ValueError(f"tasks {[t.name for t in family]} have a transform and others do not: a family's tasks "
                         "all have one")
    for i, task in enumerate(tasks):
        if task.name in seen_names:
            raise ValueError(f"task name {task.name!r} used twice")
        seen_names.add(task.name)
        if family:
            twin = next((o for o in tasks[:i] if same_effect(o.transform, task.transform)), None)
            if twin is not None:
                raise ValueError(f"tasks {twin.name!r} and {task.name!r} transform the images alike "
                                 f"({twin.transform} and {task.transform}): they would be one task twice")
            continue
        for c, cname in zip(task.class_ids, task.class_names, strict=True):
            if c in owner:
                raise ValueError(f"class {cname!r} (id {c}) is in two tasks: {owner[c]!r} and {task.name!r}")
            owner[c] = task.name


def task_records(split: Split, task: Task) -> np.ndarray:
    """Indices (sorted, int64) of the records of `split` in `task`, from the labels alone: no image of any
    other task is read."""
    return np.flatnonzero(np.isin(split.labels, task.class_ids)).astype(np.int64)


def save_tasks(path: str | Path, tasks: list[Task], meta: dict | None = None) -> Path:
    """tasks.json (atomic): {"version", "tasks": [Task.to_dict()], "meta": {...}}."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: task names must be unique, got {names}")
    version = FAMILY_TASKS_VERSION if any(t.transform is not None for t in tasks) else TASKS_VERSION
    return atomic_write_json(path, {"version": version, "tasks": [t.to_dict() for t in tasks],
                                    "meta": dict(meta or {})})


def load_tasks(path: str | Path) -> tuple[list[Task], dict]:
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'tasks' list")
    if doc.get("version") not in (TASKS_VERSION, FAMILY_TASKS_VERSION):
        raise ValueError(f"{path}: tasks.json version {doc.get('version')!r}, expected {TASKS_VERSION} or "
                         f"{FAMILY_TASKS_VERSION}")
    try:
        tasks = [Task.from_dict(d) for d in doc["tasks"]]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: task names must be unique, got {names}")
    return tasks, doc.get("meta", {})
