"""Plots of a long task sequence (issue 16's 100 permuted tasks) keep a readable size: 100 named ticks made the
average-accuracy plot 6,777 pixels wide and the accuracy matrix 61 inches square; past MANY_TASKS the figures stop
growing and number the tasks on integer ticks, while a short sequence keeps its task names."""

import struct

import numpy as np

from pipeline import plots


def png_size(path):
    """(width, height) in pixels from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_a_hundred_tasks_stay_readable(tmp_path):
    T = 100
    tasks = [f"perm {t}" for t in range(T)]
    rng = np.random.default_rng(0)
    R = [[float(rng.uniform(0.6, 0.9)) for _ in range(t + 1)] + [None] * (T - t - 1) for t in range(T)]
    curve = {"nws": ([float(x) for x in rng.uniform(0.6, 0.7, T)], [None] * T)}
    drawn = {
        "matrix": plots.accuracy_matrix(tmp_path / "m.png", R, None, tasks, "R"),
        "tasks": plots.task_accuracy(tmp_path / "t.png", {"nws": (R[-1], [None] * T)}, tasks, [0.1] * T),
        "avg": plots.avg_accuracy_vs_tasks(tmp_path / "a.png", curve, tasks),
        "memory": plots.memory_vs_tasks(tmp_path / "mem.png", {"nws": (list(np.linspace(0.5, 3.5, T)), [None] * T)}),
        "layers": plots.layer_heatmap(tmp_path / "l.png", [[0.5] * T for _ in range(8)], [f"l{i}" for i in range(8)],
                                      tasks, "KUR", "kur"),
    }
    for name, path in drawn.items():
        width, height = png_size(path)
        assert width <= 12 * plots.DPI + 200 and height <= 9 * plots.DPI + 200, (name, width, height)
    short = tasks[:5]
    fig_path = plots.avg_accuracy_vs_tasks(tmp_path / "s.png", {"nws": ([0.7] * 5, [None] * 5)}, short)
    assert png_size(fig_path)[0] < png_size(drawn["avg"])[0]  # a short sequence: its own small, named plot
