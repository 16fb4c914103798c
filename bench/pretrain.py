"""Pretraining throughput (issue 4): training images/s of `python -m pipeline pretrain` at 1 and 2 ranks, side by side.

Each configuration runs the real stage (DeepSpeed ZeRO-1, bf16 autocast, the demo network: digits at 32×32,
ResNet-18 width 0.25, 64-kernel pools, global batch 64) with `kind: both`, so one process measures the NWS pool
distillation and the plain backbone on the same data. images/s is the stage's own count: images of the applied
optimizer steps over the training time (no start-up, checkpoints or evaluation). Configurations take turns within
each repeat (so a change of machine load hits all of them alike); medians are reported.

    python -m bench.pretrain [--quick] [--repeats 3] [--epochs 2] [--device cpu|auto] [--write]

CPU: every rank gets one thread (OMP_NUM_THREADS=1), plus one row of a single rank with two threads, the other
way to spend two cores. `--device auto` lets DeepSpeed pick the accelerator (a GPU when there is one; one rank).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.common import cpu_name, write_section
from nws.io import read_json

SECTION = "## Pretrain (bench/pretrain.py)"
ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
CPU_RUNS = [("1 rank × 1 thread", 1, 1), ("1 rank × 2 threads", 1, 2), ("2 ranks × 1 thread", 2, 1)]
NOTES = """Reading the table: the global batch is the same in every row (64 = 1 × 64 = 2 × 32), so rows differ only in
how the work is split; "vs 1 rank" divides by the first row's median. Each rank joins a gloo group; DeepSpeed
all-reduces fp32 gradients every step and the pool update all-reduces its assignment statistics (two tensors per
NWS layer). The NWS rows include the fp32 nearest-kernel search of every layer in every forward (pools move every
step in pool distillation: the drift-aware cache of issue 20 searches again only the kernels a move can affect), and
that search runs on every rank (the weights are replicated): it does not shrink with more ranks, so NWS gains less
from ranks than the plain network. This machine
has 2 cores shared with other jobs: a second thread or rank competes with them for a core (and OpenMP threads
spin-wait on a busy core), so absolute numbers move with the load; the interleaved ratios much less."""


def machine() -> str:
    return f"{cpu_name()}, torch {torch.__version__}"


def prepare_digits(folder: Path) -> Path:
    from data_prep.prepare import prepare

    prepare("digits", None, folder, formats=("wds",), task_kind="blocks", task_opts={"classes_per_task": 2},
            progress=False)
    return folder


def run_once(data: Path, out: Path, ranks: int, threads: int, epochs: int, device: str, quick: bool) -> dict:
    """One `python -m pipeline pretrain` run; returns {kind: images/s} and the optimizer steps it took."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), MLFLOW_TRACKING_URI=f"sqlite:///{out.parent / 'mlflow.db'}",
               PYTHONPATH=str(ROOT))
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={ranks}"]
    overrides = ["pretrain.kind=both", f"pretrain.epochs={epochs}", "pretrain.checkpoint_every=0",
                 "pretrain.log_every=1000", f"pretrain.threads={threads}"]
    if quick:
        overrides += ["model.width=0.125", "model.pool_size=16", "pretrain.batch_size=32"]
    cmd = [*launch, "-m", "pipeline", "pretrain", "-c", str(DEMO), "--data", str(data), "--out", str(out), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = read_json(out / "pretrain.json")
    return {kind: summary[kind]["images_per_s"] for kind in ("nws", "plain")}, summary["nws"]["steps"]


def measure(runs, repeats: int, epochs: int, device: str, quick: bool):
    """({configuration: {kind: [images/s per repeat]}}, optimizer steps per run)."""
    results = {label: {"nws": [], "plain": []} for label, _, _ in runs}
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        data = prepare_digits(Path(tmp) / "data")
        for r in range(repeats):
            for i, (label, ranks, threads) in enumerate(runs):
                got, steps = run_once(data, Path(tmp) / f"out{r}_{i}", ranks, threads, epochs, device, quick)
                for kind, value in got.items():
                    results[label][kind].append(value)
                print(f"repeat {r}: {label}: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in got.items()),
                      flush=True)
    return results, steps


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| configuration | NWS img/s | vs 1 rank | plain img/s | vs 1 rank | NWS ÷ plain |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = {kind: statistics.median(next(iter(results.values()))[kind]) for kind in ("nws", "plain")}
    for label, r in results.items():
        n, p = statistics.median(r["nws"]), statistics.median(r["plain"])
        lines.append(f"| {label} | {n:,.0f} | {n / base['nws']:.2f}× | {p:,.0f} | {p / base['plain']:.2f}× | "
                     f"{n / p:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m bench.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: width 1/8, 16-kernel pools, batch 32, 1 repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="demo epochs per run (22 optimizer steps each)")
    p.add_argument("--device", choices=("cpu", "auto"), default="cpu",
                   help="cpu: DS_ACCELERATOR=cpu, 1 and 2 ranks; auto: DeepSpeed's accelerator, 1 rank")
    p.add_argument("--write", action="store_true", help="update the Pretrain section of BENCHMARKS.md")
    args = p.parse_args(argv)
    runs = CPU_RUNS if args.device == "cpu" else [("1 rank (accelerator)", 1, 4)]
    repeats = 1 if args.quick else args.repeats
    results, steps = measure(runs, repeats, args.epochs, args.device, args.quick)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (f"Machine: {machine()}. Demo network and data, global batch {32 if args.quick else 64}, {steps} "
            f"optimizer steps per run, medians of {repeats} interleaved repeats; load average at the end {load} "
            f"(1/5/15 min).\n\n{table(results)}")
    print(body)
    if args.write:
        command = "python -m bench.pretrain" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        write_section(SECTION, command, body + "\n\n" + NOTES)
    return body


if __name__ == "__main__":
    main()
