"""Progress in logs (issue 19, item 3): on a terminal tqdm redraws its bar; in a log (a Slurm job's output) the bars
of data prep ran together through carriage returns. There a bar prints whole lines, every LOG_SECONDS and once at
its end, and a bar over sooner prints nothing."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

from data_prep import progress

ROOT = Path(__file__).resolve().parents[2]


def test_a_bar_in_a_log_prints_whole_lines_periodically(monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.2)
    log = io.StringIO()
    bar = progress.bar(total=10, desc="task00/train", stream=log, tty=False)
    for _ in range(10):
        time.sleep(0.1)
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and all(line.startswith("task00/train:") for line in lines)
    assert 2 <= len(lines) <= 6, lines  # about one every 0.2 s over 1 s, not one per update
    assert "10/10" in lines[-1] and len(set(lines)) == len(lines)


def test_a_quick_bar_in_a_log_prints_nothing_and_a_terminal_gets_tqdm():
    log = io.StringIO()
    with progress.bar(total=3, desc="quick", stream=log, tty=False) as bar:
        bar.update(3)
    assert log.getvalue() == ""
    terminal = io.StringIO()
    with progress.bar(total=3, desc="quick", stream=terminal, tty=True) as bar:
        bar.update(3)
    assert "\r" in terminal.getvalue()  # tqdm's own redraws


def test_data_prepare_writes_no_carriage_return_into_a_log(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "data", "prepare", "digits", "--out", str(tmp_path / "d"),
                           "--format", "wds,ffcv", "--tasks", "blocks", "--classes-per-task", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert "6 unit(s) built" in proc.stdout
