"""Pretraining throughput (issue 4): training images/s of `python -m pipeline pretrain` at 1 and 2 ranks, side by side.

Each configuration runs the real stage (DeepSpeed ZeRO-1, bf16 autocast, the demo network: digits at 32×32,
ResNet-18 width 0.25, 64-kernel pools, global batch 64) with `kind: both`, so one process measures the NWS pool
distillation and the plain backbone on the same data. images/s is the stage's own count: images of the applied
optimizer steps over the training time (no start-up, checkpoints or evaluation). Configurations take turns within
each repeat (so a change of machine load hits all of them alike); medians are reported.

    python -m bench.pretrain [--quick] [--repeats 3] [--epochs 2] [--device cpu|auto] [--write]
    python -m bench.pretrain --full-width [--steps 20] [--repeats 3] [--device cpu|auto] [--write]

CPU: every rank gets one thread (OMP_NUM_THREADS=1), plus one row of a single rank with two threads, the other
way to spend two cores. `--device auto` lets DeepSpeed pick the accelerator (a GPU when there is one; one rank).

`--full-width` runs the same stage on the same data with the paper's network: ResNet-18 width 1.0 (channels
64/128/256/512) and 512-kernel pools (the smallest 3×3 layer holds 64 × 64 = 4,096 kernels; the 7×7 stem's 3 × 64 =
192 can use at most 192 of its 512, which the stage's health check allows for). An NWS step there takes about a
second on a 2-core CPU and a run's start-up (imports, pool k-means, evaluation) tens of seconds, so each run is one
epoch cut at `--steps` optimizer steps (`pretrain.max_steps_per_epoch`) rather than whole epochs, and only the
1-rank and 2-rank rows (one thread per rank) are measured; `--write` fills a section of its own, so the demo-width
table stays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import cpu_name, write_section
from nws.io import read_json

SECTION = "## Pretrain (bench/pretrain.py)"
FULL_SECTION = "## Pretrain at full width (bench/pretrain.py --full-width)"
ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
CPU_RUNS = [("1 rank × 1 thread", 1, 1), ("1 rank × 2 threads", 1, 2), ("2 ranks × 1 thread", 2, 1)]
FULL_RUNS = [CPU_RUNS[0], CPU_RUNS[2]]  # same global batch; the 2-thread row is not measured at full width
FULL_WIDTH, FULL_POOL, FULL_STEPS = 1.0, 512, 20
AIM = 1.6  # the speed-up of 2 ranks over 1 that the full-width row is meant to reach
NOTES = """Reading the table: the global batch is the same in every row (64 = 1 × 64 = 2 × 32), so rows differ only in
how the work is split; "vs 1 rank" divides by the first row's median. Each rank joins a gloo group; DeepSpeed (ZeRO-1)
all-reduces fp32 gradients every step and all-gathers the updated parameters, while the pool update needs no
communication (its statistics depend on the replicated weights and pools only, nws.distill). The NWS rows include the
fp32 nearest-kernel search of every layer in every forward (pools move every step in pool distillation; on CPU
the fused kernel searches them in full, which costs less than the drift checks of nws.cache), and it runs on every rank
(the weights are replicated): it does not shrink with more ranks, so NWS gains less from ranks than the plain network.
This machine has 2 cores shared with other jobs: a second thread or rank competes with them for a core (and OpenMP
threads spin-wait on a busy core), so absolute numbers move with the load; the interleaved ratios much less."""
FULL_NOTES = """Reading the table: both rows train the same global batch (64 = 1 × 64 = 2 × 32) for the same optimizer
steps, so they differ only in how the work is split; "vs 1 rank" divides by the first row's median. images/s is the
stage's own count (images of the applied steps over the training time, the first step included; no start-up, pool
k-means, evaluation or BatchNorm re-estimation). Each rank joins a gloo group. Every optimizer step, DeepSpeed ZeRO-1
all-reduces the fp32 gradients of the 11.2 M parameters (45 MB; bf16 autocast, where it is on, leaves parameters and
gradients fp32) and all-gathers the parameters each rank updated (its half), and the ranks all-reduce a few flags (the
non-finite guard every micro-batch, the stop signal every step). Width 1.0 multiplies that traffic by 16 (0.70 M
parameters at the demo's 0.25) and a step's convolution multiply-adds by about as much: widening leaves their ratio
about where it was and shrinks only the fixed costs of a step (Python, the flags' latency) beside both. What grows
faster is NWS's own work: about 16× the kernels searched against 8× larger pools, about 128× the work of a full
nearest-kernel search. The search, the weights gathered from the pools, the Eq. 2 term and the EMA pool update depend
on the weights and pools only, not on the batch, and run in full on every rank (the weights are replicated; the pool
update needs no communication, nws.distill): the reading above gives their share of a 1-rank NWS step and the speed-up
that leaves to 2 ranks. The plain network has no such work; its ratio is what splitting the batch gains here, after
communication and with each rank's convolutions on half the batch. This machine has 2 cores shared with other jobs:
the 2-rank row needs both cores, the 1-rank row one, so a busy neighbour slows the 2-rank row more (the load average
above says how busy it was)."""


def machine() -> str:
    return f"{cpu_name()}, torch {torch.__version__}"


def prepare_digits(folder: Path) -> Path:
    from data_prep.prepare import prepare

    prepare("digits", None, folder, formats=("wds",), task_kind="blocks", task_opts={"classes_per_task": 2},
            progress=False)
    return folder


def overrides(threads: int, epochs: int = 2, quick: bool = False, full_width: bool = False,
              steps: int = FULL_STEPS) -> list[str]:
    """The config overrides of one run on configs/demo.yaml: both kinds, no checkpoints or logs within the run.
    Demo width for `epochs` epochs (width 1/8, 16-kernel pools and batch 32 with `quick`); `full_width`: width 1.0,
    512-kernel pools, one epoch cut at `steps` optimizer steps. A full-width run is a throughput measurement of a
    few steps, so its outputs are kept whatever the health check says of them (pretrain.allow_degenerate: a run
    cut short of an epoch is only warned about anyway, and `--steps` of a whole epoch or more is not stopped)."""
    if quick and full_width:
        raise ValueError("--quick and --full-width are two different networks: choose one")
    common = ["pretrain.kind=both", "pretrain.checkpoint_every=0", "pretrain.log_every=1000",
              f"pretrain.threads={threads}"]
    if full_width:
        return [*common, f"model.width={FULL_WIDTH}", f"model.pool_size={FULL_POOL}", "pretrain.epochs=1",
                f"pretrain.max_steps_per_epoch={steps}", "pretrain.allow_degenerate=true"]
    out = [common[0], f"pretrain.epochs={epochs}", *common[1:]]
    if quick:
        out += ["model.width=0.125", "model.pool_size=16", "pretrain.batch_size=32"]
    return out


def run_once(data: Path, out: Path, ranks: int, threads: int, device: str, overrides: list[str]) -> dict:
    """One `python -m pipeline pretrain` run: {"nws"/"plain": images/s, "steps": optimizer steps, "epoch_steps":
    optimizer steps in a whole epoch, "precision": the run's precision}."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), MLFLOW_TRACKING_URI=f"sqlite:///{out.parent / 'mlflow.db'}",
               PYTHONPATH=str(ROOT))
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={ranks}"]
    cmd = [*launch, "-m", "pipeline", "pretrain", "-c", str(DEMO), "--data", str(data), "--out", str(out), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = read_json(out / "pretrain.json")
    nws = summary["nws"]
    return {**{kind: summary[kind]["images_per_s"] for kind in ("nws", "plain")}, "steps": nws["steps"],
            "epoch_steps": nws["epoch_images"] // nws["global_batch"], "precision": nws["precision"]}


def measure(runs, repeats: int, device: str, overrides_of):
    """({configuration: {kind: [images/s per repeat]}}, the last run's summary (run_once)); `overrides_of(threads)`
    gives a run's config overrides."""
    results = {label: {"nws": [], "plain": []} for label, _, _ in runs}
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        data = prepare_digits(Path(tmp) / "data")
        for r in range(repeats):
            for i, (label, ranks, threads) in enumerate(runs):
                start = time.perf_counter()
                got = run_once(data, Path(tmp) / f"out{r}_{i}", ranks, threads, device, overrides_of(threads))
                for kind in ("nws", "plain"):
                    results[label][kind].append(got[kind])
                print(f"repeat {r}: {label}: nws {got['nws']:,.1f} img/s, plain {got['plain']:,.1f} img/s "
                      f"({got['steps']} steps, {got['precision']}; run {time.perf_counter() - start:.0f} s)",
                      flush=True)
    return results, got


def table(results: dict[str, dict[str, list[float]]], digits: int = 0) -> str:
    lines = ["| configuration | NWS img/s | vs 1 rank | plain img/s | vs 1 rank | NWS ÷ plain |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = {kind: statistics.median(next(iter(results.values()))[kind]) for kind in ("nws", "plain")}
    for label, r in results.items():
        n, p = statistics.median(r["nws"]), statistics.median(r["plain"])
        lines.append(f"| {label} | {n:,.{digits}f} | {n / base['nws']:.2f}× | {p:,.{digits}f} | "
                     f"{p / base['plain']:.2f}× | {n / p:.2f} |")
    return "\n".join(lines)


def speedups(results: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """{kind: median images/s of the last configuration ÷ that of the first} (2 ranks over 1 at full width)."""
    first, last = next(iter(results.values())), list(results.values())[-1]
    return {kind: statistics.median(last[kind]) / statistics.median(first[kind]) for kind in ("nws", "plain")}


def full_width_reading(results: dict[str, dict[str, list[float]]], batch: int = 64) -> str:
    """The 2-rank ratios against the aim, in numbers. A ratio r >= 1 of 2 ranks over 1 is what a step gives when a
    share 2/r - 1 of the 1-rank step's time is not divided between the ranks (Amdahl's law: communication,
    replicated work and a rank waiting for a core all count there). What an NWS step adds to a plain one (search,
    weights gathered from the pools, Eq. 2 term, EMA pool update) depends on the weights and pools alone, not on the
    batch, and runs in full on every rank: added as it is at 1 rank to the plain network's 2-rank step, it predicts
    NWS at 2 ranks, and added to half the plain 1-rank step it bounds what 2 ranks can give NWS (a perfect split of
    the rest, communication free)."""
    up = speedups(results)
    words = []
    for kind, name in (("nws", "NWS"), ("plain", "the plain network")):
        r = up[kind]
        if r >= 1:
            why = f"as if {2 / r - 1:.0%} of a 1-rank step did not split"
        else:
            why = f"slower than 1 rank: a step takes {1 / r:.2f}× as long"
        words.append(f"{name} {r:.2f}× ({'reaches the aim' if r >= AIM else 'under the aim'}; {why})")
    one, two = next(iter(results.values())), list(results.values())[-1]
    step = {key: batch / statistics.median(r[kind]) for key, r, kind in
            (("nws1", one, "nws"), ("plain1", one, "plain"), ("plain2", two, "plain"), ("nws2", two, "nws"))}
    extra = step["nws1"] - step["plain1"]
    predicted = step["plain2"] + extra
    bound = step["nws1"] / (step["plain1"] / 2 + extra)
    return (f"2 ranks over 1, aim ≥ {AIM}×: " + ", ".join(words) + ". Seconds per optimizer step at 1 rank: NWS "
            f"{step['nws1']:.2f}, plain {step['plain1']:.2f}, so NWS adds {extra:.2f} s of work that does not "
            f"depend on the batch ({extra / step['nws1']:.0%} of its step) and that every rank does in full: even "
            f"with the rest split perfectly and free communication, 2 ranks could give NWS at most {bound:.2f}×. "
            f"Added to the plain 2-rank step ({step['plain2']:.2f} s) it predicts {predicted:.2f} s for NWS at "
            f"2 ranks; measured {step['nws2']:.2f} s.")


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    runs = FULL_RUNS if args.full_width else CPU_RUNS
    if args.device != "cpu":
        runs = [("1 rank (accelerator)", 1, 4)]
    repeats = 1 if args.quick else args.repeats
    epochs = 2 if args.epochs is None else args.epochs
    results, last = measure(runs, repeats, args.device,
                            lambda threads: overrides(threads, epochs, args.quick, args.full_width, args.steps))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.full_width:
        cut = (f"one epoch of {last['epoch_steps']} steps cut by pretrain.max_steps_per_epoch"
               if last["steps"] < last["epoch_steps"] else "one whole epoch")
        body = (f"**ResNet-18 width {FULL_WIDTH} (channels 64/128/256/512), {FULL_POOL}-kernel pools, digits at "
                f"32×32, global batch 64, {last['steps']} optimizer steps per run** ({cut}; {last['precision']})\n\n"
                f"Machine: {machine()}. Medians of {repeats} interleaved repeats; load average at the end {load} "
                f"(1/5/15 min).\n\n{table(results, digits=1)}")
        if len(results) > 1:
            body += "\n\n" + full_width_reading(results)
        section, notes = FULL_SECTION, FULL_NOTES
    else:
        body = (f"Machine: {machine()}. Demo network and data, global batch {32 if args.quick else 64}, "
                f"{last['steps']} optimizer steps per run, medians of {repeats} interleaved repeats; load average at "
                f"the end {load} (1/5/15 min).\n\n{table(results)}")
        section, notes = SECTION, NOTES
    print(body)
    if args.write:
        command = "python -m bench.pretrain" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        write_section(section, command, body + "\n\n" + notes)
    return body


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pretrain", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke run: width 1/8, 16-kernel pools, batch 32, 1 repeat")
    mode.add_argument("--full-width", action="store_true",
                      help=f"width {FULL_WIDTH}, {FULL_POOL}-kernel pools, 1 and 2 ranks, --steps steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="demo epochs per run (22 optimizer steps each; default 2)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"--full-width: optimizer steps per run (default {FULL_STEPS}; an epoch holds 22)")
    p.add_argument("--device", choices=("cpu", "auto"), default="cpu",
                   help="cpu: DS_ACCELERATOR=cpu, 1 and 2 ranks; auto: DeepSpeed's accelerator, 1 rank")
    p.add_argument("--write", action="store_true",
                   help="update the Pretrain section of BENCHMARKS.md (its full-width section with --full-width)")
    args = p.parse_args(argv)
    if args.full_width and args.epochs is not None:
        p.error("--full-width runs are bounded by --steps, not --epochs")
    if args.steps is not None and not args.full_width:
        p.error("--steps bounds the --full-width runs; the demo runs are bounded by --epochs")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    args.steps = FULL_STEPS if args.steps is None else args.steps
    return args


if __name__ == "__main__":
    main()
