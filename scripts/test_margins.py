"""Measure the margins of the float-dependent test checks (tests/margin.py) over seeds and thread settings.

    .venv/bin/python scripts/test_margins.py --seeds 0 1 2 --threads 1 2 [--files tests/incremental/test_loop.py]
    .venv/bin/python scripts/test_margins.py --table runs/margins/*.jsonl   # only print the table again

Runs pytest once per (seed, threads) over the test files that call `margin.above/below` (or the given ones), with
NWS_TEST_SEED, OMP_NUM_THREADS and NWS_TEST_MARGINS set, then prints one row per check: its bound, the values seen,
their spread (max - min), the headroom of the worst value over the bound, and headroom ÷ spread, which the project
keeps at 2 or more (issue: no test sits on its threshold). Failures of the runs are reported, not hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def margin_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "margin.above(" in p.read_text() or "margin.below(" in p.read_text())


def run(seed: int, threads: int, files: list[str], out: Path, extra: list[str]) -> int:
    env = {**os.environ, "NWS_TEST_SEED": str(seed), "OMP_NUM_THREADS": str(threads), "NWS_TEST_MARGINS": str(out)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *extra]
    print(f">> seed {seed}, {threads} thread(s): {' '.join(cmd[3:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    print("   " + (tail[0] if tail else f"exit {proc.returncode}"), flush=True)
    if proc.returncode:
        print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))))
    return proc.returncode


def table(paths: list[Path]) -> str:
    rows = defaultdict(list)
    for path in paths:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows[(r["test"], r["name"], r["direction"], r["bound"])].append(r)
    out = ["| test | check | bound | runs | min | max | spread | headroom | headroom ÷ spread |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (test, name, direction, bound), rs in sorted(rows.items()):
        values = [r["value"] for r in rs]
        lo, hi = min(values), max(values)
        headroom = lo - bound if direction == ">" else bound - hi
        spread = hi - lo
        ratio = "∞" if spread == 0 and headroom > 0 else f"{headroom / spread:.1f}" if spread else "0"
        short = test.split("::", 1)[1] if "::" in test else test
        out.append(f"| {short} | {name} | {direction} {bound:.4g} | {len(rs)} | {lo:.4g} | {hi:.4g} | {spread:.3g} | "
                   f"{headroom:.3g} | {ratio} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--files", nargs="+", help="test files (default: every file with a margin check)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "margins", help="folder of the JSON lines")
    ap.add_argument("--table", type=Path, nargs="+", help="print the table of these JSON-lines files and stop")
    ap.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (e.g. -k task_inference)")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    files, failed, paths = args.files or margin_files(), 0, []
    for seed in args.seeds:
        for threads in args.threads:
            path = args.out / f"seed{seed}-threads{threads}.jsonl"
            path.unlink(missing_ok=True)
            failed += run(seed, threads, files, path, args.pytest_args) != 0
            paths.append(path)
    print(table([p for p in paths if p.exists()]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
