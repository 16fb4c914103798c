"""Storage benchmark (issue 9): bytes per task of every index coding, next to the information limits.

On the indices of real task models, read back from their stored artifacts (each task decoded along its chain):
- the full-width ResNet-18 NWS chain of bench.storage_models (512-kernel pools, 5-way NWS head, CIFAR-shaped tasks);
- Fashion-MNIST runs of the incremental stage (`--fmnist NAME=<out>/nws`, one per lever setting).
The reference of task t is task t-1, of task 0 the pretrained base model's indices (the chain's `base/`; a run's
shared `base_indices.bin`, else `--fmnist-base PRETRAIN/base_model` for runs stored before it was shared), as the
incremental stage codes them; layers whose kernel count differs from the reference's (task 0's head against the
pretraining head) are coded without it, and the context columns count them at their order-0 cost.
For every task, side by side in one run: int16 + lzma (the official code, notes/algorithms.md §1.5), `packed`,
`entropy` (order 0 per layer), `delta` and `near` against the reference, the codec default (`smallest`, written to
a file and measured there, plus the task's stored BatchNorm/state file), the bits a packed code needs when each
layer's pool is cut to the kernels it uses (the storage side of the "smaller pools" lever), ideal code lengths of
adaptive models (order 0, and conditioned on the previous task's index at the same position), and the limits:
the empirical order-0 entropy and the conditional entropy given the previous task's indices. The lever table gives
each Fashion-MNIST run's final average accuracy (models rebuilt from the stored files) and its stored index bytes.

    python -m bench.storage --resnet runs/storage_resnet18 --fmnist packed=DIR keep_margin=DIR ...
        [--fmnist-base PRETRAIN/base_model] [--write]
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
from bench.storage_models import BASE
from nws import codec
from nws.artifact import INDICES, STATE, read_manifest
from nws.io import load_tensors, read_json

BASE_INDICES = "base_indices.bin"  # the incremental stage's shared copy (incremental.methods.nws)

SECTION = "## Storage (bench/storage.py)"
MIB = 2**20


@dataclass
class Task:
    name: str
    idx: dict[str, torch.Tensor]
    sizes: dict[str, int]
    state_bytes: int  # the stored state.safetensors (BatchNorm, and the head when it is a float layer)


def read_base(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """(indices, stored bytes) of a base model: an artifact folder (its indices.bin) or an index blob file."""
    blob_path = path / INDICES if path.is_dir() else path
    if path.is_dir():
        read_manifest(path)  # intact
    return codec.decode(blob_path.read_bytes()), blob_path.stat().st_size


def read_chain(folders: list[Path], pools: dict[str, torch.Tensor], base: dict[str, torch.Tensor] | None = None
               ) -> list[Task]:
    """The tasks stored in `folders` (in order), each decoded against the one before it (task 0 against `base`)
    when its codec needs it."""
    tasks, prev = [], base
    for folder in folders:
        manifest = read_manifest(folder)
        blob = (folder / INDICES).read_bytes()
        idx = codec.decode(blob, prev=prev if manifest["codec"] in codec.NEEDS_PREV else None, pools=pools)
        tasks.append(Task(folder.name, idx, manifest["pool_sizes"], (folder / STATE).stat().st_size))
        prev = idx
    return tasks


def task_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("task"))


def covered(idx: dict, ref: dict) -> list[str]:
    """The layers of `idx` the codec codes against `ref`: those it holds with as many kernels."""
    return [k for k in idx if k in ref and ref[k].numel() == idx[k].numel()]


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


def measure(task: Task, ref: dict[str, torch.Tensor] | None, pools: dict[str, torch.Tensor], scratch: Path) -> dict:
    """One task's row; `ref` the indices it is coded against (the previous task's, the base model's for task 0)."""
    idx, sizes = task.idx, task.sizes
    flat = np.concatenate([v.numpy() for v in idx.values()]).astype("<i2")
    row = {"kernels": int(flat.size), "lzma": len(lzma.compress(flat.tobytes())),
           "packed": len(codec.encode(idx, sizes, "packed")), "entropy": len(codec.encode(idx, sizes, "entropy")),
           "used": used_alphabet_bits(idx, sizes) / 8, "h0": codec.empirical_entropy_bits(idx) / 8,
           "kt0": sum(adaptive_bits(v.numpy(), None, sizes[k]) for k, v in idx.items()) / 8}
    if ref is not None:
        both = covered(idx, ref)
        alone = {k: v for k, v in idx.items() if k not in both}
        row["changed"] = sum(int((idx[k] != ref[k]).sum()) for k in both) / max(sum(idx[k].numel() for k in both), 1)
        row["delta"] = len(codec.encode(idx, sizes, "delta", prev=ref))
        row["near"] = len(codec.encode(idx, sizes, "near", prev=ref, pools=pools))
        row["hcond"] = (codec.conditional_entropy_bits({k: idx[k] for k in both}, {k: ref[k] for k in both})
                        + codec.empirical_entropy_bits(alone)) / 8
        row["ktprev"] = sum(adaptive_bits(v.numpy(), ref[k].numpy() if k in both else None, sizes[k])
                            for k, v in idx.items()) / 8
    mode, blob = codec.smallest(idx, sizes, prev=ref, pools=pools)
    path = scratch / f"{task.name}_{INDICES}"
    path.write_bytes(blob)
    row["default_mode"], row["default"] = mode, path.stat().st_size
    row["state"] = task.state_bytes
    return row


READING = """Reading the tables: every byte count is a blob the codec wrote (KiB = 1024 bytes), except the columns
marked ideal or limit. "adaptive ... (ideal)" are code lengths of Krichevsky-Trofimov adaptive models (counts + 1/2,
nothing sent ahead; an adaptive arithmetic coder gets within a few bytes of them), one model per layer, or one per
reference index at the same kernel. "H0 limit" is the empirical order-0 entropy of each layer's indices, the floor of
every order-0 code that did not have to send its model; "H(cur|prev) limit" the empirical conditional entropy given the
reference's index at the same kernel, the floor of a code with one model per reference index (model not paid, for
512-kernel pools a 512 x 512 table per layer). The reference of task t > 0 is task t-1; of the first task the
pretrained base model's indices, which it started from (Algorithm 1, line 3), stored once for all tasks next to the
pools and counted in memory like them; its head (the pretraining classes) has another kernel count than the task's,
so the first task's head is coded alone (order 0, in the context columns too) and "changed" counts the other layers.
`near` uses another context, the pool itself (a changed kernel moves to a pool neighbour of its previous kernel, so
its rank among those neighbours is small), and sends its small model; on these tasks it stays within about 5-40% of
that unpaid floor and at about 50-65% of `delta`. "packed, used kernels only" is what cutting each layer's pool down
to the kernels the task uses would store (the storage side of the "smaller pools for low-KUR layers" lever): entropy
coding already spends nothing on unused kernels, so that lever has no bytes left to win. Without a reference the
layers use their pools almost uniformly (H0 close to log2 n), so no order-0 code gets far below `packed`: that is what
the base model's indices save on the first task. BN/state is the task's stored state.safetensors (BatchNorm weights,
biases and running statistics; the heads are NWS layers, in the indices)."""

FMNIST_RUNS = """The Fashion-MNIST runs: the shared data and pretrain set-up (`python -m pipeline data prepare
fashion_mnist --out DATA`, `python -m pipeline pretrain -c configs/fmnist.yaml --data DATA --out PRETRAIN
pretrain.epochs=1`), then per run `OMP_NUM_THREADS=1 python -m pipeline incremental -c configs/fmnist.yaml --method nws
--data DATA --pretrain PRETRAIN --out OUT incremental.track=false` plus `incremental.codec=packed` (the reference run)
or `incremental.options.nws.keep_margin=M` (default codec). The sparsify run used an option
`incremental.options.nws.sparsify=true` that was removed after this measurement, since it lost (nws.levers.sparsify
stays as a function). "same indices, default codec" re-codes each run's stored indices with the codec default, so bytes
compare at equal coding; training is deterministic, so the packed run's accuracy is also that of the default codec
without levers."""


COLUMNS = [("lzma", "int16+lzma (official)"), ("packed", "packed"), ("entropy", "entropy"),
           ("delta", "delta"), ("near", "near"), ("default", "default"), ("used", "packed, used kernels only"),
           ("kt0", "adaptive order 0 (ideal)"), ("ktprev", "adaptive, context prev (ideal)"),
           ("h0", "H0 limit"), ("hcond", "H(cur|prev) limit")]


def chain_table(title: str, rows: list[dict], names: list[str], shared: dict[str, int]) -> str:
    """The per-task table and its summary; `shared` the bytes stored once for all tasks (pools, base indices)."""
    unit = "KiB"
    head = "| task | kernels | changed | " + " | ".join(c[1] for c in COLUMNS) + " | BN/state | default + state |"
    lines = [f"**{title}** (bytes per task in {unit}; default = `smallest`, its mode in brackets; changed = share of "
             "kernels whose index differs from the reference's; MiB in the last column)", "",
             head, "|" + " --- |" * 3 + " ---: |" * (len(COLUMNS) + 2)]
    for name, r in zip(names, rows, strict=True):
        cells = [f"{r[k] / 1024:,.1f}" if k in r else "–" for k, _ in COLUMNS]
        cells[5] = f"{r['default'] / 1024:,.1f} ({r['default_mode']})"
        changed = f"{100 * r['changed']:.1f}%" if "changed" in r else "–"
        total = (r["default"] + r["state"]) / MIB
        lines.append(f"| {name} | {r['kernels']:,} | {changed} | " + " | ".join(cells)
                     + f" | {r['state'] / 1024:,.1f} | {total:.3f} |")
    per_task = [(r["default"] + r["state"]) / MIB for r in rows]
    bits = 8 * sum(r["default"] for r in rows) / sum(r["kernels"] for r in rows)
    first = "against the base model's indices" if "near" in rows[0] else "alone, no reference"
    later = f", later tasks at most {max(per_task[1:]):.3f} MiB" if len(rows) > 1 else ""
    stored_once = ", ".join(f"{k} {v / MIB:.3f} MiB" for k, v in shared.items())
    lines += ["", f"Default codec over the chain: every task stored in at most {max(per_task):.3f} MiB including BN "
              f"(the first task, coded {first}, {per_task[0]:.3f} MiB{later}); {bits:.2f} bits per kernel over all "
              f"tasks; mean per task including BN {sum(per_task) / len(rows):.3f} MiB (the paper's convention: all "
              f"task files / tasks). Stored once for all tasks and counted once: {stored_once}."]
    return "\n".join(lines)


def chain_rows(tasks: list[Task], pools, base: dict[str, torch.Tensor] | None) -> list[dict]:
    refs = [base, *(t.idx for t in tasks[:-1])]
    with tempfile.TemporaryDirectory() as tmp:
        return [measure(t, ref, pools, Path(tmp)) for t, ref in zip(tasks, refs, strict=True)]


def run_base(method_dir: Path, fallback: Path | None) -> tuple[dict[str, torch.Tensor] | None, int]:
    """A Fashion-MNIST run's base indices: its shared copy, else the given base model (runs stored before)."""
    if (method_dir / BASE_INDICES).is_file():
        return read_base(method_dir / BASE_INDICES)
    return read_base(fallback) if fallback is not None else (None, 0)


def lever_table(runs: dict[str, Path], fallback: Path | None) -> str:
    lines = ["| run (incremental.options.nws) | codec per task | final avg acc | Δ vs first run (points) | "
             "stored index bytes (all tasks) | bits/kernel | same indices, default codec | mean changed vs previous "
             "task |", "|" + " --- |" * 2 + " ---: |" * 6]
    base_acc = None
    for name, method_dir in runs.items():
        m = read_json(method_dir / "metrics.json")
        pools = load_tensors(method_dir / "pools.safetensors")
        base, _ = run_base(method_dir, fallback)
        tasks = read_chain([method_dir / d for d in m["task_dirs"]], pools, base)
        refs = [base, *(t.idx for t in tasks[:-1])]
        recoded = sum(len(codec.smallest(t.idx, t.sizes, prev=ref, pools=pools)[1])
                      for t, ref in zip(tasks, refs, strict=True))
        moved = [sum(int((b.idx[k] != a.idx[k]).sum()) for k in both) / sum(b.idx[k].numel() for k in both)
                 for a, b in zip(tasks[:-1], tasks[1:], strict=True) if (both := covered(b.idx, a.idx))]
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
    p.add_argument("--fmnist-base", type=Path, help="PRETRAIN/base_model, for runs without base_indices.bin")
    p.add_argument("--write", action="store_true")
    a = p.parse_args(argv)
    parts = []
    if a.resnet:
        chain = read_json(a.resnet / "chain.json")
        pools = load_tensors(a.resnet / "pools.safetensors")
        base, base_bytes = read_base(a.resnet / BASE)
        tasks = read_chain([a.resnet / t["folder"] for t in chain["tasks"]], pools, base)
        names = [f"{t['name']} (acc {100 * t['test_acc']:.1f}%)" for t in chain["tasks"]]
        shared = {"pools": (a.resnet / "pools.safetensors").stat().st_size, "base model's indices": base_bytes}
        parts.append(chain_table(f"Full-width ResNet-18, 512-kernel pools, 5-way NWS head ({chain['task_steps']} "
                                 f"search steps per task, beta {chain['beta']})", chain_rows(tasks, pools, base),
                                 names, shared))
        parts.append(f"Made by `python -m bench.storage_models --out {a.resnet} --pretrain-steps "
                     f"{chain['pretrain_steps']} --task-steps {chain['task_steps']}`: a plain ResNet-18 trained "
                     f"{chain['pretrain_steps']} SGD steps (batch 64) on all of Fashion-MNIST resized to 32x32x3 (test "
                     f"accuracy {100 * chain['pretrain_acc']:.1f}%), pools by k-means over its own kernels (the base "
                     f"model on those pools, stored in `{BASE}/`: {100 * chain['base_acc']:.1f}%), then the task "
                     "chain, each task starting from the previous one's stored indices (task 0 from the base model) "
                     f"and trained {chain['task_steps']} search steps (batch 32, lr 0.01, momentum 0.9); accuracies "
                     "are on the test split, of the models rebuilt from the stored files. The tasks are stored "
                     "`packed` there; this benchmark re-codes their indices, each against its reference.")
    runs = dict(item.rsplit("=", 1) for item in a.fmnist)
    runs = {k: Path(v) for k, v in runs.items()}
    if runs:
        first = next(iter(runs.values()))
        m = read_json(first / "metrics.json")
        pools = load_tensors(first / "pools.safetensors")
        base, base_bytes = run_base(first, a.fmnist_base)
        tasks = read_chain([first / d for d in m["task_dirs"]], pools, base)
        shared = {"pools": (first / "pools.safetensors").stat().st_size}
        if base is not None:
            shared["base model's indices"] = base_bytes
        parts.append(chain_table(f"Fashion-MNIST run `{next(iter(runs))}` (width 0.25, 64-kernel pools, 2-way NWS "
                                 "heads)", chain_rows(tasks, pools, base), [t.name for t in tasks], shared))
        parts.append("**Levers on the Fashion-MNIST tasks** (each run trained and stored by the incremental stage "
                     "before task 0 was coded against the base model, so its stored bytes and codecs are those of "
                     "then; \"same indices, default codec\" re-codes them as the stage now does, task 0 against the "
                     "base model's indices; accuracy of the models rebuilt from the stored files)\n\n"
                     + lever_table(runs, a.fmnist_base))
        parts.append(FMNIST_RUNS)
    body = "\n\n".join(parts) + "\n\n" + READING + f"\n\nMachine: {cpu_name()}."
    print(body)
    if a.write:
        cmd = "python -m bench.storage " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
        write_section(SECTION, cmd.replace(" --write", "") + " --write", body)


if __name__ == "__main__":
    main()
