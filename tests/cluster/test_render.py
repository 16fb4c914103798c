"""The sbatch scripts `nws cluster submit` renders (no Slurm needed): one per stage, the pipeline contract's
commands, seeds as arrays, the pretraining job's srun tasks and resources, valid bash."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
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


def test_cpus_per_task_is_each_ranks_share_unless_given(tmp_path, capsys, monkeypatch):
    """Issue 19: every task had 1 CPU, so a GPU rank's data loader workers shared it. Now a stage's tasks get the
    workers its config asks for + 1 for the rank itself (pretraining: + pretrain.threads); --cpus-per-task wins."""
    monkeypatch.chdir(tmp_path)
    args = ["cluster", "submit", "-c", str(DEMO), "--runs-dir", "runs", "--dry-run", "pretrain.num_workers=3",
            "pretrain.threads=2", "incremental.num_workers=5"]
    assert nws(args) == 0
    cpus = {stage: [o for o in _options(text) if o.startswith("--cpus-per-task=")]
            for stage, text in _scripts(capsys.readouterr().out).items()}
    assert cpus == {"data": ["--cpus-per-task=1"], "pretrain": ["--cpus-per-task=5"],
                    "incremental": ["--cpus-per-task=6"], "report": ["--cpus-per-task=1"]}
    assert nws([*args, "--cpus-per-task", "7"]) == 0
    scripts = _scripts(capsys.readouterr().out)
    assert all("--cpus-per-task=7" in _options(text) for text in scripts.values())


def test_error_log_beside_the_output_log_and_status_shows_both(tmp_path):
    from cluster.status import format_rows, job_rows
    from cluster.submit import load_record, record

    sub = _submission(tmp_path)
    jobs = {j.stage: j for j in render(sub)}
    logs = sub.folder / "logs"
    assert f"--output={logs}/pretrain-%A_%a.out" in _options(jobs["pretrain"].text)
    assert f"--error={logs}/pretrain-%A_%a.err" in _options(jobs["pretrain"].text)
    assert f"--error={logs}/report-%j.err" in _options(jobs["report"].text)
    record(sub, [(jobs["pretrain"], "41"), (jobs["report"], "42")])
    [entry] = load_record(sub.folder)
    rows = job_rows(entry, {"41_0": "RUNNING"})
    assert [(r["log"], r["err"]) for r in rows] == [
        (f"{logs}/pretrain-41_{s}.out", f"{logs}/pretrain-41_{s}.err") for s in (0, 1, 2)] + [
        (f"{logs}/report-42.out", f"{logs}/report-42.err")]
    logs.mkdir(parents=True)
    (logs / "pretrain-41_0.err").write_text("Traceback ...\n")
    text = format_rows(entry, rows)
    assert f"41_0         0     RUNNING      {logs}/pretrain-41_0.out (not written yet), {logs}/pretrain-41_0.err\n" \
        in text


FAKE_CONDA = """#!/bin/bash
# conda's behaviour in a batch shell, in small: `shell.bash hook` prints the shell function `conda`, whose
# `activate` sets the environment; the executable itself refuses `activate` as conda does without `conda init`
if [ "$1 $2" = "shell.bash hook" ]; then
  echo 'conda() { if [ "$1" = activate ]; then export CONDA_DEFAULT_ENV="$2"; else command conda "$@"; fi; }'
  exit 0
fi
echo "CondaNoInitError: Run 'conda init' before 'conda activate'" >&2
exit 1
"""


def _run_script(text: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", **env}, **kwargs)


@pytest.mark.parametrize(("setup", "conda_env", "exe"), [("", "nws", "path"), ("module() { :; }; conda activate nws",
                                                                                  None, "path"),
                                                         ("", "nws", "CONDA_EXE")])
def test_conda_activate_works_in_the_batch_shell(tmp_path, setup, conda_env, exe):
    """Issue 19: `--setup 'conda activate nws'` failed in a batch shell (no `conda init` lines run there). The
    rendered script evaluates conda's shell hook first (from $CONDA_EXE, which conda exports in the submitting
    shell, else `conda` on PATH), so it really activates the environment under bash; without the hook line the
    same script fails as conda does."""
    from cluster.render import render_job

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "conda").write_text(FAKE_CONDA)
    (bin_dir / "conda").chmod(0o755)
    sub = _submission(tmp_path)
    sub.setup, sub.conda_env = setup, conda_env
    text = render_job(sub, "data", command='echo "active: $CONDA_DEFAULT_ENV"').text
    assert 'eval "$("${CONDA_EXE:-conda}" shell.bash hook)"' in text
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"} if exe == "path" else {"CONDA_EXE": str(bin_dir / "conda")}
    proc = _run_script(text, env)
    assert proc.returncode == 0 and "active: nws\n" in proc.stdout, proc.stderr
    without_hook = "\n".join(line for line in text.splitlines() if "shell.bash hook" not in line)
    proc = _run_script(without_hook, {"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert proc.returncode != 0 and "conda init" in proc.stderr
    plain = _submission(tmp_path)
    plain.setup = "module load cuda"
    assert "shell.bash hook" not in render_job(plain, "data").text  # no conda, no hook
    plain.conda_env = "nws\ntouch PWNED"
    with pytest.raises(ValueError, match="--conda-env"):
        render_job(plain, "data")


STAGE = """trap 'echo "stage: USR1 at step $i"; touch {tmp}/signalled; exit {code}' USR1
i=0; touch {tmp}/started
while [ $i -lt 600 ]; do i=$((i + 1)); sleep 0.1; done; exit {code}"""


@pytest.mark.parametrize("code", [9, 3])
def test_signal_before_passes_usr1_on_and_requeues_after_a_checkpoint(tmp_path, code):
    """--signal-before S: the per-seed jobs ask Slurm for USR1 at the batch shell S seconds before their end and may
    be requeued; the data and report jobs are not signalled. The shell passes the signal on to the running stage
    at once (here a stand-in that exits with `code` when it gets USR1); exit code 9 (checkpoint written) makes it
    requeue its own job with `scontrol requeue` (a stand-in on PATH records the call), any other code is the job's."""
    from cluster.render import render_job

    sub = _submission(tmp_path, signal_before=300)
    jobs = {j.stage: j for j in render(sub)}
    for stage in ("pretrain", "incremental"):
        assert {"--signal=B:USR1@300", "--requeue", "--open-mode=append"} <= set(_options(jobs[stage].text))
    for stage in ("data", "report"):
        assert "--no-requeue" in _options(jobs[stage].text)
        assert not any(o.startswith("--signal") for o in _options(jobs[stage].text))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/scontrol.args\n')
    (bin_dir / "scontrol").chmod(0o755)
    text = render_job(sub, "incremental", command=f"bash -c {shlex.quote(STAGE.format(tmp=tmp_path, code=code))}").text
    script = subprocess.Popen(["bash", "-c", text], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "7"})
    deadline = time.time() + 30
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and script.poll() is None, script.communicate()
        time.sleep(0.05)
    script.send_signal(signal.SIGUSR1)
    out, err = script.communicate(timeout=60)
    assert (tmp_path / "signalled").exists(), (out, err)  # the stage itself got the signal
    assert "USR1: checkpoint and stop" in out
    if code == 9:
        assert script.returncode == 0 and "requeueing job 7" in out
        assert (tmp_path / "scontrol.args").read_text() == "requeue 7\n"
    else:
        assert script.returncode == code and not (tmp_path / "scontrol.args").exists()


def test_variant_and_replace_reach_every_job_and_another_config_is_refused_at_submission(tmp_path, capsys,
                                                                                          monkeypatch):
    """Issue 19: the jobs ran `nws pipeline run --only STAGE` without --variant/--replace, so a submission of another
    config than the folder's failed in its jobs; now the options reach every job, the variant's scripts and logs go
    to its folder, and another config is refused at submission (exit 2, nothing queued) naming the key."""
    from base.config import load_config
    from base.layout import Layout
    from pipeline.config import experiment_schema
    from pipeline.layout import seed_config, write_seed_config

    monkeypatch.chdir(tmp_path)
    runs = (tmp_path / "runs").resolve()
    base = ["cluster", "submit", "-c", str(DEMO), "--runs-dir", "runs", "--seeds", "1"]
    assert nws([*base, "--dry-run", "--variant", "ep2", "incremental.epochs=2"]) == 0
    scripts = _scripts(capsys.readouterr().out)
    for stage, text in scripts.items():
        assert f"--only {stage} --runs-dir {runs} --variant ep2" in text, stage
        assert f"--output={runs}/demo/variants/ep2/cluster/logs/{stage}-" in text
    assert nws([*base, "--dry-run", "--replace"]) == 0
    assert capsys.readouterr().out.count(f"--runs-dir {runs} --replace") == 4
    with pytest.raises(SystemExit) as info:  # one or the other (argparse's usage error)
        nws([*base, "--dry-run", "--replace", "--variant", "x"])
    assert info.value.code == 2
    capsys.readouterr()
    # a finished seed 0 of epochs 1 in runs/demo: a submission of epochs 2 is refused before anything is queued
    cfg = load_config(experiment_schema(), DEMO, ["incremental.epochs=1"])
    write_seed_config(Layout(runs, "demo"), 0, seed_config(cfg, 0)[1])
    assert nws([*base, "incremental.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "incremental.epochs" in err and "--variant" in err, err
    assert not (runs / "demo" / "cluster").exists() and not (runs / "mlflow.db").exists()
