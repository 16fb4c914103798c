"""`nws cluster status`: the jobs of a run's submissions with their Slurm state and log files.

States come from `sacct` where the cluster keeps accounting, else from `scontrol show job` (the controller's memory:
queued, running, and jobs finished less than MinJobAge ago); a job neither knows is UNKNOWN. Array jobs are shown
one line per task (= seed).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

UNKNOWN = "UNKNOWN"
# states after which a job does nothing more (UNKNOWN: the controller forgot it, so it ended long ago)
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "REVOKED", UNKNOWN}


def expand_tasks(spec: str) -> list[int]:
    """Slurm's array task list ("0-3,7", "[0-1]", "0-9%2") -> [0, 1, 2, 3, 7]."""
    spec = spec.strip("[]").split("%")[0]
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _key(job_id: str, task: int | None) -> str:
    return job_id if task is None else f"{job_id}_{task}"


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -X -n -P -o JobID,State` lines ("12_0|COMPLETED", "12_[1-3]|PENDING", "13|CANCELLED by 0")."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, state = line.split("|", 1)
        state = state.split()[0] if state.strip() else UNKNOWN
        base, _, tasks = job.partition("_")
        for task in (expand_tasks(tasks) if tasks else [None]):
            states[_key(base, task)] = state
    return states


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o ID` lines (one per job or array task record)."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobState" not in fields:
            continue
        if "ArrayJobId" in fields and "ArrayTaskId" in fields:
            for task in expand_tasks(fields["ArrayTaskId"]):
                states[_key(fields["ArrayJobId"], task)] = fields["JobState"]
        else:
            states[fields["JobId"]] = fields["JobState"]
    return states


class SlurmUnavailable(RuntimeError):
    """The controller did not answer (e.g. a timeout under load): the states are not known right now."""

    EXIT_CODE = 1  # `nws cluster status`: try again later (nws.exits)


def query_states(job_ids: list[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """State of every job and array task of `job_ids` ("ID" or "ID_TASK" keys); a job the controller no longer
    knows is UNKNOWN. Raises SlurmUnavailable when Slurm does not answer."""
    if not job_ids:
        return {}
    proc = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                          capture_output=True, text=True, env=env)
    if proc.returncode == 0 and proc.stdout.strip():
        return parse_sacct(proc.stdout)
    states: dict[str, str] = {}
    for job_id in job_ids:  # no accounting here: ask the controller
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, env=env)
        if proc.returncode == 0:
            states.update(parse_scontrol(proc.stdout))
        elif "Invalid job id" in proc.stderr:
            states[job_id] = UNKNOWN  # finished longer ago than the controller remembers
        else:
            raise SlurmUnavailable(f"scontrol show job {job_id}: {proc.stderr.strip()}")
    return states


def wait(job_ids: list[str], env: Mapping[str, str] | None = None, timeout: float = 3600.0,
         poll: float = 1.0) -> dict[str, str]:
    """Block until every job and array task of `job_ids` is in a FINAL state; returns the states."""
    deadline, states = time.time() + timeout, {}
    while time.time() < deadline:
        try:
            states = query_states(job_ids, env)
        except SlurmUnavailable:
            states = {}
        if states and all(state in FINAL for state in states.values()):
            return states
        time.sleep(poll)
    raise TimeoutError(f"jobs {', '.join(job_ids)} unfinished after {timeout:.0f} s: {states}")


def log_path(pattern: str, job_id: str, task: int | None) -> Path:
    """The sbatch --output pattern of a job with its ids filled in."""
    text = pattern.replace("%A", job_id).replace("%j", job_id)
    return Path(text.replace("%a", str(task)) if task is not None else text)


def job_rows(entry: dict, states: Mapping[str, str]) -> list[dict]:
    """One row per job or array task of a recorded submission: stage, id, seed, state, its stdout log and its
    stderr file (`err`; None for a submission recorded before jobs had one)."""
    rows = []
    for job in entry["jobs"]:
        for task in job["array"] if job["array"] is not None else [None]:
            key = _key(job["job_id"], task)
            # a task of an array that has started gets an id of its own; its log is named by the array's id
            err = job.get("err")
            rows.append({"stage": job["stage"], "job": key, "seed": task, "state": states.get(key, UNKNOWN),
                         "log": str(log_path(job["log"], job["job_id"], task)),
                         "err": None if err is None else str(log_path(err, job["job_id"], task))})
    return rows


def format_rows(entry: dict, rows: list[dict]) -> str:
    head = (f"submission {entry['stamp']}: {entry['config']} seeds {entry['seeds']}, MLflow parent run "
            f"{entry['parent_run_id']} ({entry['tracking_uri']})")
    lines = [head, f"{'stage':<12} {'job':<12} {'seed':<5} {'state':<12} log (stdout), errors (stderr)"]
    for r in rows:
        logs = [_shown(r["log"])] + ([_shown(r["err"])] if r.get("err") else [])
        seed = "-" if r["seed"] is None else str(r["seed"])
        lines.append(f"{r['stage']:<12} {r['job']:<12} {seed:<5} {r['state']:<12} {', '.join(logs)}")
    return "\n".join(lines)


def _shown(path: str) -> str:
    return path if Path(path).exists() else f"{path} (not written yet)"
