"""A Slurm on this machine (munge + slurmctld + slurmd as root), for the tests of cluster/ and for trying
`nws cluster submit` without a cluster: one node on loopback ports, or several nodes, each a slurmd in a network
namespace of its own with its own address (cluster/netns.py), so a multi-node job's ranks talk across "hosts".

Everything lives in one folder: slurm.conf, a munge key and socket, the controller's state, the daemons' spool and
logs (one spool folder, pid file and log per node: slurm.conf's %n). Nothing under /etc is read or written; clients
find the controller through SLURM_CONF (see `LocalSlurm.env`). The settings avoid cgroups (proctrack/linuxproc,
task/none) so the daemons run inside containers, and keep finished jobs in the controller's memory for an hour
(there is no accounting database, so `sacct` is unavailable and the job states come from `scontrol`).

    slurm = start(Path("/tmp/slurm"))   # installs slurm-wlm and munge with apt-get when they are missing
    subprocess.run(["sbatch", ...], env=slurm.env(os.environ))
    stop(slurm)
    slurm = start(Path("/tmp/slurm2"), nodes=2)   # node1, node2 in namespaces; stop() removes them too
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cluster import netns

PACKAGES = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "sbatch": "slurm-wlm", "munged": "munge"}
PARTITION = "debug"


@dataclass(frozen=True)
class Node:
    name: str
    addr: str
    net: netns.NetNode | None = None  # the namespace its slurmd runs in (None: this machine's own network)


@dataclass(frozen=True)
class LocalSlurm:
    """A running cluster: its folder, nodes, CPUs per node and partition; `lan` when the nodes are namespaces."""

    root: Path
    nodes: tuple[Node, ...]
    cpus: int
    partition: str = PARTITION
    lan: netns.Lan | None = None

    @property
    def node(self) -> str:
        """The first node's name (the only one of a one-node cluster)."""
        return self.nodes[0].name

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, base: dict[str, str] | os._Environ | None = None) -> dict[str, str]:
        """`base` (default os.environ) with SLURM_CONF pointing at this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def pids(self) -> dict[str, Path]:
        """The daemons' pid files, the slurmds first (they stop before the controller and munged)."""
        daemons = {f"slurmd {n.name}": self.root / f"slurmd-{n.name}.pid" for n in self.nodes}
        return {**daemons, **{name: self.root / f"{name}.pid" for name in ("slurmctld", "munged")}}


def ensure_installed() -> None:
    """apt-get install slurm-wlm and munge when a daemon or client is missing (needs root on Debian/Ubuntu)."""
    missing = sorted({pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None
                      and not Path("/usr/sbin", exe).exists()})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"Slurm is not installed: install {' '.join(missing)} (Debian/Ubuntu: apt-get install "
                           f"{' '.join(missing)}), or run as root on Debian so it can be installed")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(fraction: float = 0.5) -> int:
    """A RealMemory that fits: `fraction` of this machine's memory (Slurm drains a node that has less than it says)."""
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return max(256, int(pages * size * fraction) // 2**20)


def slurm_conf(root: Path, host: str, ctld_addr: str, nodes: tuple[Node, ...], cpus: int, mem_mb: int,
               ctld_port: int, slurmd_port: int, partition: str = PARTITION) -> str:
    """The slurm.conf of a cluster whose controller runs on `host` at `ctld_addr` and whose files all live under
    `root` (the slurmds of namespaced nodes share the port: each has its own network)."""
    names = ",".join(n.name for n in nodes)
    node_lines = "\n".join(f"NodeName={n.name} NodeAddr={n.addr} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN"
                           for n in nodes)
    return f"""# {len(nodes)}-node Slurm for tests (tests/cluster/local.py); every path is under {root}
ClusterName=nwslocal
SlurmctldHost={host}({ctld_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
PlugStackConfig={root}/plugstack.conf
# no cgroups: processes are tracked by parent id, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# a dependent job starts within a second or two of its dependency's end
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
# finished jobs stay visible to scontrol (no accounting database here)
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmdParameters=config_overrides
{node_lines}
PartitionName={partition} Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _start_munge(root: Path) -> None:
    """munged with its own key and socket under `root`."""
    folder = root / "munge"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = folder / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
    _run(["munged", "--force", f"--socket={folder / 'munge.socket'}", f"--key-file={key}",
          f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
          f"--seed-file={folder / 'munged.seed'}"])


def wait_idle(slurm: LocalSlurm, timeout: float = 60.0) -> None:
    """Block until sinfo reports every node idle (the controller is up and the nodes have registered)."""
    deadline, state = time.time() + timeout, ""
    while time.time() < deadline:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                              env=slurm.env())
        state = proc.stdout.strip() or proc.stderr.strip()
        states = dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)
        if proc.returncode == 0 and all(states.get(n.name) == "idle" for n in slurm.nodes):
            return
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((slurm.root / "log").glob("*.log")))
    raise RuntimeError(f"the local Slurm node did not become idle within {timeout:.0f} s (sinfo: {state!r})\n{logs}")


def start(root: Path, cpus: int | None = None, mem_mb: int | None = None, nodes: int = 1) -> LocalSlurm:
    """Write the configuration under `root`, start munged, slurmctld and one slurmd per node, and wait for the idle
    nodes. One node is this machine on loopback; `nodes` > 1 are namespaces `node1`, `node2`, ... on a bridge
    (cluster/netns.py), the controller on the bridge's address. On failure, what was started is stopped."""
    ensure_installed()
    if os.geteuid() != 0:
        raise RuntimeError("the local Slurm runs its daemons as root (SlurmUser=root); run as root")
    root = Path(root).resolve()
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    lan = netns.create(nodes) if nodes > 1 else None
    members = (tuple(Node(f"node{i + 1}", n.addr, n) for i, n in enumerate(lan.nodes)) if lan
               else (Node(host, "127.0.0.1"),))
    slurm = LocalSlurm(root=root, nodes=members, cpus=cpus or os.cpu_count() or 1, lan=lan)
    try:
        slurm.conf.write_text(slurm_conf(root, host, lan.host_addr if lan else "127.0.0.1", members, slurm.cpus,
                                         mem_mb or memory_mb(0.5 / len(members)), free_port(), free_port()))
        (root / "plugstack.conf").write_text("")
        _start_munge(root)
        _run(["slurmctld", "-f", str(slurm.conf)], env=slurm.env())
        for node in members:
            (root / "spool" / node.name).mkdir(exist_ok=True)
            command = ["slurmd", "-f", str(slurm.conf), "-N", node.name]
            _run(lan.exec(node.net, command) if node.net else command, env=slurm.env())
        wait_idle(slurm)
    except BaseException:
        stop(slurm)
        raise
    return slurm


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(slurm: LocalSlurm, timeout: float = 30.0) -> None:
    """Cancel what is still queued, SIGTERM the slurmds, slurmctld and munged (by their pid files) and wait; then
    remove the nodes' namespaces and bridge, if any."""
    subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, env=slurm.env())
    for path in slurm.pids().values():
        pid = _pid(path)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    if slurm.lan is not None:
        netns.remove(slurm.lan)
