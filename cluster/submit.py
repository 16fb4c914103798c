"""Submitting rendered scripts with sbatch: checked first, then chained with dependencies, then recorded.

Every script is first given to `sbatch --test-only`, so a request Slurm cannot satisfy (an unknown partition, more
nodes or CPUs than exist) fails before anything is queued, with sbatch's own reason. Then the jobs are submitted
in pipeline order, each depending on the nearest earlier stage of the submission: `aftercorr` between two arrays
(incremental seed S starts when pretraining seed S has succeeded), `afterok` otherwise (the report waits for every
array task). The submission is recorded in runs/<name>/cluster/submissions.json for `nws cluster status`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from cluster.render import JobScript, Submission
from nws.io import atomic_write_bytes, atomic_write_json, read_json

RECORD = "submissions.json"


class SubmitError(RuntimeError):
    """sbatch refused a job; the message carries its stderr."""

    EXIT_CODE = 2  # bad input to `nws cluster submit` (nws.exits)


def _sbatch(args: list[str], env: Mapping[str, str] | None, script: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["sbatch", *args], capture_output=True, text=True, env=env, input=script)
    except FileNotFoundError:
        raise SubmitError("sbatch not found: run this on a Slurm login node (or install slurm-wlm)") from None


def check(jobs: list[JobScript], env: Mapping[str, str] | None = None) -> None:
    """`sbatch --test-only` on every script (read from stdin): Slurm validates the requests, queues nothing."""
    for job in jobs:
        proc = _sbatch(["--test-only"], env, script=job.text)
        if proc.returncode != 0:
            raise SubmitError(f"Slurm refused the {job.stage} job:\n{proc.stderr.strip()}")


def dependency(job: JobScript, submitted: list[tuple[JobScript, str]]) -> str | None:
    """`afterok:ID` on the previous submitted stage, `aftercorr:ID` when both are arrays over the seeds."""
    if not submitted:
        return None
    upstream, job_id = submitted[-1]
    kind = "aftercorr" if job.array is not None and upstream.array is not None else "afterok"
    return f"{kind}:{job_id}"


def cancel(job_ids: list[str], env: Mapping[str, str] | None = None) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, env=env)


def submit_jobs(jobs: list[JobScript], env: Mapping[str, str] | None = None) -> list[tuple[JobScript, str]]:
    """Save and submit `jobs` in order (`check` them first); returns (job, Slurm job id) pairs. On a refusal the
    jobs already queued by this call are cancelled, so a submission is all or nothing."""
    for job in jobs:
        atomic_write_bytes(job.path, job.text.encode())
        os.chmod(job.path, 0o755)
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)  # slurmd cannot open the log in a missing folder
    submitted: list[tuple[JobScript, str]] = []
    for job in jobs:
        dep = dependency(job, submitted)
        proc = _sbatch(["--parsable", *([f"--dependency={dep}"] if dep else []), str(job.path)], env)
        if proc.returncode != 0:
            cancel([job_id for _, job_id in submitted], env)
            raise SubmitError(f"sbatch refused the {job.stage} job ({job.path}):\n{proc.stderr.strip()}")
        submitted.append((job, proc.stdout.strip().split(";")[0]))
    return submitted


def record(sub: Submission, submitted: list[tuple[JobScript, str]]) -> dict:
    """Append this submission to runs/<name>/cluster/submissions.json; returns its entry."""
    entry = {
        "stamp": sub.stamp, "config": str(sub.config), "seeds": list(sub.seeds), "overrides": list(sub.overrides),
        "runs_dir": str(sub.runs_dir), "parent_run_id": sub.parent_run_id, "tracking_uri": sub.tracking_uri,
        "jobs": [{"stage": job.stage, "job_id": job_id, "array": job.array, "script": str(job.path),
                  "log": job.log, "err": job.err} for job, job_id in submitted],
    }
    path = sub.folder / RECORD
    history = read_json(path)["submissions"] if path.is_file() else []
    atomic_write_json(path, {"submissions": [*history, entry]})
    return entry


def load_record(folder: Path) -> list[dict]:
    """The submissions recorded under runs/<name>/cluster, oldest first."""
    path = Path(folder) / RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no submission recorded here (submit with `nws cluster submit -c CONFIG`)")
    return read_json(path)["submissions"]
