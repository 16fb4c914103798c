"""sbatch scripts of a submission, rendered from the templates in cluster/templates/ (one job per stage).

A template is plain bash with `{{name}}` placeholders (bash's own `$VAR` stay as they are). Every job runs the
pipeline contract's command for its stage, `nws pipeline run -c CONFIG --only STAGE [--seed S]` (spelled
`PYTHON -m pipeline.cli pipeline run ...` with the submitting interpreter, so the job uses the same environment);
the per-seed stages (pretrain, incremental) are job arrays whose task ids are the seeds. The pretraining job runs
one srun task per GPU, or `tasks_per_node` CPU ranks (gloo) on nodes without GPUs.

Each task gets `--cpus-per-task` CPUs: the option when given, else the share its stage's config asks for (its data
loader workers + 1 for the rank itself; `stage_cpus`). With `signal_before`, Slurm sends USR1 to the batch shell
that many seconds before the time limit; the shell passes it on to the stage, which checkpoints at its next step
(pretraining) or epoch (task loop) and exits with nws.preempt.EXIT_CODE, and the shell then requeues the job, which
resumes from that checkpoint. Setup lines that use `conda activate` get conda's shell hook first (a batch shell has
not run the lines `conda init` put in ~/.bashrc).
"""

from __future__ import annotations

import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path

from base.config import check_name
from base.layout import Layout
from nws.preempt import EXIT_CODE as PREEMPTED

TEMPLATES = Path(__file__).with_name("templates")
STAGES = ("data", "pretrain", "incremental", "report")
PER_SEED = ("pretrain", "incremental")  # job arrays over the seeds
SEED_VAR = '"$SLURM_ARRAY_TASK_ID"'
CPU_RANKS = 2  # pretraining ranks per node when the nodes have no GPU


class ScriptTemplate(string.Template):
    """`{{name}}` placeholders; anything else (bash's `$VAR`, `${VAR:-x}`, `$((...))`) is left alone."""

    delimiter = "{{"
    pattern = r"\{\{(?:(?P<escaped>(?!))|(?P<named>[a-z_]+)\}\}|(?P<braced>(?!))|(?P<invalid>))"


@dataclass
class Resources:
    """What the jobs ask Slurm for. Only pretraining spans `nodes`; incremental gets one GPU when there are GPUs."""

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # pretraining ranks per node: gpus_per_node, else CPU_RANKS
    cpus_per_task: int | None = None  # every job's; None: the stage's share (Submission.stage_cpus)
    partition: str | None = None
    time: str | None = None  # Slurm's time format (minutes, HH:MM:SS, D-HH:MM:SS)
    requeue: bool = False
    signal_before: int | None = None  # seconds before the time limit that USR1 asks the stage to checkpoint, stop
    account: str | None = None
    qos: str | None = None
    mem: str | None = None  # per node, Slurm's format (e.g. 64G)
    constraint: str | None = None  # node features (e.g. a100)
    extra: tuple[str, ...] = ()  # any other sbatch options, "--name=value" or "--flag", added to every job

    def ranks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or CPU_RANKS


@dataclass
class Submission:
    """Everything the scripts of one submission depend on."""

    config: Path
    name: str
    seeds: list[int]
    runs_dir: Path
    workdir: Path
    python: str
    tracking_uri: str
    parent_run_id: str
    stamp: str  # names this submission's scripts and MLflow parent run
    overrides: list[str] = field(default_factory=list)
    stages: tuple[str, ...] = STAGES
    setup: str = ""  # shell lines run first in every job (module load, conda activate, ...)
    conda_env: str | None = None  # a conda environment every job activates (conda's shell hook first)
    resources: Resources = field(default_factory=Resources)
    stage_cpus: dict[str, int] = field(default_factory=dict)  # CPUs per task of a stage (stage_cpus(cfg)); else 1
    variant: str | None = None  # `nws pipeline run --variant`: the run goes to runs/<name>/variants/<variant>
    replace: bool = False  # `nws pipeline run --replace`: this config replaces the folder's

    @property
    def folder(self) -> Path:
        """runs/<name>[/variants/<variant>]/cluster: the submission record, rendered scripts and job logs."""
        return Layout(self.runs_dir, self.name, self.variant).root / "cluster"


@dataclass
class JobScript:
    stage: str
    text: str
    path: Path  # where the script is saved (and submitted from)
    log: str  # sbatch --output pattern (%j, or %A_%a for arrays)
    err: str  # sbatch --error pattern, beside the log
    array: list[int] | None = None


def stage_cpus(cfg) -> dict[str, int]:
    """CPUs per task that a stage's config asks for: each rank's data loader workers + 1 for the rank itself (for
    pretraining, `pretrain.threads` for the rank when set); the data and report stages run one process on 1 CPU.
    Without it every task had 1 CPU, which a GPU rank's 8 loader workers shared."""
    p, inc = cfg.pretrain, cfg.incremental
    return {"pretrain": (p.threads or 1) + p.num_workers, "incremental": 1 + inc.num_workers}


def cpus_per_task(sub: Submission, stage: str) -> int:
    return sub.resources.cpus_per_task or sub.stage_cpus.get(stage, 1)


def one_line(value: str, what: str) -> str:
    """`value` if it can be written into a script line; a newline, carriage return or NUL would start a shell line
    of its own (issue 17: `--partition $'gpu\\ntouch x'` did), so such a value is refused, naming `what`."""
    text = str(value)
    bad = next((c for c in text if c in "\n\r\0"), None)
    if bad is not None:
        raise ValueError(f"{what}: {text!r} contains {bad!r}; a value written into an sbatch script must be one line")
    return text


def check_submission(sub: Submission) -> None:
    """Every value that reaches a script is one line, and the experiment name is a safe folder name."""
    check_name(sub.name, "name")
    res = sub.resources
    for option in res.extra:
        if not option.startswith("--") or option.startswith("---") or len(option) < 3:
            raise ValueError(f"--sbatch {option!r}: expected an sbatch option such as --gres=gpu:a100:4 or "
                             "--exclusive")
    for what, value in [("--partition", res.partition), ("--time", res.time), ("--account", res.account),
                        ("--qos", res.qos), ("--mem", res.mem), ("--constraint", res.constraint),
                        ("--conda-env", sub.conda_env),
                        *(("--sbatch", o) for o in res.extra), ("config", sub.config),
                        ("--runs-dir", sub.runs_dir), ("working directory", sub.workdir), ("python", sub.python),
                        ("tracking URI", sub.tracking_uri), ("parent run id", sub.parent_run_id),
                        ("stamp", sub.stamp), *((f"override {i + 1}", o) for i, o in enumerate(sub.overrides))]:
        if value is not None:
            one_line(value, what)
    if sub.conda_env is not None and not re.fullmatch(r"[\w./+-]+", sub.conda_env):
        raise ValueError(f"--conda-env {sub.conda_env!r}: expected an environment name or path (letters, digits, "
                         "._/+-)")
    if res.signal_before is not None and res.signal_before < 1:
        raise ValueError(f"--signal-before {res.signal_before}: expected a positive number of seconds")


def stage_command(sub: Submission, stage: str) -> str:
    """The contract's command for `stage`; the per-seed stages take the seed from the array task id."""
    args = [sub.python, "-m", "pipeline.cli", "pipeline", "run", "-c", str(sub.config), "--only", stage,
            "--runs-dir", str(sub.runs_dir), *(["--variant", sub.variant] if sub.variant else []),
            *(["--replace"] if sub.replace else [])]
    seed = ["--seed", SEED_VAR] if stage in PER_SEED else []
    return " ".join([*map(shlex.quote, args), *seed, *map(shlex.quote, sub.overrides)])


def sbatch_options(sub: Submission, stage: str, log: str, err: str, array: list[int] | None) -> list[str]:
    """The #SBATCH lines; values with spaces are double-quoted (sbatch's own parser reads the quotes)."""
    res = sub.resources
    opts = [f"--job-name=nws-{sub.name}-{stage}", f"--output={log}", f"--error={err}", f"--chdir={sub.workdir}"]
    if stage == "pretrain":
        opts += [f"--nodes={res.nodes}", f"--ntasks-per-node={res.ranks_per_node()}"]
        opts += [f"--gpus-per-node={res.gpus_per_node}"] if res.gpus_per_node else []
    else:
        opts += ["--nodes=1", "--ntasks=1"]
        opts += ["--gpus=1"] if res.gpus_per_node and stage == "incremental" else []
    opts.append(f"--cpus-per-task={cpus_per_task(sub, stage)}")
    if array is not None:
        opts.append("--array=" + ",".join(map(str, array)))
    opts += [f"--partition={res.partition}"] if res.partition else []
    opts += [f"--time={res.time}"] if res.time else []
    opts += [f"--{key}={value}" for key, value in (("account", res.account), ("qos", res.qos), ("mem", res.mem),
                                                   ("constraint", res.constraint)) if value]
    opts += list(res.extra)
    # B: the batch shell alone gets USR1 and passes it on (run_block; without B: Slurm would signal the steps only);
    # the data and report jobs have no checkpoint to write and are not signalled
    signalled = bool(res.signal_before) and stage in PER_SEED
    opts += [f"--signal=B:USR1@{res.signal_before}"] if signalled else []
    # a requeued job (preemption, node failure, the signal) runs the script again: the stages resume from their
    # checkpoints, and the log continues rather than starting over
    opts += ["--requeue", "--open-mode=append"] if res.requeue or signalled else ["--no-requeue"]
    opts.append("--kill-on-invalid-dep=yes")  # a failed upstream job cancels its dependants instead of stranding them
    return [f"#SBATCH {_quoted(one_line(o, 'sbatch option'))}" for o in opts]


def _quoted(option: str) -> str:
    key, sep, value = option.partition("=")
    if not sep or not any(c in value for c in " \t\"'#$\\"):
        return option
    return f'{key}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def setup_lines(sub: Submission) -> str:
    """The user's setup lines, after conda's shell hook when they (or --conda-env) activate a conda environment:
    `conda activate` is a shell function that only the hook defines, and a batch shell never ran ~/.bashrc. The
    hook comes from $CONDA_EXE (exported by conda in the submitting shell, which sbatch passes on), else `conda`."""
    lines = [sub.setup] if sub.setup else []
    lines += [f"conda activate {shlex.quote(sub.conda_env)}"] if sub.conda_env else []
    if any(re.search(r"\bconda\s+activate\b", line) for line in lines):
        lines.insert(0, 'eval "$("${CONDA_EXE:-conda}" shell.bash hook)"  # defines `conda activate`')
    return "\n".join(lines)


def run_block(sub: Submission, stage: str, command: str) -> str:
    """The stage command; with `signal_before` for the per-seed stages, run in the background so that the shell's
    USR1 trap runs at once (bash runs traps only between commands) and passes the signal on (srun forwards it to
    every task), then waited for; exit code PREEMPTED (a checkpoint was written at the signal) requeues the job."""
    if not sub.resources.signal_before or stage not in PER_SEED:
        return command
    return f"""trap 'echo "[cluster] {stage}: USR1: checkpoint and stop"; kill -USR1 "${{stage_pid:-}}" || true' USR1
{command} &
stage_pid=$!
while :; do
  wait "$stage_pid" && code=0 || code=$?
  kill -0 "$stage_pid" 2>/dev/null || break  # wait returned for the trap: the stage is still running
done
if [ "$code" -eq {PREEMPTED} ]; then
  echo "[cluster] {stage}: checkpoint written at the signal; requeueing job $SLURM_JOB_ID to resume"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$code"
""".rstrip()


def render_job(sub: Submission, stage: str, command: str | None = None) -> JobScript:
    """The script of one stage; `command` replaces the pipeline command (e.g. `python -m pipeline pretrain ...`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    check_submission(sub)
    array = list(sub.seeds) if stage in PER_SEED else None
    logs = sub.folder / "logs" / (f"{stage}-%A_%a" if array is not None else f"{stage}-%j")
    log, err = f"{logs}.out", f"{logs}.err"
    template = TEMPLATES / ("pretrain.sbatch.tmpl" if stage == "pretrain" else "stage.sbatch.tmpl")
    seeds = " ".join(map(str, sub.seeds))
    after = f"{shlex.quote(sub.python)} -m cluster.parent end" if stage == "report" else ""
    srun = "srun --kill-on-bad-exit=1 " if stage == "pretrain" else ""
    text = ScriptTemplate(template.read_text()).substitute(
        description=f"nws {stage} stage of experiment {sub.name!r} (seeds {seeds}), submission {sub.stamp}",
        sbatch_options="\n".join(sbatch_options(sub, stage, log, err, array)),
        setup=setup_lines(sub),
        tracking_uri=shlex.quote(sub.tracking_uri),
        parent_run_id=shlex.quote(sub.parent_run_id),
        accelerator="" if sub.resources.gpus_per_node else "export DS_ACCELERATOR=cpu  # no GPU: CPU ranks, gloo",
        stage=stage,
        python=shlex.quote(sub.python),
        run=run_block(sub, stage, srun + (command or stage_command(sub, stage))),
        after=after,
    )
    return JobScript(stage=stage, text=text, path=sub.folder / "scripts" / f"{sub.stamp}-{stage}.sbatch", log=log,
                     err=err, array=array)


def render(sub: Submission) -> list[JobScript]:
    """One script per stage of the submission, in pipeline order."""
    unknown = [s for s in sub.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    return [render_job(sub, stage) for stage in STAGES if stage in sub.stages]
