"""The report of an experiment (issue 7): results.json, results.md, results.csv, results.tex and plots/, aggregated
over its seeds.

Reads what the incremental stage wrote for every seed run (runs/<name>/seed<S>/incremental/<method>/metrics.json,
with that run's resolved config.yaml) and writes runs/<name>/report/:
- results.json: benchmark, seeds, tasks, and under `methods` every method's metrics.json aggregated over seeds
  (pipeline.aggregate: numbers -> mean and std, lists elementwise);
- results.md: the layout of seed 004_ Tables 1 and 2 (method, task-wise accuracy, average accuracy, memory as
  stored), with forgetting, BWT, FWT, the coded memory (incremental.coded) and training time added, mean ± std over
  seeds ("–" where a metrics.json written before FWT or coded memory has no value); and the appendix tables'
  per-seed rows;
- results.csv, results.tex: the rows of that table for spreadsheets and papers (pipeline.export);
- plots/: pipeline.plots' figures (accuracy matrices, task-wise accuracy, memory and average accuracy against the
  number of tasks, accuracy against memory, and for NWS Fig. 4's heatmaps and the appendix §6 index distributions
  from the stored histogram files).
Tasks are labelled by their classes where the data folder's tasks.json knows them (pipeline.task_labels): results
.json keeps the task names under `tasks` and the labels under `task_labels`.
Logged to MLflow (with a tracker): the whole report to the pipeline's parent run, and each method run's own figures to
that method's child run (pipeline.run_plots).
A standalone `nws incremental` run (runs/<name>/incremental/<method>/metrics.json, no seed folders) is reported as
one run, with the experiment config given by the caller. Methods that were not run do not appear.

Every final task accuracy of every seed is tested against chance (incremental.chance: one-sided binomial test
against 1/classes on the task's test-set size): results.json `chance` lists the flagged cells (method, seed, task,
accuracy, n, classes, p) and the runs that could not be tested (a metrics.json without test-set sizes);
results.md marks a flagged task accuracy `*` (at chance in at least one seed) and lists the cells; the MLflow run
the report is logged to gets the tag `chance_tasks` (method/seed<S>/task, comma-separated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from base.layout import (
    PLOTS,
    REPORT,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_MD,
    RESULTS_TEX,
    SEED_CONFIG,
    STAGE_RECORD,
    TASK_INFERENCE,
    TASKS,
)
from incremental import chance
from nws.io import atomic_write_bytes, atomic_write_json, load_tensors, read_json, sha256_file
from nws.memory import MIB
from pipeline import export, headline, plots
from pipeline.aggregate import PAPER, STD_NOTE, aggregate, is_number, mean, one_config, seed_values, std
from pipeline.task_labels import task_labels

REQUIRED = ("tasks", "acc_matrix", "final_avg_acc", "forgetting", "bwt", "memory_bytes", "train_seconds")
SEED_DIR = re.compile(r"seed(\d+)")


@dataclass
class MethodRun:
    """One method's metrics.json of one seed run."""

    seed: int | None
    path: Path
    doc: dict


def load_config(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; every seed run keeps its resolved config there "
                                "(written by `nws pipeline run`)")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected the resolved experiment config (a mapping), got {type(cfg).__name__}")
    return cfg


def run_folders(experiment_dir: Path, config: dict | None) -> list[tuple[int | None, Path, dict]]:
    """(seed, folder holding incremental/, resolved config) of every run that reached the incremental stage."""
    seeds = sorted((int(m.group(1)), p) for p in experiment_dir.iterdir()
                   if p.is_dir() and (m := SEED_DIR.fullmatch(p.name)))
    if seeds:
        return [(s, p, load_config(p / SEED_CONFIG)) for s, p in seeds if (p / "incremental").is_dir()]
    if not (experiment_dir / "incremental").is_dir():
        return []
    own = experiment_dir / SEED_CONFIG
    cfg = load_config(own) if own.is_file() or config is None else config
    return [(cfg.get("seeds", [None])[0], experiment_dir, cfg)]


def check_recorded(path: Path, stage_folder: Path) -> None:
    """A metrics.json that the pipeline's stage record (stage.json) lists must still have the recorded bytes: a
    hand-edited one is refused, not published (issue 17). Runs made by `nws incremental` alone have no record."""
    record = stage_folder / STAGE_RECORD
    if not record.is_file():
        return
    recorded = read_json(record).get("files") or {}
    name = str(path.relative_to(stage_folder))
    if name in recorded and recorded[name] != sha256_file(path):
        raise ValueError(f"{path}: changed since the incremental stage recorded it in {record}; an edited result "
                         "is not reported (run the stage again: nws pipeline run -c CONFIG --from incremental)")


def collect(experiment_dir: Path, config: dict | None = None) -> tuple[list[dict], dict[str, list[MethodRun]]]:
    """The resolved configs of the runs and {method: its runs, in seed order}; clear errors when nothing is there."""
    if not experiment_dir.is_dir():
        raise FileNotFoundError(f"{experiment_dir}: no such experiment folder (runs/<experiment name>)")
    runs = run_folders(experiment_dir, config)
    one_config([(str(folder / SEED_CONFIG), cfg) for _, folder, cfg in runs])
    found: dict[str, list[MethodRun]] = {}
    for seed, folder, _ in runs:
        for path in sorted((folder / "incremental").glob("*/metrics.json")):
            doc = read_json(path)
            missing = [k for k in REQUIRED if k not in doc] if isinstance(doc, dict) else list(REQUIRED)
            if missing:
                raise ValueError(f"{path}: not a metrics.json of the incremental stage (missing {', '.join(missing)})")
            check_recorded(path, folder / "incremental")
            found.setdefault(doc.get("method", path.parent.name), []).append(MethodRun(seed, path, doc))
    if not found:
        raise FileNotFoundError(f"{experiment_dir}: nothing to report: no seed<S>/incremental/<method>/metrics.json "
                                "(run the incremental stage first: nws pipeline run -c CONFIG)")
    return [cfg for _, _, cfg in runs], found


def method_order(configs: list[dict], found: dict) -> list[str]:
    listed = configs[0].get("incremental", {}).get("methods", []) if configs else []
    return [m for m in listed if m in found] + sorted(m for m in found if m not in listed)


def common_tasks(found: dict[str, list[MethodRun]]) -> list[str]:
    first = next(iter(found.values()))[0]
    for runs in found.values():
        for run in runs:
            if run.doc["tasks"] != first.doc["tasks"]:
                raise ValueError(f"{run.path}: tasks {run.doc['tasks']} differ from {first.path}: "
                                 f"{first.doc['tasks']}; one table needs the same tasks for every method and seed")
    return list(first.doc["tasks"])


def make_report(experiment_dir: str | Path, out_dir: str | Path | None = None, tracker=None,
                config: dict | None = None, data_dir: str | Path | None = None) -> dict:
    """Write results.json, results.md, results.csv, results.tex and plots/ (default runs/<name>/report) and return
    results.json's content; with a tracker (base.tracking.Run) they are logged as artifacts and the headline
    numbers as metrics. Task labels come from <data_dir>/tasks.json (default runs/<name>/data, where the pipeline
    prepares the data)."""
    experiment_dir = Path(experiment_dir)
    data_dir = Path(data_dir) if data_dir is not None else experiment_dir / "data"
    configs, found = collect(experiment_dir, config)
    out = Path(out_dir) if out_dir is not None else experiment_dir / REPORT
    order = method_order(configs, found)
    cfg = configs[0]
    results = {
        "experiment": cfg.get("name"),
        "benchmark": cfg.get("data", {}).get("source"),
        "data": cfg.get("data"),
        "seeds": sorted({r.seed for runs in found.values() for r in runs if r.seed is not None}),
        "tasks": (tasks := common_tasks(found)),
        "task_labels": task_labels(tasks, data_dir / TASKS),
        "std": STD_NOTE,
        # one seed: its metrics.json as it is; several: every number as mean/std/n/values (pipeline.aggregate)
        "methods": {m: aggregate([r.doc for r in found[m]]) if len(found[m]) > 1 else found[m][0].doc
                    for m in order},
        "method_seeds": {m: [r.seed for r in found[m]] for m in order},
        "sources": {m: [str(r.path.relative_to(experiment_dir)) for r in found[m]] for m in order},
        "task_inference": task_inference(found, order),
        "chance": chance_test(found, order),
    }
    drawn = draw(results, found, out / PLOTS, cfg.get("model"))
    results["plots"] = [str(p.relative_to(out)) for p in drawn]
    for stale in set((out / PLOTS).glob("*.png")) - set(drawn):
        stale.unlink()  # a figure of an earlier report whose method or task is gone
    atomic_write_json(out / RESULTS_JSON, results)
    atomic_write_bytes(out / RESULTS_MD, markdown(results).encode())
    export.write(results, out)
    if tracker is not None:
        from pipeline.run_plots import log_method_plots

        log(tracker, results, out)
        # each run's figures in its child run
        log_method_plots(tracker, found, results["tasks"], results["task_labels"], cfg.get("model"), draw)
    return results


def chance_test(found: dict[str, list[MethodRun]], order: list[str]) -> dict:
    """The chance test of every method's final accuracy on every task in every seed run: the flagged cells, and
    the runs whose metrics.json lacks the test-set sizes (written before they were recorded) as not tested."""
    flagged, untested = [], []
    for m in order:
        for r in found[m]:
            cells, why = chance.check_run({**r.doc, "method": m}, r.seed)
            flagged += [c.to_dict() for c in cells if c.flagged]
            if why:
                untested.append({"method": m, "seed": r.seed, "reason": why})
    return {"alpha": chance.ALPHA, "test": chance.TEST, "flagged": flagged, "not_tested": untested}


def chance_cells(results: dict) -> list[chance.Cell]:
    """The flagged cells of a results.json, as chance.Cell (for warnings and tags)."""
    return [chance.Cell(**c) for c in (results.get("chance") or {}).get("flagged", [])]


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def network_order(model: dict | None, layers: list[str]) -> list[str]:
    """`layers` in the order of the network's modules (metrics.json keeps them sorted by name, which puts `fc`
    second): the layer numbering of seed 004_ Fig. 4 and appendix §6 (1 = first conv, 21 = FC of a ResNet-18)."""
    from base.config import ModelConfig

    if not model:
        return list(layers)
    rank = {name: i for i, (name, _) in enumerate(ModelConfig(**model).build(num_classes=2).named_modules())}
    return sorted(layers, key=lambda name: rank.get(name, len(rank)))


def draw(results: dict, found: dict[str, list[MethodRun]], folder: Path, model: dict | None = None) -> list[Path]:
    tasks, methods = results["task_labels"], results["methods"]
    out = []
    for name, doc in methods.items():
        out.append(plots.accuracy_matrix(folder / f"acc_matrix_{_file_name(name)}.png", mean(doc["acc_matrix"]),
                                         std(doc["acc_matrix"]), tasks, f"Accuracy matrix: {name}"))
    final = {name: (mean(doc["acc_matrix"])[-1], std(doc["acc_matrix"])[-1]) for name, doc in methods.items()}
    levels = next((mean(d["task_classes"]) for d in methods.values() if d.get("task_classes")), None)
    out.append(plots.task_accuracy(folder / "task_accuracy.png", final, tasks,
                                   chance=[1 / v for v in levels] if levels else None))
    curves = {name: ([b / MIB for b in mean(doc["memory_bytes_cumulative"])],
                     [None if s is None else s / MIB for s in std(doc["memory_bytes_cumulative"])])
              for name, doc in methods.items() if doc.get("memory_bytes_cumulative")}
    if curves:
        out.append(plots.memory_vs_tasks(folder / "memory_vs_tasks.png", curves))
    out.append(plots.accuracy_vs_memory(folder / "accuracy_vs_memory.png", headline.memory_accuracy(methods)))
    out.append(plots.avg_accuracy_vs_tasks(folder / "avg_accuracy_vs_tasks.png",
                                           headline.avg_accuracy_curves(methods), tasks))
    for name, doc in methods.items():
        if doc.get("kur") and doc.get("layer_sparsity"):
            layers = network_order(model, list(doc["kur"]))
            out += fig4(folder, name, doc, tasks, layers)
            out += index_figures(folder, name, found[name][0], tasks, layers)
    return out


def fig4(folder: Path, name: str, doc: dict, tasks: list[str], layers: list[str]) -> list[Path]:
    prefix = _file_name(name)
    return [plots.layer_heatmap(folder / f"{prefix}_{key}.png", [mean(doc[key][layer]) for layer in layers], layers,
                                tasks, f"{name}: {title} (Fig. 4)", label)
            for key, title, label in (("kur", "kernel utilisation ratio", "KUR"),
                                      ("layer_sparsity", "layer sparsity", "LS"))]


def index_figures(folder: Path, name: str, run: MethodRun, tasks: list[str], layers: list[str]) -> list[Path]:
    """Appendix §6 from the stored selection counts of one run (the first seed's; index orders differ between
    seeds, so counts are not averaged)."""
    out = []
    for t, rel in enumerate(run.doc.get("index_histograms") or []):
        counts = {k: v.numpy() for k, v in load_tensors(run.path.parent / rel).items()}
        order = [layer for layer in layers if layer in counts]
        counts = {layer: counts[layer] for layer in order + sorted(set(counts) - set(order))}
        seed = "" if run.seed is None else f" (seed {run.seed})"
        out.append(plots.index_distributions(folder / f"{_file_name(name)}_index_distribution_{t:02d}.png", counts,
                                             f"{name}: selected kernel indices of task {tasks[t]}{seed}"))
    return out


def _fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    m, s = mean(value), std(value)
    if not is_number(m):
        return "–"
    text = f"{scale * m:.{digits}f}"
    return text if s is None else f"{text} ± {scale * s:.{digits}f}"


INFERENCE_KEYS = ("inference_acc", "acc_inferred", "acc_given")


def task_inference(found: dict[str, list[MethodRun]], order: list[str]) -> dict:
    """{method: {rule: {inference_acc, acc_inferred, acc_given}}} of the methods evaluated with the task id unknown
    (`nws incremental --task-inference` writes task_inference.json beside metrics.json); several seeds aggregated."""
    out = {}
    for m in order:
        docs = [read_json(r.path.parent / TASK_INFERENCE) for r in found[m]
                if (r.path.parent / TASK_INFERENCE).is_file()]
        if not docs:
            continue
        per_seed = [{rule: {k: v[k] for k in INFERENCE_KEYS} for rule, v in d["rules"].items()} for d in docs]
        out[m] = aggregate(per_seed) if len(per_seed) > 1 else per_seed[0]
        out[m]["batch_size"] = docs[0]["batch_size"]
    return out


def inference_lines(results: dict) -> list[str]:
    """The task-inference table (SupSup's GNu setting): how often the task of a test batch is found, and the
    accuracy when the batch is classified by the inferred task's model."""
    table = results.get("task_inference") or {}
    if not table:
        return []
    lines = ["", "## Task id unknown (task inference from the stored models)", "",
             "| Method | Rule | Batch | Task inferred (%) | Acc, inferred id (%) | Acc, given id (%) |",
             "|---|---|---:|---:|---:|---:|"]
    for name, rules in table.items():
        for rule, v in rules.items():
            if rule == "batch_size":
                continue
            cells = [_fmt(v[k], 100) for k in INFERENCE_KEYS]
            lines.append(f"| {name} | {rule} | {rules['batch_size']} | " + " | ".join(cells) + " |")
    return lines


def chance_lines(results: dict) -> list[str]:
    """The legend of the `*` marks and the flagged cells (every seed), and the runs that could not be tested."""
    test = results.get("chance") or {}
    cells, untested = test.get("flagged", []), test.get("not_tested", [])
    lines, label = [], dict(zip(results["tasks"], export.labels(results), strict=True))
    if cells:
        lines += ["", f"`{chance.MARK}` marks a task accuracy that is not significantly above chance in at least one "
                  f"seed ({test['test']}, p >= {test['alpha']}):", "",
                  "| Method | Seed | Task | Acc (%) | Test images | Classes | Chance (%) | p |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {c['method']} | {'–' if c['seed'] is None else c['seed']} | {label.get(c['task'], c['task'])} | "
                  f"{100 * c['accuracy']:.1f} | {c['n']} | {c['classes']} | {100 * c['chance']:.1f} | "
                  f"{c['p_value']:.2g} |" for c in cells]
    for u in untested:
        seed = "" if u["seed"] is None else f" (seed {u['seed']})"
        lines += ["", f"Chance test not possible for {u['method']}{seed}: {u['reason']}."]
    return lines


def markdown(results: dict) -> str:
    tasks, seeds = results["tasks"], results["seeds"]
    digits = export.memory_digits(results)
    lines = [f"# Results: {results['experiment']} ({results['benchmark']}, {len(tasks)} tasks)", "",
             f"Seeds: {', '.join(map(str, seeds)) or 'unknown'}; mean ± {STD_NOTE}. Accuracies in % "
             "on each task's test split (a task is named by its classes), measured on the models rebuilt from the "
             "stored files; memory in MiB (2^20 bytes) of those files, shared pools included, as stored (the "
             "paper's convention) and coded (the same files under the best lossless coding: masks and owner maps "
             "entropy-coded, floats as stored; – for runs made before it). The same rows: "
             f"[{RESULTS_CSV}]({RESULTS_CSV}), [{RESULTS_TEX}]({RESULTS_TEX}).", "",
             "## Task-wise accuracy, average accuracy, forgetting, BWT, FWT and memory", "",
             f"As Tables 1 and 2 of {PAPER}.", "",
             "| Method | " + " | ".join(export.labels(results)) + " | Avg Acc (%) | Forgetting (%) | BWT (%) | "
             "FWT (%) | Memory (MiB) | Coded memory (MiB) | Train time (s) |",
             "|---|" + "---:|" * (len(tasks) + 7)]
    at_chance = {(c["method"], c["task"]) for c in results.get("chance", {}).get("flagged", [])}
    for name, doc in results["methods"].items():
        final = doc["acc_matrix"][-1]
        cells = [chance.mark(_fmt(a, 100), (name, t) in at_chance) for t, a in zip(tasks, final, strict=True)]
        cells += [_fmt(doc["final_avg_acc"], 100), _fmt(doc["forgetting"], 100), _fmt(doc["bwt"], 100),
                  _fmt(doc.get("fwt"), 100), _fmt(doc["memory_bytes"]["total"], 1 / MIB, digits),
                  _fmt(export.coded_memory(doc), 1 / MIB, digits), _fmt(doc["train_seconds"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += chance_lines(results)
    lines += ["", "## Per seed (appendix tables)", "", "| Method | Seed | Avg Acc (%) | Memory (MiB) | "
              "Coded memory (MiB) |", "|---|---|---:|---:|---:|"]
    for name, doc in results["methods"].items():
        accs, mems = seed_values(doc["final_avg_acc"]), seed_values(doc["memory_bytes"]["total"])
        coded = (doc.get("memory_coded_bytes") or {}).get("total")
        codeds = [None] * len(accs) if coded is None else seed_values(coded)
        for seed, acc, mem, cod in zip(results["method_seeds"][name], accs, mems, codeds, strict=True):
            lines.append(f"| {name} | {seed} | {100 * acc:.1f} | {mem / MIB:.{digits}f} | "
                         f"{_fmt(cod, 1 / MIB, digits)} |")
        if len(accs) > 1:
            acc_s, mem_s = doc["final_avg_acc"]["std"], doc["memory_bytes"]["total"]["std"]
            coded = export.coded_memory(doc)
            lines.append(f"| {name} | Mean | {100 * mean(doc['final_avg_acc']):.1f} | "
                         f"{mean(doc['memory_bytes']['total']) / MIB:.{digits}f} | "
                         f"{_fmt(mean(coded), 1 / MIB, digits)} |")
            lines.append(f"| {name} | STD | {100 * acc_s:.2f} | {mem_s / MIB:.{digits}f} | "
                         f"{_fmt(std(coded), 1 / MIB, digits)} |")
    lines += inference_lines(results)
    lines += ["", "## Plots", ""] + [f"- [{Path(p).stem}]({p})" for p in results.get("plots", [])]
    return "\n".join(lines) + "\n"


def log(tracker, results: dict, out: Path) -> None:
    """results.json, results.md, results.csv, results.tex and the plots as artifacts under report/; each method's
    headline numbers (mean, and std with several seeds) as metrics report.<method>.<key>."""
    for name in (RESULTS_JSON, RESULTS_MD, RESULTS_CSV, RESULTS_TEX):
        tracker.log_artifact(out / name, artifact_path=REPORT)
    for rel in results["plots"]:
        tracker.log_artifact(out / rel, artifact_path=f"{REPORT}/{PLOTS}")
    metrics = {}
    for name, doc in results["methods"].items():
        values = {key: doc.get(key) for key in ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt",
                                                 "train_seconds")}
        values["memory_mib"] = doc["memory_bytes"]["total"]
        values["memory_coded_mib"] = export.coded_memory(doc)
        for key, value in values.items():
            scale = MIB if key.startswith("memory") else 1
            if is_number(mean(value)):
                metrics[f"report.{name}.{key}"] = mean(value) / scale
            if is_number(std(value)):
                metrics[f"report.{name}.{key}_std"] = std(value) / scale
    tracker.log_metrics(metrics)
    tracker.set_tags({"chance_tasks": chance_tag(chance_cells(results))})


def chance_tag(cells: list[chance.Cell], limit: int = 5000) -> str:
    """The flagged cells as one MLflow tag value (method/seed<S>/task, comma-separated; cut to MLflow's limit)."""
    text = ",".join(c.label for c in cells)
    return text if len(text) <= limit else text[: limit - 3] + "..."
