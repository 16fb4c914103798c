"""The report's figures, one function per figure, drawn with matplotlib's object API on the Agg canvas (no pyplot, so
no global backend or figure state) and written atomically as PNG.

Figures follow seed 004_: task-wise accuracy per method (Fig. 3), layer-wise kernel utilisation ratio and layer
sparsity as layers x tasks heatmaps (Fig. 4), and the per-layer distributions of selected kernel indices, the
selection rate SR_i = h_i / d of every pool index (appendix §6 of 001_). Added for the report: the accuracy
matrix R of each method, its memory and its average accuracy against the number of learned tasks, and every method
as one point of accuracy against memory (the data of the last two: pipeline.headline).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nws.io import atomic_write_bytes
from pipeline.headline import Point

DPI = 120
# beyond this many tasks (SupSup's long permuted sequences) a plot stops growing with the tasks and names them by
# number on integer ticks: 100 named ticks made a 6,800-pixel-wide line plot and a 61-inch accuracy matrix
MANY_TASKS = 20


def _task_ticks(axis, tasks: list[str], start: int = 0, **named) -> None:
    """Ticks naming each task where they fit; past MANY_TASKS, integer task numbers (from `start`) chosen by
    matplotlib."""
    if len(tasks) <= MANY_TASKS:
        ticks = range(start, start + len(tasks))
        axis.set_ticks(ticks, tasks, **named)
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _grid(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _annotate(ax, values: np.ndarray, text, dark: float) -> None:
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isnan(values[i, j]):
                ax.text(j, i, text(i, j), ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < dark else "black")


def accuracy_matrix(path: Path, R: list[list[float | None]], R_std: list[list[float | None]] | None,
                    tasks: list[str], title: str) -> Path:
    """R[i][j] (%): accuracy on task j (columns) after learning task i (rows); mean ± std over seeds."""
    values = 100 * _grid(R)
    spread = 100 * _grid(R_std) if R_std is not None else np.full_like(values, np.nan)
    size = min(max(3.0, 0.6 * len(tasks) + 1.5), 8.0)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
    if len(tasks) <= 12:
        _annotate(ax, values, lambda i, j: f"{values[i, j]:.1f}" + (
            "" if np.isnan(spread[i, j]) else f"\n±{spread[i, j]:.1f}"), dark=60)
    _task_ticks(ax.xaxis, tasks, rotation=45, ha="right")
    _task_ticks(ax.yaxis, [f"after {t}" for t in tasks])
    ax.set_xlabel("evaluated task" + (" (0 = the first)" if len(tasks) > MANY_TASKS else ""))
    if len(tasks) > MANY_TASKS:
        ax.set_ylabel("after learning task")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return save(fig, path)


def task_accuracy(path: Path, accuracy: dict[str, tuple[list[float], list[float | None]]], tasks: list[str],
                  chance: list[float] | None = None) -> Path:
    """Fig. 3: final accuracy on every task (after the last task), one bar per method, with the std over seeds;
    `chance` (1/classes per task) is drawn as a dashed line over each task's bars, so a method at chance shows."""
    fig = Figure(figsize=(min(max(5.0, 0.5 * len(tasks) * max(len(accuracy), 1) + 2), 12.0), 3.5))
    ax = fig.add_subplot()
    width = 0.8 / max(len(accuracy), 1)
    for k, (method, (mean, std)) in enumerate(accuracy.items()):
        x = np.arange(len(tasks)) + (k - (len(accuracy) - 1) / 2) * width
        err = None if all(s is None for s in std) else [100 * (s or 0.0) for s in std]
        ax.bar(x, [100 * m for m in mean], width, yerr=err, capsize=2, label=method)
    for j, level in enumerate(chance or []):
        ax.hlines(100 * level, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label="chance" if j == 0 else None)
    _task_ticks(ax.xaxis, tasks, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Task-wise accuracy after the last task")
    ax.legend(fontsize=8)
    return save(fig, path)


def memory_vs_tasks(path: Path, curves: dict[str, tuple[list[float], list[float | None]]]) -> Path:
    """Memory (MiB, measured from the stored files) against the number of learned tasks, every method on one plot;
    a log scale when the methods differ by more than 30x (Finetune against NWS)."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for method, (mean, std) in curves.items():
        x = np.arange(1, len(mean) + 1)
        err = None if all(s is None for s in std) else [s or 0.0 for s in std]
        ax.errorbar(x, mean, yerr=err, marker="o" if len(mean) <= MANY_TASKS else None, capsize=2, label=method)
    if _wide([v for m, _ in curves.values() for v in m]):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of learned tasks")
    ax.set_ylabel("memory (MiB)")
    ax.set_title("Memory against the number of tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def _wide(values: list[float], ratio: float = 30.0) -> bool:
    """A log scale shows values spread over more than `ratio`x (Finetune's memory against NWS's)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > ratio


def accuracy_vs_memory(path: Path, points: dict[str, Point]) -> Path:
    """Every method as one point: final average accuracy against the total memory of its stored files, with the
    std over seeds as error bars, and a hollow marker of the same colour at the memory of the same files coded
    (incremental.coded), joined by a dotted line; up and to the left is better."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    for method, p in points.items():
        bars = ax.errorbar([p.memory_mib], [100 * p.accuracy], xerr=None if p.memory_std is None else [p.memory_std],
                    yerr=None if p.accuracy_std is None else [100 * p.accuracy_std], marker="o", capsize=3,
                    label=method)
        if p.coded_mib is not None:
            colour = bars[0].get_color()
            ax.plot([p.memory_mib, p.coded_mib], [100 * p.accuracy] * 2, ":", color=colour, linewidth=1)
            ax.plot([p.coded_mib], [100 * p.accuracy], "o", mfc="none", color=colour)
        ax.annotate(method, (p.memory_mib, 100 * p.accuracy), xytext=(5, 5), textcoords="offset points",
                    fontsize=8)
    if _wide([p.memory_mib for p in points.values()] + [p.coded_mib for p in points.values() if p.coded_mib]):
        ax.set_xscale("log")
    coded = any(p.coded_mib is not None for p in points.values())
    ax.set_xlabel("memory (MiB, measured from the stored files" + ("; hollow: coded)" if coded else ")"))
    ax.set_ylabel("final average accuracy (%)")
    ax.set_title("Accuracy against memory")
    ax.grid(alpha=0.3)
    return save(fig, path)


def avg_accuracy_vs_tasks(path: Path, curves: dict[str, tuple[list[float], list[float | None]]],
                          tasks: list[str]) -> Path:
    """After each task, the average accuracy over the tasks learned so far, one line per method with a band of ±
    the std over seeds; the x ticks name the task just learned."""
    many = len(tasks) > MANY_TASKS
    fig = Figure(figsize=(7.0 if many else max(5.5, 0.7 * len(tasks) + 2), 3.8))
    ax = fig.add_subplot()
    for method, (mean, std) in curves.items():
        x, y = np.arange(1, len(mean) + 1), 100 * np.array(mean)
        (line,) = ax.plot(x, y, marker=None if many else "o", label=method)
        if any(s is not None for s in std):
            band = 100 * np.array([s or 0.0 for s in std])
            ax.fill_between(x, y - band, y + band, color=line.get_color(), alpha=0.2, linewidth=0)
    # one class per line under the task's number, so long class names do not run into the next tick's
    _task_ticks(ax.xaxis, [f"{t + 1}\n" + name.replace(",", "\n") for t, name in enumerate(tasks)], start=1,
                fontsize=7 if len(tasks) > 5 else 8)
    ax.set_xlabel("number of learned tasks (the last one)")
    ax.set_ylabel("average accuracy so far (%)")
    ax.set_ylim(top=min(100.5, ax.get_ylim()[1]))  # the data's own range: methods within a point stay apart
    ax.set_title("Average accuracy against the number of tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def layer_heatmap(path: Path, values: list[list[float | None]], layers: list[str], tasks: list[str], title: str,
                  label: str) -> Path:
    """Fig. 4: a per-layer quantity in [0, 1] (rows: layers, 1 = the first) for every task (columns)."""
    grid = _grid(values)
    fig = Figure(figsize=(min(max(3.5, 0.55 * len(tasks) + 2.5), 12.0), max(3.0, 0.3 * len(layers) + 1)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="magma", vmin=0, vmax=1, aspect="auto")
    if len(tasks) <= 10:
        _annotate(ax, grid, lambda i, j: f"{grid[i, j]:.2f}", dark=0.5)
    _task_ticks(ax.xaxis, tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [f"{i + 1} {name}" for i, name in enumerate(layers)], fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    return save(fig, path)


def index_distributions(path: Path, counts: dict[str, np.ndarray], title: str) -> Path:
    """Appendix §6: one panel per layer, x the pool index, y its selection rate SR_i = h_i / d (d = kernels in
    the layer), so every panel sums to 1. Margins are fixed in inches (the title above the first row's panel
    titles, the x labels below the last panel of each column): tight_layout over ~20 panels is slow."""
    cols = min(4, len(counts))
    rows = math.ceil(len(counts) / cols)
    top, bottom = 0.9, 0.6  # inches
    height = 1.9 * rows + top + bottom
    fig = Figure(figsize=(3.2 * cols, height))
    for k, (layer, h) in enumerate(counts.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        h = np.asarray(h, dtype=float)
        ax.stairs(h / max(h.sum(), 1.0), np.arange(len(h) + 1) - 0.5, fill=True, color="tab:blue")  # one artist
        ax.set_title(f"{k + 1} {layer}", fontsize=8)
        ax.set_xlim(-0.5, len(h) - 0.5)
        ax.tick_params(labelsize=6)
        if k % cols == 0:
            ax.set_ylabel("selection rate SR", fontsize=7)
        if k + cols >= len(counts):  # the lowest panel of its column
            ax.set_xlabel("kernel index in the layer's pool", fontsize=7)
    fig.suptitle(title, y=1 - 0.25 / height, va="top")
    fig.subplots_adjust(hspace=0.75, wspace=0.3, top=1 - top / height, bottom=bottom / height)
    return save(fig, path)
