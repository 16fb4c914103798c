"""The results table as files for other tools: results.csv (one row per method, mean and std in columns of their
own, full precision, for spreadsheets and scripts) and results.tex (a booktabs tabular, mean ± std as in the
paper's Tables 1 and 2, to paste into a paper). Both hold the rows of results.md's main table, written atomically
beside it; the csv module, not pandas, since the table is a handful of rows.

Units: accuracies, forgetting, BWT and FWT in %, memory in MiB (2^20 bytes), as in results.md: as stored (the
paper's) and coded (incremental.coded). A std column is empty for a method run with one seed; a cell is empty (csv)
or "--" (tex) where metrics.json has no value (FWT, coded memory: runs written before they were measured).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from base.layout import RESULTS_CSV, RESULTS_TEX
from nws.io import atomic_write_bytes
from nws.memory import MIB
from pipeline.aggregate import is_number, mean, seed_values, std

# (results.json key, column name, its header in results.tex, scale): the columns after the per-task accuracies
SUMMARY = (("final_avg_acc", "avg acc", r"Avg Acc (\%)", 100.0),
           ("forgetting", "forgetting", r"Forgetting (\%)", 100.0),
           ("bwt", "BWT", r"BWT (\%)", 100.0),
           ("fwt", "FWT", r"FWT (\%)", 100.0))


def memory_digits(results: dict) -> int:
    """Decimals of memory in MiB: 3 when some method stores less than 10 MiB (the demo's), else 1."""
    sizes = [mean(d["memory_bytes"]["total"]) / MIB for d in results["methods"].values()]
    return 1 if min(sizes) >= 10 else 3


def coded_memory(doc: dict):
    """The aggregated `memory_coded_bytes` total of one method (incremental.coded), None when a seed's metrics.json
    was written before it existed (shown as "–": never a mean over some of the seeds)."""
    value = (doc.get("memory_coded_bytes") or {}).get("total")
    return None if value is None or None in seed_values(value) else value


def labels(results: dict) -> list[str]:
    return results.get("task_labels") or results["tasks"]


def columns(results: dict) -> list[tuple[str, str]]:
    """(name, unit) of every numeric column, in table order."""
    tasks = [(f"acc {label}", "%") for label in labels(results)]
    return tasks + [(name, "%") for _, name, _, _ in SUMMARY] + [("memory", "MiB"), ("memory coded", "MiB")]


def cells(doc: dict) -> list[tuple[float | None, float | None]]:
    """(mean, std) of every numeric column of one method's aggregated metrics, in the units of `columns`."""
    values = [(a, 100.0) for a in doc["acc_matrix"][-1]] + [(doc.get(key), scale) for key, _, _, scale in SUMMARY]
    values += [(doc["memory_bytes"]["total"], 1 / MIB), (coded_memory(doc), 1 / MIB)]
    out = []
    for value, scale in values:
        m, s = mean(value), std(value)
        out.append((scale * m if is_number(m) else None, scale * s if is_number(s) else None))
    return out


def to_csv(results: dict) -> str:
    header = ["method", "seeds"] + [f"{name} {part} ({unit})" for name, unit in columns(results)
                                    for part in ("mean", "std")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for name, doc in results["methods"].items():
        seeds = results.get("method_seeds", {}).get(name) or [None] * len(seed_values(doc["final_avg_acc"]))
        row = [name, " ".join("" if s is None else str(s) for s in seeds)]
        row += ["" if v is None else repr(v) for pair in cells(doc) for v in pair]
        writer.writerow(row)
    return buf.getvalue()


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def _tex_cell(m: float | None, s: float | None, digits: int) -> str:
    if m is None:
        return "--"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} $\\pm$ {s:.{digits}f}"


def to_latex(results: dict) -> str:
    """One row per method; needs \\usepackage{booktabs}. A task accuracy at chance in some seed is marked `*`, as in
    results.md (incremental.chance)."""
    head = ["Method"] + [latex_escape(label) for label in labels(results)]
    head += [tex for _, _, tex, _ in SUMMARY] + ["Memory (MiB)", "Coded (MiB)"]
    mem_digits = memory_digits(results)
    at_chance = {(c["method"], c["task"]) for c in (results.get("chance") or {}).get("flagged", [])}
    lines = ["% results of " + latex_escape(results.get("experiment") or "") + "; needs \\usepackage{booktabs}",
             "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    for name, doc in results["methods"].items():
        pairs, T = cells(doc), len(results["tasks"])
        row = [_tex_cell(m, s, 1) + ("*" if (name, task) in at_chance else "")
               for (m, s), task in zip(pairs[:T], results["tasks"], strict=True)]
        row += [_tex_cell(m, s, 1) for m, s in pairs[T:-2]] + [_tex_cell(m, s, mem_digits) for m, s in pairs[-2:]]
        lines.append(" & ".join([latex_escape(name)] + row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> list[Path]:
    """results.csv and results.tex in `out`, each written atomically."""
    return [atomic_write_bytes(out / RESULTS_CSV, to_csv(results).encode()),
            atomic_write_bytes(out / RESULTS_TEX, to_latex(results).encode())]
