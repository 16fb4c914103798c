"""Search benchmark (issue 2): the cost of Eq. 1 in a training step, against its FLOP floor and the official style.

Measured side by side in one run, on the full-width NWS ResNet-18 (official `nws` stem, 32×32 inputs, 5 classes,
512-kernel pools), every measurement interleaved with the others in each repeat (so a change of machine load hits
all of them alike), medians reported:
(a) one SGD training step in `search` mode ÷ one step of the same plain network, at batch 32 and 256, with the
    search run in full on every step and with `nws.cache.SearchCache` (the layers' default);
(b) the search alone over all the network's kernels ÷ its FLOP floor Σ_l 2·N_l·d_l·n at the rate this machine
    reaches on a large square fp32 matmul, measured in the same run;
(c) the official-style search (full `torch.cdist(..., "use_mm_for_euclid_dist")` to every pool kernel, then argmin,
    notes/algorithms.md §1.1) and the training step that uses it;
(d) the cached search on a realistic second step: after one SGD step (lr 0.01) of the temporary kernels.

With `--pool-moves` it times instead a distillation-like loop (issue 20): every step the temporary kernels take a
small step and every pool follows its assigned kernels by the EMA of Eq. 4 (decay 0.99, dead kernels restarted on
temporary kernels every few steps, as nws.distill does), and each step's search runs both in full and through the
drift-aware `SearchCache`, interleaved, their indices checked equal.

    python -m bench.search [--quick] [--repeats 5] [--threads N] [--clock wall|cpu] [--device cpu|cuda] [--write]
    python -m bench.search --pool-moves [--steps 30] [--quick] [--repeats 3] [--threads N] [--clock wall|cpu]
    python -m bench.search --profile [--quick] [--threads N]     (where a distillation step's extra time goes)

`--clock cpu` times with the process's CPU time instead of the wall clock: with `--threads 1` on a machine
shared with other jobs, that is the work done, free of the time spent waiting for a core. `--device cuda` runs every
measurement on the GPU (the clock waits for the device before each reading; `--clock cpu` is refused there): the
step ratio at batch 256 is issue 20's GPU aim (≤ 1.10), read by scripts/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

import nws
from bench.common import cpu_name, write_section
from nws import search_faiss, search_native
from nws.cache import SearchCache
from nws.search import nearest

SECTION = "## Search (bench/search.py)"
POOL_MOVES_SECTION = "## Search with moving pools (bench/search.py --pool-moves)"
CPU = torch.device("cpu")
BETA = 0.5  # Eq. 2 weight of the Split-CIFAR-100 config (notes §1.4)
LR = 0.01


class OfficialSearch:
    """The official code's search, as a drop-in for a layer's `search_cache`: cdist to every pool kernel, argmin."""

    def __call__(self, flat: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return torch.cdist(flat.float(), pool.float(), compute_mode="use_mm_for_euclid_dist").argmin(1)

    def reset(self) -> None:
        pass


def faiss_k1(flat: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """The uncertified peer: faiss IndexFlatL2 over the pool, k=1 (its fused distance + argmin), torch's threads."""
    faiss = search_faiss.faiss
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatL2(pool.shape[1])
    index.add(pool.detach().float().contiguous().numpy())
    return torch.from_numpy(index.search(flat.detach().float().contiguous().numpy(), 1)[1][:, 0])


def machine() -> str:
    return f"{cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def step_fn(model, batch: int, beta: float, seed: int, device: torch.device = CPU):
    """One SGD step (momentum 0.9, as the official config) on a fixed random batch of 32×32 images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 5, (batch,), generator=g).to(device)
    model.to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if beta:
            loss = loss + beta * nws.search_loss(model)
        loss.backward()
        opt.step()

    return step


def distill_step_fn(snet, batch: int, seed: int, device: torch.device = CPU):
    """One pool-distillation step as pretraining runs it (nws.distill): SGD on CE + beta·Eq. 2 with every layer in
    `distill` mode (search every forward against the moving pools), then the EMA update of Eq. 4 with the demo
    config's dead-kernel restarts (usage 1.0, every 26 steps)."""
    model = copy.deepcopy(snet).to(device)
    distiller = nws.PoolDistiller(model, restart_every=26, dead_usage=1.0)
    train = step_fn(model, batch, BETA, seed, device)

    def step():
        train()
        distiller.step()

    return step


def with_search(snet, kind: str):
    """A copy of the search-mode network whose layers search in full, through the cache, or officially."""
    model = copy.deepcopy(snet)
    for _, layer in nws.nws_layers(model):
        layer.search_cache = OfficialSearch() if kind == "official" else SearchCache(enabled=kind == "cached")
    return model


def flops_rate(size: int, clock=time.perf_counter, device: torch.device = CPU) -> float:
    """FLOP/s of this machine on a large square fp32 matmul (one call)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    t = clock()
    a @ b
    return 2 * size**3 / (clock() - t)


def cached_search(layers, moved, clock=time.perf_counter):
    """A timed callable: the cached search over all layers after one SGD step, from caches primed before it."""
    primed = []
    for flat, pool in layers:
        cache = SearchCache()
        cache(flat, pool)
        primed.append(cache)
    searched = []

    def run():
        searched.clear()
        for cache, new, (_, pool) in zip(primed, moved, layers, strict=True):
            fresh = copy.deepcopy(cache)  # each repeat starts from the primed cache (copied outside the clock)
            t = clock()
            idx = fresh(new, pool)
            run.elapsed += clock() - t
            searched.append((fresh.last_searched, idx))

    run.elapsed = 0.0
    return run, searched


def one_sgd_step(snet, batch: int, seed: int, device: torch.device = CPU):
    """The temporary kernels after one plain SGD step (lr 0.01) on CE + beta·Eq. 2, as (N, d) rows per layer."""
    model = copy.deepcopy(snet).to(device)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 5, (batch,), generator=g)
    x, y = x.to(device), y.to(device)
    loss = F.cross_entropy(model(x), y) + BETA * nws.search_loss(model)
    loss.backward()
    return [(layer.weight - LR * layer.weight.grad).detach().reshape(-1, layer.group_dim)
            for _, layer in nws.nws_layers(model)]


def synced(clock, device: torch.device):
    """`clock`, reading only once the device has finished the work queued so far (CUDA kernels run async)."""
    if device.type != "cuda":
        return clock

    def read() -> float:
        torch.cuda.synchronize(device)
        return clock()

    return read


def run(width: float, batches: list[int], repeats: int, matmul_size: int, clock=time.perf_counter,
        pool_size: int = 512, device: torch.device = CPU) -> str:
    torch.manual_seed(0)
    kind_of_clock = "wall-clock" if clock is time.perf_counter else "CPU"
    clock = synced(clock, device)
    net = nws.models.resnet18(num_classes=5, stem="nws", width=width)
    snet = nws.set_mode(nws.convert(net, pool_size=pool_size, seed=0), "search").to(device)
    layers = [(layer.flat_weight().detach(), layer.pool) for _, layer in nws.nws_layers(snet)]
    kernels = sum(f.shape[0] for f, _ in layers)
    flops = sum(2 * f.shape[0] * f.shape[1] * p.shape[0] for f, p in layers)

    timed = {}
    for b in batches:
        timed[("plain", b)] = step_fn(copy.deepcopy(net), b, 0.0, b, device)
        for kind in ("full", "cached", "official"):
            timed[(kind, b)] = step_fn(with_search(snet, kind), b, BETA, b, device)
        timed[("distill", b)] = distill_step_fn(snet, b, b, device)
    timed["search"] = lambda: [nearest(f, p) for f, p in layers]
    with_native = device.type == "cpu" and search_native.default_kernel() is not None
    if with_native:
        timed["search, torch path"] = lambda: [nearest(f, p, native=False) for f, p in layers]
    elif device.type == "cpu":
        print("the native kernel is not built (make setup): the exact search row is the torch path")
    timed["official search"] = lambda: [OfficialSearch()(f, p) for f, p in layers]
    with_faiss = search_faiss.available() and device.type == "cpu"
    if with_faiss:
        timed["faiss k=1"] = lambda: [faiss_k1(f, p) for f, p in layers]
        timed["faiss certified"] = lambda: [search_faiss.nearest(f, p, backend="faiss") for f, p in layers]
    else:
        print("faiss rows skipped: " + ("faiss-cpu is not installed (the `search` extra)"
                                       if not search_faiss.available() else "faiss runs on CPU only"))
    moved = one_sgd_step(snet, 32, seed=1, device=device)
    cached, searched = cached_search(layers, moved, clock)
    for fn in timed.values():  # warm-up (the cached steps prime their caches here)
        fn()
    times = {k: [] for k in timed}
    times["cached search"], rates = [], []
    for _ in range(repeats):
        rates.append(flops_rate(matmul_size, clock, device))
        for key, fn in timed.items():
            t = clock()
            fn()
            times[key].append(clock() - t)
        cached.elapsed = 0.0
        cached()
        times["cached search"].append(cached.elapsed)
    for (_, idx), new, (_, pool) in zip(searched, moved, layers, strict=True):
        if not torch.equal(idx, nearest(new, pool)):
            raise AssertionError("the cached search disagrees with the full search")
    differ = 0
    for f, p in layers:
        exact = nearest(f, p)
        if with_native and not torch.equal(exact, nearest(f, p, native=False)):
            raise AssertionError("the native kernel's search disagrees with the torch path")
        if with_faiss:
            if not torch.equal(search_faiss.nearest(f, p, backend="faiss"), exact):
                raise AssertionError("the certified faiss search disagrees with the exact search")
            differ += int((faiss_k1(f, p) != exact).sum())
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    rate = statistics.median(rates)
    floor = 1e3 * flops / rate
    resized = sum(s for s, _ in searched)

    rows = ["| measurement | batch | median ms | ratio |", "| --- | ---: | ---: | --- |"]
    for b in batches:
        plain = ms[("plain", b)]
        rows.append(f"| plain step | {b} | {plain:.1f} | 1.00 (reference) |")
        rows.append(f"| search-mode step, full search every step | {b} | {ms[('full', b)]:.1f} | "
                    f"{ms[('full', b)] / plain:.2f}× plain |")
        rows.append(f"| search-mode step, cached search (layer default) | {b} | {ms[('cached', b)]:.1f} | "
                    f"{ms[('cached', b)] / plain:.2f}× plain |")
        rows.append(f"| official-style step (cdist + argmin) | {b} | {ms[('official', b)]:.1f} | "
                    f"{ms[('official', b)] / plain:.2f}× plain |")
        rows.append(f"| pool-distillation step (moving pools, EMA update) | {b} | {ms[('distill', b)]:.1f} | "
                    f"{ms[('distill', b)] / plain:.2f}× plain |")
    rows.append(f"| FLOP floor: {flops / 1e9:.2f} GFLOP at {rate / 1e9:.0f} GFLOP/s ({matmul_size}² matmul) | – | "
                f"{floor:.1f} | 1.00 (reference) |")
    path = "native kernel" if with_native else ("torch path" if device.type == "cpu" else "CUDA")
    rows.append(f"| search alone, exact, {path} ({kernels:,} kernels) | – | {ms['search']:.1f} | "
                f"{ms['search'] / floor:.2f}× floor |")
    if with_native:
        rows.append(f"| search alone, exact, torch path (nearest(..., native=False)) | – | "
                    f"{ms['search, torch path']:.1f} | {ms['search, torch path'] / floor:.2f}× floor; "
                    f"{ms['search, torch path'] / ms['search']:.2f}× native |")
    rows.append(f"| official-style search (cdist use_mm + argmin) | – | {ms['official search']:.1f} | "
                f"{ms['official search'] / floor:.2f}× floor; ours {ms['official search'] / ms['search']:.1f}× "
                f"faster |")
    if with_faiss:
        rows.append(f"| faiss IndexFlatL2 k=1, not certified ({differ:,} of {kernels:,} kernels differ from exact) "
                    f"| – | {ms['faiss k=1']:.1f} | {ms['faiss k=1'] / ms['search']:.2f}× exact search |")
        rows.append(f"| faiss k=2 candidates + certificate, exact (nws.search_faiss) | – | "
                    f"{ms['faiss certified']:.1f} | {ms['faiss certified'] / ms['search']:.2f}× exact search |")
    rows.append(f"| cached search after one SGD step (lr {LR}; {resized:,} of {kernels:,} kernels searched again) "
                f"| – | {ms['cached search']:.1f} | {ms['cached search'] / floor:.2f}× floor |")
    where = machine() if device.type != "cuda" else f"{torch.cuda.get_device_name(device)} (host: {machine()})"
    head = (f"Machine: {where}. Width {width}, pools of {pool_size}, {kind_of_clock} times, medians of {repeats} "
            f"interleaved repeats; load average at the end {load()} (1/5/15 min).")
    return head + "\n\n" + "\n".join(rows)


def ema_pools(layers, steps: int, seed: int, restart_every: int = 5, dead_usage: float = 0.5, decay: float = 0.99,
              lr: float = 0.01):
    """A distillation-like trajectory: per step, per layer, a callable gets (flat W, pool) and returns the indices,
    then W takes a small random step (lr × its scale) and the pool moves by Eq. 4's EMA (as nws.distill, with its
    restarts of the kernels whose EMA usage fell under dead_usage onto random temporary kernels)."""
    g = torch.Generator().manual_seed(seed)

    def run(search):
        state = [(flat.clone(), pool.clone(), torch.ones(pool.shape[0], device=pool.device), pool.clone())
                 for flat, pool in layers]
        for step in range(1, steps + 1):
            for i, (flat, pool, size, embed) in enumerate(state):
                idx = search(i, flat, pool)
                size.mul_(decay).add_(torch.bincount(idx, minlength=pool.shape[0]), alpha=1 - decay)
                embed.mul_(decay).index_add_(0, idx, flat, alpha=1 - decay)
                total = size.sum()
                pool.copy_(embed / ((size + 1e-5) / (total + size.numel() * 1e-5) * total).unsqueeze(1))
                if step % restart_every == 0:
                    dead = (size < dead_usage).nonzero().squeeze(1)
                    picks = torch.randint(flat.shape[0], (dead.numel(),), generator=g).to(flat.device)
                    pool[dead], embed[dead], size[dead] = flat[picks], flat[picks], 1.0
                noise = torch.randn(flat.shape, generator=g).to(flat.device)
                flat.add_(noise, alpha=lr * float(flat.std()))

    return run


def one_pool_moves_run(layers, steps: int, clock):
    """One run of `ema_pools` from fresh caches: the time spent in each search and the rows the cache searched."""
    caches = [SearchCache(track_moves=True) for _ in layers]  # the checks, timed against the full search
    spent, searched = {"full": 0.0, "cached": 0.0}, []

    def both(i, flat, pool):
        t = clock()
        full = nearest(flat, pool)
        spent["full"] += clock() - t
        t = clock()
        idx = caches[i](flat, pool)
        spent["cached"] += clock() - t
        if not torch.equal(idx, full):
            raise AssertionError("the drift-aware cache disagrees with the full search")
        searched.append(caches[i].last_searched)
        return full

    ema_pools(layers, steps, seed=1)(both)
    return spent, searched


def run_pool_moves(width: float, steps: int, repeats: int, clock=time.perf_counter, pool_size: int = 512,
                   device: torch.device = CPU) -> str:
    torch.manual_seed(0)
    kind_of_clock = "wall-clock" if clock is time.perf_counter else "CPU"
    clock = synced(clock, device)
    net = nws.models.resnet18(num_classes=5, stem="nws", width=width)
    snet = nws.convert(net, pool_size=pool_size, seed=0, pool_init="sample").to(device)
    layers = [(layer.flat_weight().detach(), layer.pool) for _, layer in nws.nws_layers(snet)]
    kernels = sum(f.shape[0] for f, _ in layers)
    totals = {"full": [], "cached": []}
    for _ in range(repeats):
        spent, searched = one_pool_moves_run(layers, steps, clock)
        for key in totals:
            totals[key].append(spent[key])
    ms = {k: 1e3 * statistics.median(v) / steps for k, v in totals.items()}
    share = sum(searched) / (steps * kernels)
    rows = ["| measurement (per step, all layers) | median ms | ratio |", "| --- | ---: | --- |",
            f"| full search | {ms['full']:.1f} | 1.00 (reference) |",
            f"| drift-aware cached search ({share:.1%} of {kernels:,} kernels searched, first step in full) | "
            f"{ms['cached']:.1f} | {ms['cached'] / ms['full']:.2f}× full |"]
    where = machine() if device.type != "cuda" else f"{torch.cuda.get_device_name(device)} (host: {machine()})"
    head = (f"Machine: {where}. Pool moves (EMA decay 0.99, restarts every 5 steps): width {width}, pools of "
            f"{pool_size}, {steps} steps, {kind_of_clock} times, medians of {repeats} repeats; load average at the "
            f"end {load()} (1/5/15 min).")
    return head + "\n\n" + "\n".join(rows)


NOTES = """Reading the table: the FLOP floor is what the brute-force search costs if the machine ran it at its large
square-matmul rate. The exact search runs, on CPU, the fused C++ kernel of nws/search_native.py (built by `make
setup`): each row's scores against the pool stay in registers while the best, its index and the second-best are
kept, so no score matrix is written (K = k² = 9 for 3×3 kernels: writing and re-reading the scores cost the torch path
more than computing them); rows whose best and second-best are too close for the proven fp32 error bound go to the
reference `cdist` (nws/search.py). The torch path (`native=False`: a matmul per chunk, then a max-pool and an amax) is
timed beside it and checked equal. Scalar kernels (1×1 convs, the head) are searched in the sorted pool. The faiss
rows (when faiss-cpu is installed) time faiss's IndexFlatL2 on the same kernels: k=1 alone (its fused distance +
argmin; not certified: the row counts the kernels where it differs from the exact search) and k=2 as candidates
under the same certificate (nws/search_faiss.py; checked equal to the exact search in the same run). The cached
search re-searches only the kernels that moved at least their margin since they were last compared; its result is
checked against the full search in the same run. The pool-distillation step is pretraining's: every layer searches
against pools that moved since the last step (on CPU with the native kernel in full, which costs less than the
drift checks of nws.cache), then the EMA update of Eq. 4.
This machine is shared with other jobs: absolute times move with its load, the interleaved ratios much less."""


POOL_MOVES_NOTES = """Reading the table: in pool distillation every pool kernel moves each step, so the fixed-pool
shortcut of issue 2 never applies; the drift-aware cache (nws/cache.py, nws/drift.py; `SearchCache(track_moves=
True)` here) searches again only the kernels whose index could change by their own move, their pool kernel's move and
the largest move of any other pool kernel since they were compared, and compares restarted (jumped) pool kernels
with every kernel directly. Its indices are checked equal to the full search at every step of the run. In this loop
every temporary kernel takes a random step of 1% of its layer's spread per step, so most rows must be searched again;
and since the full search runs on the fused kernel of nws/search_native.py, it costs less than the checks alone (a
float64 distance of every row to its own kernel and to where it was last compared, the pool history). A real
distillation step re-searches fewer rows (13% on the full-width network at batch 32, 19% in the demo's pool
distillation on the digits: `python scripts/distill_search_share.py runs/demo/data`), yet there too the tracked cache
cost more than the full search (456 against 384 ms a step, 1 thread, interleaved in one process). So on CPU with
the native kernel the layers search moved pools in full (`track_moves=None`, the default); the checks stay the
default on CUDA and on the torch path."""


def run_profile(width: float, batch: int, device: torch.device = CPU, rows: int = 12) -> str:
    """Where a pool-distillation step's time goes beyond the plain step's (issue 20): torch's profiler over one
    plain step and one distillation step (after two warm-up steps each), self CPU time per operator, the native
    search kernel as its own row; the operators the two steps share are set side by side."""
    from torch.profiler import profile

    torch.manual_seed(0)
    net = nws.models.resnet18(num_classes=5, stem="nws", width=width)
    snet = nws.set_mode(nws.convert(net, pool_size=512, seed=0), "search").to(device)
    steps = {"plain": step_fn(copy.deepcopy(net), batch, 0.0, batch, device),
             "distill": distill_step_fn(snet, batch, batch, device)}
    self_ms, total = {}, {}
    for kind, fn in steps.items():
        fn()
        fn()
        with profile() as prof:
            fn()
        events = prof.key_averages()
        self_ms[kind] = {e.key: e.self_cpu_time_total / 1e3 for e in events}
        total[kind] = sum(self_ms[kind].values())
    extra = {k: v - self_ms["plain"].get(k, 0.0) for k, v in self_ms["distill"].items()}
    top = sorted(extra, key=lambda k: -extra[k])[:rows]
    lines = [f"Machine: {machine()}. Width {width}, pools of 512, batch {batch}, one profiled step each; self CPU "
             f"time per operator (ms): plain step {total['plain']:.0f}, distillation step {total['distill']:.0f}.",
             "", "| operator | plain ms | distillation ms | extra ms |", "| --- | ---: | ---: | ---: |"]
    for k in top:
        lines.append(f"| {k} | {self_ms['plain'].get(k, 0.0):.1f} | {self_ms['distill'][k]:.1f} | {extra[k]:.1f} |")
    rest = total["distill"] - total["plain"] - sum(extra[k] for k in top)
    lines.append(f"| every other operator | – | – | {rest:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: width 1/8, batch 4, 2 repeats")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall clock or process CPU time")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where every measurement runs")
    p.add_argument("--pool-moves", action="store_true",
                   help="time a distillation-like loop (pools move each step): drift-aware cache vs full search")
    p.add_argument("--steps", type=int, default=30, help="steps of the --pool-moves loop")
    p.add_argument("--profile", action="store_true",
                   help="profile one plain and one pool-distillation step at batch 32: where the extra time goes")
    p.add_argument("--write", action="store_true", help="update the Search section of BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.write and args.profile:
        p.error("--profile prints its table; it writes no section")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this torch sees no CUDA device")
    if device.type == "cuda" and args.clock == "cpu":
        p.error("--clock cpu times the host process, not the GPU: use the wall clock with --device cuda")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        if args.profile:
            body = run_profile(0.125 if args.quick else 1.0, 4 if args.quick else 32, device)
        elif args.pool_moves:
            width, steps = (0.125, min(args.steps, 6)) if args.quick else (1.0, args.steps)
            body = run_pool_moves(width, steps, 1 if args.quick else args.repeats, clock, device=device)
        elif args.quick:
            body = run(width=0.125, batches=[4], repeats=2, matmul_size=256, clock=clock, device=device)
        else:
            body = run(width=1.0, batches=[32, 256], repeats=args.repeats, matmul_size=2048, clock=clock,
                       device=device)
    finally:
        torch.set_num_threads(threads)
    print(body)
    if args.write:
        command = "python -m bench.search" + (" --quick" if args.quick else f" --repeats {args.repeats}")
        command += f" --pool-moves --steps {args.steps}" if args.pool_moves else ""
        command += f" --threads {args.threads}" if args.threads else ""
        command += " --clock cpu" if args.clock == "cpu" else ""
        command += f" --device {args.device}" if device.type != "cpu" else ""
        if args.pool_moves:
            write_section(POOL_MOVES_SECTION, command + " --write", body + "\n\n" + POOL_MOVES_NOTES)
        else:
            write_section(SECTION, command + " --write", body + "\n\n" + NOTES)
    return body


if __name__ == "__main__":
    main()
