"""A real two-node job (issue 17, item 8). Two network namespaces on this machine, each with its own address and its own
slurmd, and one slurmctld on the bridge between them (tests/cluster/local.py, cluster/netns.py). The pretrain job,
rendered and submitted through the project's own sbatch path with --nodes=2 and one CPU rank per node, takes its
rendezvous from the first node's address, meets across the namespaces (gloo on each node's own link) and must give bit
for bit the pools of the local 2-rank run. The fixture then stops the daemons and checks that no namespace, link or
process it made is left."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cluster import netns
from cluster.render import Resources
from cluster.submit import submit_jobs
from nws.io import read_json
from pretrain.launch import DIST_VARS
from tests.cluster import local
from tests.cluster.conftest import STEPS
from tests.cluster.pretrain_jobs import ended, job_log, pretrain_job, same_pools


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    cluster = local.start(tmp_path_factory.mktemp("slurm2"), nodes=2)
    yield cluster
    local.stop(cluster)
    assert netns.leftovers(cluster.lan) == []
    assert all(not netns.pids(n) for n in cluster.lan.nodes)


@pytest.fixture
def env(two_nodes) -> dict[str, str]:
    """The two-node cluster's SLURM_CONF, one BLAS thread, no launcher's rendezvous variables, and gloo on the
    nodes' own link (the machine's host name resolves to an address no namespace has)."""
    base = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return two_nodes.env({**base, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": netns.IFNAME})


def test_the_nodes_are_apart(two_nodes, env):
    """Each node's step sees only its own address; the other node is reached over the bridge."""
    first, second = two_nodes.nodes
    probe = ("import socket, sys, time\n"
             "for _ in range(100):  # until the server listens\n"
             "    try:\n"
             "        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); break\n"
             "    except ConnectionRefusedError:\n"
             "        time.sleep(0.1)\n"
             "print(c.getsockname()[0])")
    listen = "import socket; s = socket.socket(); s.bind(('', 47211)); s.listen(); s.accept()"
    server = subprocess.Popen(two_nodes.lan.exec(first.net, [sys.executable, "-c", listen]))
    try:
        seen = subprocess.run(two_nodes.lan.exec(second.net, [sys.executable, "-c", probe, first.addr, "47211"]),
                              capture_output=True, text=True, timeout=30, check=True).stdout.split()
    finally:
        server.wait(timeout=30)
    assert seen == [second.addr]
    out = subprocess.run(["srun", "--nodes=2", "--ntasks-per-node=1", "--label", "ip", "-o", "-4", "addr", "show",
                          netns.IFNAME], capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    addrs = sorted(line.split()[4].split("/")[0] for line in out.splitlines())
    assert addrs == sorted([first.addr, second.addr]), out


def test_two_node_job_gives_the_pools_of_the_two_rank_run(two_nodes, env, digits, reference, tmp_path):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", env["SLURM_CONF"])
        sub, job = pretrain_job(tmp_path, digits, out, Resources(nodes=2, tasks_per_node=1))
    assert "#SBATCH --nodes=2" in job.text and "#SBATCH --ntasks-per-node=1" in job.text
    [(_, job_id)] = submit_jobs([job], env)
    ended(sub, job_id, env)
    first = two_nodes.nodes[0]
    log = job_log(sub, job_id)
    assert f"2 tasks on node[1-2], master {first.addr}:" in log, log[-2000:]
    summary = read_json(out / "pretrain.json")
    assert summary["world_size"] == 2 and summary["nws"]["steps"] == STEPS
    same_pools(reference, out)
