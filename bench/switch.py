"""Task-switch benchmark (issue 9): milliseconds to turn a stored task into a ready model, against loading a float
checkpoint of the same network.

Full-width ResNet-18 (official `nws` stem, 5-way head, 512-kernel pools), tasks of bench.storage_models. The pools
(shared by all tasks) and a plain network skeleton are in memory once. An NWS switch reads the task's index blob and
its BatchNorm file, decodes the indices (nws.codec, its checksum included), looks every kernel up in its pool into
the plain network's weights (K = D(C; M), seed 004_ §4.1) and loads the BatchNorm state. The reference reads the
whole float state dict of the same network from one safetensors file and loads it. Both end in the same plain
network, checked equal. Measured interleaved, medians of the repeats:
- a task stored alone (`entropy`), and a task stored as `near` against the previous task whose indices are held in
  memory (switching along the chain), and the same `near` task decoding its whole chain from the first task.

    python -m bench.switch --resnet runs/storage_resnet18 [--repeats 7] [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import nws
from bench.common import cpu_name, write_section
from bench.storage import read_chain
from incremental.methods._nws_net import swap_head
from nws import codec
from nws.artifact import STATE, load_task
from nws.io import load_tensors, read_json

SECTION = "## Switch (bench/switch.py)"


def plain_net(pools: dict[str, torch.Tensor], folder: Path, classes: int) -> torch.nn.Module:
    """The task of `folder` as an ordinary network (through the NWS network and nws.materialize): the reference."""
    net = nws.convert(nws.models.resnet18(10, stem="nws", width=1.0), pool_size=512)
    nws.load_pools(net, pools)
    swap_head(net, classes, "nws", pools["fc"])
    load_task(folder, net)
    return nws.materialize(nws.set_mode(net, "frozen")).eval()


@torch.no_grad()
def switch(net: torch.nn.Module, convs: dict[str, torch.nn.Module], pools, blob_path: Path, state_path: Path,
           prev=None) -> dict[str, torch.Tensor]:
    """Decode + lookup + load into `net` (plain); returns the decoded indices (the next task's reference)."""
    idx = codec.decode(blob_path.read_bytes(), prev=prev, pools=pools)
    for name, module in convs.items():
        module.weight.copy_(pools[name][idx[name]].view_as(module.weight))
    net.load_state_dict(load_file(str(state_path)), strict=False)
    return idx


@torch.no_grad()
def load_float(net: torch.nn.Module, path: Path) -> None:
    net.load_state_dict(load_file(str(path)))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resnet", type=Path, default=Path("runs/storage_resnet18"))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    chain = read_json(a.resnet / "chain.json")
    pools = load_tensors(a.resnet / "pools.safetensors")
    folders = [a.resnet / t["folder"] for t in chain["tasks"]]
    tasks = read_chain(folders, pools)
    last = len(tasks) - 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blobs = []
        for i, task in enumerate(tasks):  # every task with the codec default: first alone, then near
            mode, blob = codec.smallest(task.idx, task.sizes, prev=tasks[i - 1].idx if i else None, pools=pools)
            (tmp / f"{i}.bin").write_bytes(blob)
            blobs.append((mode, tmp / f"{i}.bin"))
        ref = plain_net(pools, folders[last], 5)
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp / "float.safetensors"))
        net = plain_net(pools, folders[0], 5)
        convs = {name: m for name, m in net.named_modules() if name in pools}

        def whole_chain():
            prev = None
            for i in range(last + 1):
                prev = switch(net, convs, pools, blobs[i][1], folders[i] / STATE, prev)

        runs = {
            f"task {tasks[0].name} ({blobs[0][0]}, alone)":
                lambda: switch(net, convs, pools, blobs[0][1], folders[0] / STATE),
            f"task {tasks[last].name} ({blobs[last][0]}, previous indices in memory)":
                lambda: switch(net, convs, pools, blobs[last][1], folders[last] / STATE, tasks[last - 1].idx),
            f"task {tasks[last].name} ({blobs[last][0]}, decoding its chain of {last + 1} tasks)": whole_chain,
            "float checkpoint of the same network (safetensors)": lambda: load_float(net, tmp / "float.safetensors"),
        }
        times = {k: [] for k in runs}
        for _ in range(a.repeats):
            for k, fn in runs.items():
                times[k].append(timed(fn))
        switch(net, convs, pools, blobs[last][1], folders[last] / STATE, tasks[last - 1].idx)
        same = all(torch.equal(x, y) for x, y in zip(net.state_dict().values(), ref.state_dict().values(), strict=True))
        files = {k: blobs[i][1].stat().st_size + (folders[i] / STATE).stat().st_size for k, i in
                 zip(list(runs)[:3], (0, last, last), strict=True)}
        files[list(runs)[3]] = (tmp / "float.safetensors").stat().st_size
    float_ms = statistics.median(times[list(runs)[3]])
    lines = ["| load | stored bytes | median ms | ÷ float checkpoint |", "| --- | ---: | ---: | ---: |"]
    for k, v in times.items():
        ms = statistics.median(v)
        lines.append(f"| {k} | {files[k]:,} | {ms:.1f} | {ms / float_ms:.2f}× |")
    body = "\n".join(lines) + (
        f"\n\nFull-width ResNet-18, 512-kernel pools, 5-way NWS head; median of {a.repeats} interleaved repeats, "
        f"{a.threads} thread(s); the switched network equals the reference network: {same}. Pools and the network "
        f"skeleton are in memory once for all tasks (not timed); files are in the page cache after the first "
        f"repeat.\n\nMachine: {cpu_name()}.")
    print(body)
    if a.write:
        write_section(SECTION, f"python -m bench.switch --resnet {a.resnet} --repeats {a.repeats} "
                      f"--threads {a.threads} --write", body)


if __name__ == "__main__":
    main()
