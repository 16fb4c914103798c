"""The sbatch scripts `nws cluster submit` renders (no Slurm needed): one per stage, the pipeline contract's
commands, seeds as arrays, the pretraining job's srun tasks and resources, valid bash."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.render import Resources, ScriptTemplate, Submission, render
from cluster.status import expand_tasks
from cluster.submit import dependency
from pipeline.cli import main as nws
from tests.cluster.conftest import DEMO


def _submission(tmp: Path, **resources) -> Submission:
    return Submission(config=DEMO, name="demo", seeds=[0, 1, 2], runs_dir=tmp / "runs", workdir=tmp,
                      python=sys.executable, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", parent_run_id="abc123",
                      stamp="20260101-000000", overrides=["model.width=0.125"], resources=Resources(**resources))


def _options(text: str) -> list[str]:
    return re.findall(r"^#SBATCH (\S+)$", text, flags=re.M)


def _scripts(out: str) -> dict[str, str]:
    """The dry run's output split into {stage: script}."""
    parts = re.split(r"^### .*/\d{8}-\d{6}-(\w+)\.sbatch.*$", out, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_dry_run_prints_every_stage_and_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert nws(["cluster", "submit", "-c", str(DEMO), "--seeds", "2", "--runs-dir", "runs", "--dry-run",
                "model.width=0.125"]) == 0
    out = capsys.readouterr().out
    scripts = _scripts(out)
    assert list(scripts) == ["data", "pretrain", "incremental", "report"]
    runs = (tmp_path / "runs").resolve()
    for stage, text in scripts.items():
        command = (f"{sys.executable} -m pipeline.cli pipeline run -c {DEMO} --only {stage} --runs-dir {runs}"
                   + (' --seed "$SLURM_ARRAY_TASK_ID"' if stage in ("pretrain", "incremental") else "")
                   + " model.width=0.125 'seeds=[0,1]'")
        assert command in text, stage
        assert f"export MLFLOW_TRACKING_URI=sqlite:///{runs}/mlflow.db" in text
        assert "export NWS_MLFLOW_PARENT_RUN_ID=" in text and "export DS_ACCELERATOR=cpu" in text
        assert ("--array=0,1" in _options(text)) == (stage in ("pretrain", "incremental"))
        assert f"--output={runs}/demo/cluster/logs/{stage}-" in text
    assert "srun --kill-on-bad-exit=1 " + sys.executable in scripts["pretrain"]
    assert "--ntasks-per-node=2" in _options(scripts["pretrain"])
    assert "-m cluster.parent end" in scripts["report"]
    assert "--dependency=aftercorr:<pretrain job id>" in out and "--dependency=afterok:<incremental job id>" in out
    assert not runs.exists(), "a dry run writes nothing (no scripts, no record, no MLflow store)"


def test_rendered_scripts_are_valid_bash(tmp_path):
    sub = _submission(tmp_path)
    sub.setup = "source /opt/env.sh; conda activate nws"
    for job in render(sub):
        proc = subprocess.run(["bash", "-n"], input=job.text, capture_output=True, text=True)
        assert proc.returncode == 0, (job.stage, proc.stderr)
        assert "{{" not in job.text and job.text.startswith("#!/bin/bash\n")
        # the setup lines run after every #SBATCH line (sbatch stops reading them at the first command) and
        # before `set -u` (activation scripts read unset variables)
        lines = job.text.splitlines()
        setup = lines.index(sub.setup)
        assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < setup
        assert lines.index("set -eo pipefail") < setup < next(i for i, x in enumerate(lines) if x.startswith("set -u"))


def test_gpu_nodes_partition_time_and_requeue(tmp_path):
    jobs = {j.stage: j for j in render(_submission(tmp_path, nodes=4, gpus_per_node=8, partition="gpu",
                                                   time="2-00:00:00", requeue=True))}
    pre = _options(jobs["pretrain"].text)
    assert {"--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--array=0,1,2"} <= set(pre)
    assert "DS_ACCELERATOR" not in jobs["pretrain"].text  # the accelerator is the GPU
    assert "--gpus=1" in _options(jobs["incremental"].text)
    assert not any(o.startswith("--gpus") for o in _options(jobs["data"].text) + _options(jobs["report"].text))
    for job in jobs.values():
        opts = _options(job.text)
        assert {"--partition=gpu", "--time=2-00:00:00", "--requeue", "--open-mode=append"} <= set(opts)
        assert "--no-requeue" not in opts and "--kill-on-invalid-dep=yes" in opts
    cpu = {j.stage: j for j in render(_submission(tmp_path, nodes=2, tasks_per_node=3))}
    assert {"--nodes=2", "--ntasks-per-node=3", "--no-requeue"} <= set(_options(cpu["pretrain"].text))


def test_stage_subset_and_dependencies(tmp_path):
    sub = _submission(tmp_path)
    sub.stages = ("pretrain", "incremental", "report")
    jobs = render(sub)
    assert [j.stage for j in jobs] == ["pretrain", "incremental", "report"]
    pre, inc, rep = jobs
    assert dependency(pre, []) is None
    assert dependency(inc, [(pre, "11")]) == "aftercorr:11"  # seed S's tasks start after seed S's pretraining
    assert dependency(rep, [(pre, "11"), (inc, "12")]) == "afterok:12"  # the report waits for every seed
    sub.stages = ("data", "report")
    data, rep = render(sub)
    assert dependency(rep, [(data, "7")]) == "afterok:7"
    sub.stages = ("pretrain", "fancy")
    with pytest.raises(ValueError, match="unknown stage"):
        render(sub)


def test_template_placeholders_leave_bash_alone():
    text = ScriptTemplate('echo {{a}} "${X:-1}" $((2 + Y)) $SLURM_JOB_ID').substitute(a="hi")
    assert text == 'echo hi "${X:-1}" $((2 + Y)) $SLURM_JOB_ID'
    with pytest.raises(KeyError):
        ScriptTemplate("{{missing}}").substitute()


def test_config_seeds_are_the_default_and_errors_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert nws(["cluster", "submit", "-c", str(DEMO), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--array=0\n" in out and "seeds=" not in out  # demo.yaml: seeds [0]
    assert nws(["cluster", "submit", "-c", str(DEMO), "--dry-run", "--stages", "data,fancy"]) == 2
    assert "unknown stage(s) fancy" in capsys.readouterr().err
    assert nws(["cluster", "submit", "-c", str(DEMO), "--dry-run", "model.fancy=1"]) == 2
    assert "model.fancy" in capsys.readouterr().err
    assert nws(["cluster", "status", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/cluster/submissions.json" in capsys.readouterr().err


def test_array_task_lists():
    assert expand_tasks("0-3,7") == [0, 1, 2, 3, 7]
    assert expand_tasks("[1-2]") == [1, 2]
    assert expand_tasks("0-9%2") == list(range(10))
    assert expand_tasks("5") == [5]


@pytest.mark.parametrize("bad", [["name=x\ntouch PWNED\n#"], ["--partition", "gpu\ntouch PWNED"],
                                 ["--time", "1:00\rtouch PWNED"], ["name=../../escaped"], ["name=/tmp/abs"],
                                 ["data.root=x\ntouch PWNED"]])
def test_values_that_would_inject_a_line_or_escape_are_refused(tmp_path, capsys, monkeypatch, bad):
    """Issue 17: a newline in the experiment name, a Slurm option or an override put `touch PWNED` on its own line
    of every rendered script, and a name with separators wrote outside the runs folder. Now each is refused with
    exit code 2 and a message naming the value, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    args = ["cluster", "submit", "-c", str(DEMO), "--runs-dir", "runs", "--dry-run"]
    args += bad
    assert nws(args) == 2
    captured = capsys.readouterr()
    assert "PWNED" not in captured.out and "#SBATCH" not in captured.out
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    key = {"name": "experiment name", "--partition": "--partition", "--time": "--time", "data.root": "override"}
    assert next(v for k, v in key.items() if bad[0].startswith(k)) in captured.err
    assert not (tmp_path / "runs").exists() and not list(tmp_path.parent.glob("escaped*"))


def test_values_with_spaces_are_quoted_for_sbatch(tmp_path):
    """A working directory with a space stays one #SBATCH argument: sbatch reads the double quotes itself."""
    sub = _submission(tmp_path / "my runs", partition="gpu")
    text = render(sub)[0].text
    assert f'#SBATCH --chdir="{tmp_path / "my runs"}"' in text
    assert "#SBATCH --partition=gpu" in text
    result = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_account_qos_mem_constraint_and_any_other_sbatch_option(tmp_path, capsys, monkeypatch):
    """Issue 19: no --account, --qos, --mem, --constraint or pass-through; each reaches every job's #SBATCH lines,
    and a pass-through that is not an option (or spans lines) is refused naming it."""
    jobs = render(_submission(tmp_path, account="lab-a", qos="high", mem="64G", constraint="a100",
                              extra=("--exclusive", "--gres=gpu:a100:4")))
    for job in jobs:
        assert {"--account=lab-a", "--qos=high", "--mem=64G", "--constraint=a100", "--exclusive",
                "--gres=gpu:a100:4"} <= set(_options(job.text))
    monkeypatch.chdir(tmp_path)
    args = ["cluster", "submit", "-c", str(DEMO), "--runs-dir", "runs", "--dry-run", "--account", "lab-b",
            "--sbatch=--exclusive"]
    assert nws(args) == 0
    out = capsys.readouterr().out
    assert out.count("#SBATCH --account=lab-b") == 4 and out.count("#SBATCH --exclusive") == 4
    for bad in ("exclusive", "--mail-user=a\ntouch PWNED"):
        assert nws([*args[:-1], f"--sbatch={bad}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --sbatch") and "PWNED" not in capsys.readouterr().out
