"""Storage benchmark (issue 9): bytes per task of every index coding, next to the information limits.

On the indices of real task models, read back from their stored artifacts (each task decoded along its chain):
- the full-width ResNet-18 NWS chain of bench.storage_models (512-kernel pools, 5-way NWS head, CIFAR-shaped tasks);
- Fashion-MNIST runs of the incremental stage (`--fmnist NAME=<out>/nws`, one per lever setting).
For every task, side by side in one run: int16 + lzma (the official code, notes/algorithms.md §1.5), `packed`,
`entropy` (order 0 per layer), `delta` and `near` against the previous task, the codec default (`smallest`, written to
a file and measured there, plus the task's stored BatchNorm/state file), the bits a packed code needs when each
layer's pool is cut to the kernels it uses (the storage side of the "smaller pools" lever), ideal code lengths of
adaptive models (order 0, and conditioned on the previous task's index at the same position), and the limits:
the empirical order-0 entropy and the conditional entropy given the previous task's indices. The lever table gives
each Fashion-MNIST run's final average accuracy (models rebuilt from the stored files) and its stored index bytes.

    python -m bench.storage --resnet runs/storage_resnet18 --fmnist packed=DIR keep_margin=DIR ... [--write]
"""

from __future__ import annotations

import argparse
import lzma
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import cpu_name, write_section
from nws import codec
from nws.artifact import INDICES, STATE, read_manifest
from nws.io import load_tensors, read_json

SECTION = "## Storage (bench/storage.py)"
MIB = 2**20


@dataclass
class Task:
    name: str
    idx: dict[str, torch.Tensor]
    sizes: dict[str, int]
    state_bytes: int  # the stored state.safetensors (BatchNorm, and the head when it is a float layer)


def read_chain(folders: list[Path], pools: dict[str, torch.Tensor]) -> list[Task]:
    """The tasks stored in `folders` (in order), each decoded against the one before it when its codec needs it."""
    tasks, prev = [], None
    for folder in folders:
        manifest = read_manifest(folder)
        blob = (folder / INDICES).read_bytes()
        idx = codec.decode(blob, prev=prev if manifest["codec"] in codec.NEEDS_PREV else None, pools=pools)
        tasks.append(Task(folder.name, idx, manifest["pool_sizes"], (folder / STATE).stat().st_size))
        prev = idx
    return tasks


def task_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("task"))


def same_layout(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k].numel() == b[k].numel() for k in a)


def adaptive_bits(x: np.ndarray, context: np.ndarray | None, n: int) -> float:
    """Ideal code length of x under a Krichevsky-Trofimov adaptive model (counts + 1/2, nothing sent ahead), one
    model per context value (or one for the layer): what an adaptive arithmetic coder reaches within a few bytes."""
    if x.size == 0:
        return 0.0
    ctx = np.zeros_like(x) if context is None else context
    pair = ctx * n + x
    order = np.argsort(pair, kind="stable")
    _, first = np.unique(pair[order], return_index=True)
    seen_pair = np.arange(x.size) - np.repeat(first, np.diff(np.append(first, x.size)))
    order_c = np.argsort(ctx, kind="stable")
    _, first_c = np.unique(ctx[order_c], return_index=True)
    seen_ctx = np.arange(x.size) - np.repeat(first_c, np.diff(np.append(first_c, x.size)))
    return float(np.log2(seen_ctx + n / 2).sum() - np.log2(seen_pair + 0.5).sum())


def used_alphabet_bits(idx: dict[str, torch.Tensor], sizes: dict[str, int]) -> float:
    """A packed code over each layer's used kernels only: a used/unused bit per pool kernel, then ceil(log2 U)
    bits per index (U = used kernels = KUR × n): the most that cutting pools to their used kernels can save."""
    bits = 0.0
    for name, x in idx.items():
        used = int(torch.unique(x).numel())
        bits += sizes[name] + x.numel() * codec.packed_bits(max(used, 1))
    return bits


def measure(task: Task, prev: Task | None, pools: dict[str, torch.Tensor], scratch: Path) -> dict:
    idx, sizes = task.idx, task.sizes
    flat = np.concatenate([v.numpy() for v in idx.values()]).astype("<i2")
    row = {"kernels": int(flat.size), "lzma": len(lzma.compress(flat.tobytes())),
           "packed": len(codec.encode(idx, sizes, "packed")), "entropy": len(codec.encode(idx, sizes, "entropy")),
           "used": used_alphabet_bits(idx, sizes) / 8, "h0": codec.empirical_entropy_bits(idx) / 8,
           "kt0": sum(adaptive_bits(v.numpy(), None, sizes[k]) for k, v in idx.items()) / 8}
    ref = prev.idx if prev is not None and same_layout(prev.idx, idx) else None
    if ref is not None:
        row["changed"] = sum(int((idx[k] != ref[k]).sum()) for k in idx) / flat.size
        row["delta"] = len(codec.encode(idx, sizes, "delta", prev=ref))
        row["near"] = len(codec.encode(idx, sizes, "near", prev=ref, pools=pools))
        row["hcond"] = codec.conditional_entropy_bits(idx, ref) / 8
        row["ktprev"] = sum(adaptive_bits(v.numpy(), ref[k].numpy(), sizes[k]) for k, v in idx.items()) / 8
    mode, blob = codec.smallest(idx, sizes, prev=ref, pools=pools)
    path = scratch / f"{task.name}_{INDICES}"
    path.write_bytes(blob)
    row["default_mode"], row["default"] = mode, path.stat().st_size
    row["state"] = task.state_bytes
    return row


READING = """Reading the tables: every byte count is a blob the codec wrote (KiB = 1024 bytes), except the columns
marked ideal or limit. "adaptive ... (ideal)" are code lengths of Krichevsky-Trofimov adaptive models (counts + 1/2,
nothing sent ahead; an adaptive arithmetic coder gets within a few bytes of them), one model per layer, or one per
previous index at the same kernel. "H0 limit" is the empirical order-0 entropy of each layer's indices, the floor of
every order-0 code that did not have to send its model; "H(cur|prev) limit" the empirical conditional entropy given the
previous task's index at the same kernel, the floor of a code with one model per previous index (model not paid, for
512-kernel pools a 512 x 512 table per layer). `near` uses another context, the pool itself (a changed kernel moves to
a pool neighbour of its previous kernel, so its rank among those neighbours is small), and sends its small model; on
these tasks it stays within about 10-40% of that unpaid floor and at about 60% of `delta`. "packed, used kernels only"
is what cutting each layer's pool down to the kernels the task uses would store (the storage side of the "smaller pools
for low-KUR layers" lever): entropy coding already spends nothing on unused kernels, so that lever has no bytes left to
win. The first task of a chain has no previous task: its layers use their pools almost uniformly (H0 close to log2 n),
so no order-0 code gets far below `packed` there. BN/state is the task's stored state.safetensors (BatchNorm weights,
biases and running statistics; the heads are NWS layers, in the indices)."""

FMNIST_RUNS = """The Fashion-MNIST runs: the shared data and pretrain set-up (`python -m data_prep prepare fashion_mnist
--out DATA`, `python -m pretrain -c configs/fmnist.yaml --data DATA --out PRETRAIN pretrain.epochs=1`), then per run
`OMP_NUM_THREADS=1 python -m incremental -c configs/fmnist.yaml --method nws --data DATA --pretrain PRETRAIN --out OUT
incremental.track=false` plus `incremental.codec=packed` (the reference run) or `incremental.options.nws.keep_margin=M`
(default codec). The sparsify run used an option `incremental.options.nws.sparsify=true` that was removed after this
measurement, since it lost (nws.levers.sparsify stays as a function). "same indices, default codec" re-codes each
run's stored indices with the codec default, so bytes compare at equal coding; training is deterministic, so the
packed run's accuracy is also that of the default codec without levers."""

COLUMNS = [("lzma", "int16+lzma (official)"), ("packed", "packed"), ("entropy", "entropy"),
           ("delta", "delta"), ("near", "near"), ("default", "default"), ("used", "packed, used kernels only"),
           ("kt0", "adaptive order 0 (ideal)"), ("ktprev", "adaptive, context prev (ideal)"),
           ("h0", "H0 limit"), ("hcond", "H(cur|prev) limit")]


def chain_table(title: str, rows: list[dict], names: list[str]) -> str:
    unit = "KiB"
    head = "| task | kernels | changed | " + " | ".join(c[1] for c in COLUMNS) + " | BN/state | default + state |"
    lines = [f"**{title}** (bytes per task in {unit}; default = `smallest`, its mode in brackets; MiB in the last "
             "column)", "", head, "|" + " --- |" * 3 + " ---: |" * (len(COLUMNS) + 2)]
    for name, r in zip(names, rows, strict=True):
        cells = [f"{r[k] / 1024:,.1f}" if k in r else "–" for k, _ in COLUMNS]
        cells[5] = f"{r['default'] / 1024:,.1f} ({r['default_mode']})"
        changed = f"{100 * r['changed']:.1f}%" if "changed" in r else "–"
        total = (r["default"] + r["state"]) / MIB
        lines.append(f"| {name} | {r['kernels']:,} | {changed} | " + " | ".join(cells)
                     + f" | {r['state'] / 1024:,.1f} | {total:.3f} |")
    later = [r for r in rows if "near" in r]
    if later:
        bits = 8 * sum(r["default"] for r in later) / sum(r["kernels"] for r in later)
        mean = sum(r["default"] + r["state"] for r in rows) / len(rows) / MIB
        worst = max(r["default"] + r["state"] for r in later) / MIB
        lines += ["", f"Default codec over the chain: {bits:.2f} bits per kernel on the tasks after the first, each "
                  f"stored in at most {worst:.3f} MiB including BN; the first task (nothing to code against) "
                  f"{(rows[0]['default'] + rows[0]['state']) / MIB:.3f} MiB; mean per task including BN {mean:.3f} "
                  "MiB (the paper's convention: all task files / tasks)."]
    return "\n".join(lines)


def chain_rows(tasks: list[Task], pools) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return [measure(t, tasks[i - 1] if i else None, pools, Path(tmp)) for i, t in enumerate(tasks)]


def lever_table(runs: dict[str, Path]) -> str:
    lines = ["| run (incremental.options.nws) | codec per task | final avg acc | Δ vs first run (points) | "
             "stored index bytes (all tasks) | bits/kernel | same indices, default codec | mean changed vs previous "
             "task |", "|" + " --- |" * 2 + " ---: |" * 6]
    base_acc = None
    for name, method_dir in runs.items():
        m = read_json(method_dir / "metrics.json")
        tasks = read_chain([method_dir / d for d in m["task_dirs"]], load_tensors(method_dir / "pools.safetensors"))
        pools = load_tensors(method_dir / "pools.safetensors")
        recoded = sum(len(codec.smallest(b.idx, b.sizes, prev=a.idx if a is not None and same_layout(a.idx, b.idx)
                                         else None, pools=pools)[1]) for a, b in zip([None, *tasks[:-1]], tasks,
                                                                                     strict=True))
        moved = [sum(int((b.idx[k] != a.idx[k]).sum()) for k in b.idx) / sum(v.numel() for v in b.idx.values())
                 for a, b in zip(tasks[:-1], tasks[1:], strict=True) if same_layout(a.idx, b.idx)]
        acc = 100 * m["final_avg_acc"]
        base_acc = acc if base_acc is None else base_acc
        codecs = ", ".join(sorted(set(m["codec_per_task"]), key=m["codec_per_task"].index))
        share = f"{100 * np.mean(moved):.1f}%" if moved else "–"
        lines.append(f"| {name} | {codecs} | {acc:.2f} | {acc - base_acc:+.2f} | {m['memory_bytes']['indices']:,} "
                     f"| {m['bits_per_kernel']:.2f} | {recoded:,} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resnet", type=Path, help="output folder of bench.storage_models")
    p.add_argument("--fmnist", nargs="*", default=[], help="NAME=<incremental out>/nws, the first the reference")
    p.add_argument("--write", action="store_true")
    a = p.parse_args(argv)
    parts = []
    if a.resnet:
        chain = read_json(a.resnet / "chain.json")
        pools = load_tensors(a.resnet / "pools.safetensors")
        tasks = read_chain([a.resnet / t["folder"] for t in chain["tasks"]], pools)
        names = [f"{t['name']} (acc {100 * t['test_acc']:.1f}%)" for t in chain["tasks"]]
        parts.append(chain_table(f"Full-width ResNet-18, 512-kernel pools, 5-way NWS head ({chain['task_steps']} "
                                 f"search steps per task, beta {chain['beta']})", chain_rows(tasks, pools), names))
        parts.append(f"Made by `python -m bench.storage_models --out {a.resnet} --pretrain-steps "
                     f"{chain['pretrain_steps']} --task-steps {chain['task_steps']}`: a plain ResNet-18 trained "
                     f"{chain['pretrain_steps']} SGD steps (batch 64) on all of Fashion-MNIST resized to 32x32x3 (test "
                     f"accuracy {100 * chain['pretrain_acc']:.1f}%), pools by k-means over its own kernels (the base "
                     f"model on those pools: {100 * chain['base_acc']:.1f}%), then the task chain, each task starting "
                     "from the previous one's stored indices (task 0 from the base model) and trained "
                     f"{chain['task_steps']} search steps (batch 32, lr 0.01, momentum 0.9); accuracies are on the "
                     "test split, of the models rebuilt from the stored files.")
    runs = dict(item.rsplit("=", 1) for item in a.fmnist)
    runs = {k: Path(v) for k, v in runs.items()}
    if runs:
        first = next(iter(runs.values()))
        m = read_json(first / "metrics.json")
        tasks = read_chain([first / d for d in m["task_dirs"]], load_tensors(first / "pools.safetensors"))
        parts.append(chain_table(f"Fashion-MNIST run `{next(iter(runs))}` (width 0.25, 64-kernel pools, 2-way NWS "
                                 "heads)", chain_rows(tasks, load_tensors(first / "pools.safetensors")),
                                 [t.name for t in tasks]))
        parts.append("**Levers on the Fashion-MNIST tasks** (each run trained and stored by the incremental stage; "
                     "accuracy of the models rebuilt from the stored files)\n\n" + lever_table(runs))
        parts.append(FMNIST_RUNS)
    body = "\n\n".join(parts) + "\n\n" + READING + f"\n\nMachine: {cpu_name()}."
    print(body)
    if a.write:
        cmd = "python -m bench.storage " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
        write_section(SECTION, cmd.replace(" --write", "") + " --write", body)


if __name__ == "__main__":
    main()
