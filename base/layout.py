"""Where an experiment's files go (DESIGN §2), and the name of every file one stage hands to another, in one place.

runs/<name>/{data, seed<S>/{config.yaml, pretrain, incremental/<method>}, report, pipeline.json}; a variant
(`--variant NAME`) is a run folder of its own, runs/<name>/variants/<NAME>/, laid out the same way. The stage
commands default to these folders, so a stage run by hand and the pipeline see each other's outputs. The stages
exchange files only, so a name below is the contract between the stage that writes it and those that read it; a file
only its own writer reads (a method's masks, a checkpoint's state) keeps its name beside that writer. Which config a
folder may hold (the variant rule) is the pipeline's: pipeline.layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from base.config import check_name

# the data stage (data_prep.manifest): the manifest (sha256 and size of every shard) and the task list
MANIFEST = "manifest.json"
TASKS = "tasks.json"

# the pretrain stage (pretrain.outputs; pretrain/outputs.py says what each holds)
CONFIG = "config.json"  # the resolved config a stage ran with, written first (pretrain) or logged (pipeline)
POOLS = "pools.safetensors"
BASE_MODEL = "base_model"
PLAIN = "plain_backbone.safetensors"
PRETRAIN_SUMMARY = "pretrain.json"
COMPLETE = "complete"  # written last: the pretrain outputs are finished

# resumable state and the MLflow run a resumed job continues, kept beside a stage's outputs but not part of them
CHECKPOINTS = "checkpoints"
RUN_FILE = "mlflow_run.json"

# the incremental stage, per method folder (incremental.loop, incremental.task_inference)
PROGRESS = "progress.json"
METRICS = "metrics.json"
TASK_INFERENCE = "task_inference.json"

# the pipeline's records and the report
SEED_CONFIG = "config.yaml"
STAGE_RECORD = "stage.json"
PIPELINE_RECORD = "pipeline.json"
REPORT = "report"
RESULTS_JSON, RESULTS_MD, RESULTS_CSV, RESULTS_TEX = "results.json", "results.md", "results.csv", "results.tex"
PLOTS = "plots"
VARIANTS = "variants"


@dataclass
class Layout:
    """Where a run's files go: runs/<name>[/variants/<variant>]/{data, seed<S>/{pretrain, incremental}, report}."""

    runs_dir: Path
    name: str
    variant: str | None = None

    @property
    def root(self) -> Path:
        """runs/<name> (or its variant's folder), refused when it would not lie inside the runs folder (a name with a
        separator or `..`)."""
        check_name(self.name, "name")
        if self.variant is None:
            return self.runs_dir / self.name
        return self.runs_dir / self.name / VARIANTS / check_name(self.variant, "--variant")

    @property
    def data(self) -> Path:
        return self.root / "data"

    def seed(self, seed: int) -> Path:
        return self.root / f"seed{seed}"

    def pretrain(self, seed: int) -> Path:
        return self.seed(seed) / "pretrain"

    def incremental(self, seed: int) -> Path:
        return self.seed(seed) / "incremental"

    def config(self, seed: int) -> Path:
        return self.seed(seed) / SEED_CONFIG

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def tags(self) -> dict[str, str]:
        """MLflow tags of this folder's runs: the variant, when there is one."""
        return {} if self.variant is None else {"variant": self.variant}
