#!/usr/bin/env bash
# The GPU check (issue 20): one script that, on a machine with one CUDA GPU, runs in under 8 minutes and writes
# <out>/summary.md with what BENCHMARKS.md needs. Run from the repository root with the project installed:
#   bash scripts/gpu_check.sh [OUT]          (OUT defaults to $OUT, else gpu_check_out; PY=... picks the python)
# Steps, each with its log in OUT/<step>.log, its exit status and its seconds in the summary:
#   1. cuda_tests  the CUDA tests of the search (exact vs the CPU brute force, bf16 autocast and TF32 kept out)
#                  and of the bench on the GPU;
#   2. bench       python -m bench.search --device cuda (full width, batches 32 and 256): the search-mode step ÷
#                  plain step at batch 256 against the aim 1.10;
#   3. pretrain    the demo's data and pool pretraining on the GPU (precision auto: bf16 where supported);
#   4. incremental the demo's task-incremental stage on the GPU, every method, then the report.
# A step that fails does not stop the later ones unless they need its output. Exit status: 0 when every step
# passed, 1 when one failed, 3 when this torch sees no CUDA device (nothing is run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check_out}}
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
mkdir -p "$OUT"
SUMMARY=$OUT/summary.md
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: $PY's torch sees no CUDA device; nothing was run" >&2
  exit 3
fi
{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo
  "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'Device: {p.name}, '
f'{p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, '
f'bf16 {torch.cuda.is_bf16_supported()}')"
  echo
  echo "| step | exit | seconds |"
  echo "| --- | ---: | ---: |"
} > "$SUMMARY"

failed=0
step() {  # step NAME COMMAND...: run it, log it, add its row to the summary
  local name=$1 start rc
  shift
  start=$(date +%s)
  echo ">> $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "| $name | $rc | $(( $(date +%s) - start )) |" >> "$SUMMARY"
  [[ $rc -eq 0 ]] || { failed=1; echo "   $name failed (exit $rc): see $OUT/$name.log"; }
  return $rc
}

step cuda_tests "$PY" -m pytest -q -p no:cacheprovider tests/nws/test_search.py -k "cuda or gpu"
step bench "$PY" -m bench.search --device cuda --repeats 5
RUNS=$OUT/runs
step pretrain "$PY" -m pipeline run -c configs/demo.yaml --runs-dir "$RUNS" --only pretrain \
  && step incremental "$PY" -m pipeline run -c configs/demo.yaml --runs-dir "$RUNS"

"$PY" - "$OUT" >> "$SUMMARY" <<'PY'
"""The numbers of the summary, read from the logs and the demo's outputs."""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
print()
bench = out / "bench.log"
if bench.is_file():
    text = bench.read_text()
    rows = [line for line in text.splitlines() if line.startswith("|") or line.startswith("Machine:")]
    print("## bench.search on the GPU\n")
    print("\n".join(rows))
    cached = re.search(r"\| search-mode step, cached search \(layer default\) \| 256 \| [\d.]+ \| ([\d.]+)×", text)
    if cached:
        ratio = float(cached.group(1))
        print(f"\nSearch-mode step ÷ plain step at batch 256, cached: {ratio:.2f} (aim ≤ 1.10: "
              f"{'met' if ratio <= 1.10 else 'NOT met'})")
seed = out / "runs" / "demo" / "seed0"
done = seed / "pretrain" / "pretrain.json"
if done.is_file():
    doc = json.loads(done.read_text())
    print("\n## Demo pretraining on the GPU\n")
    for kind in ("nws", "plain"):
        if kind in doc:
            d = doc[kind]
            keys = ("precision", "global_batch", "test_accuracy", "train_seconds", "images_per_s")
            print(f"- {kind}: " + ", ".join(f"{k} {d[k]:.4g}" if isinstance(d[k], float) else f"{k} {d[k]}"
                                            for k in keys if k in d))
log = out / "incremental.log"
if log.is_file():
    devices = sorted(set(re.findall(r"process\(es\) on (\w+)", log.read_text())))
    print(f"\n## Demo incremental stage (device: {', '.join(devices) or '?'})\n")
    print("| method | avg acc (%) | memory (MiB) | train s |\n| --- | ---: | ---: | ---: |")
    for metrics in sorted((seed / "incremental").glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        print(f"| {metrics.parent.name} | {100 * m['final_avg_acc']:.1f} | {m['memory_bytes']['total'] / 2**20:.3f} "
              f"| {m['train_seconds']:.1f} |")
PY
echo "summary: $SUMMARY"
cat "$SUMMARY"
exit $failed
