"""Nodes made of network namespaces on this machine, for the multi-node Slurm tests (issue 17, item 8).

A bridge in the root namespace holds the subnet's first address (where slurmctld and the submitting process
are); each node is a network namespace whose only links are its loopback and one veth, named IFNAME inside, whose
other end is attached to the bridge. A process started with `Lan.exec` (a node's slurmd and every job
step it forks) has that node's address and reaches the other nodes and the controller over the bridge only:
traffic between ranks crosses "nodes" as it would between hosts, and nothing leaves the machine.

    lan = create(2)        # needs root (CAP_NET_ADMIN) and iproute2
    subprocess.run(lan.exec(lan.nodes[0], ["python", "-c", "..."]))
    remove(lan)            # kills what still runs inside, deletes the namespaces, veths and bridge
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

IFNAME = "nws0"  # the node's link, the same name in every namespace (GLOO_SOCKET_IFNAME=nws0 picks it)


@dataclass(frozen=True)
class NetNode:
    namespace: str
    addr: str


@dataclass(frozen=True)
class Lan:
    """The bridge (root namespace, address `host_addr`) and the namespaces attached to it."""

    bridge: str
    host_addr: str
    prefix_len: int
    nodes: tuple[NetNode, ...]

    @staticmethod
    def exec(node: NetNode, command: list[str]) -> list[str]:
        """`command` run inside `node`'s network namespace. nsenter switches the network only: `ip netns exec` also
        mounts a fresh /sys, without /sys/fs/cgroup, and slurmd refuses to start there."""
        return ["nsenter", f"--net=/run/netns/{node.namespace}", "--", *command]


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()} (network namespaces need root with "
                           "CAP_NET_ADMIN and iproute2)")


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route of this machine overlaps."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    used = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        word = line.split()[1] if word in ("local", "broadcast", "unicast") and len(line.split()) > 1 else word
        try:
            used.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for third in range(200, 256):
        for second in range(230, 256):
            net = ipaddress.ip_network(f"10.{second}.{third}.0/24")
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                return net
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test nodes")


def create(count: int, tag: str | None = None) -> Lan:
    """`count` namespaces on one new bridge; names carry `tag` (default: this process id) so parallel runs do not
    collide. On any failure what was made so far is removed."""
    if shutil.which("ip") is None:
        raise RuntimeError("iproute2's `ip` is needed to build network namespaces (apt-get install iproute2)")
    tag = tag or str(os.getpid() % 100000)
    net = free_subnet()
    hosts = list(net.hosts())
    lan = Lan(bridge=f"nwsbr{tag}", host_addr=str(hosts[0]), prefix_len=net.prefixlen,
              nodes=tuple(NetNode(f"nws{tag}n{i + 1}", str(hosts[i + 1])) for i in range(count)))
    try:
        _ip("link", "add", lan.bridge, "type", "bridge")
        _ip("addr", "add", f"{lan.host_addr}/{lan.prefix_len}", "dev", lan.bridge)
        _ip("link", "set", lan.bridge, "up")
        for i, node in enumerate(lan.nodes):
            outer, inner = f"nwsv{tag}h{i + 1}", f"nwsv{tag}c{i + 1}"
            _ip("netns", "add", node.namespace)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", node.namespace)
            _ip("link", "set", outer, "master", lan.bridge)
            _ip("link", "set", outer, "up")
            inside = ("-n", node.namespace)
            _ip(*inside, "link", "set", inner, "name", IFNAME)
            _ip(*inside, "addr", "add", f"{node.addr}/{lan.prefix_len}", "dev", IFNAME)
            _ip(*inside, "link", "set", IFNAME, "up")
            _ip(*inside, "link", "set", "lo", "up")
    except BaseException:
        remove(lan)
        raise
    return lan


def pids(node: NetNode) -> list[int]:
    """The processes running inside the node's namespace."""
    out = subprocess.run(["ip", "netns", "pids", node.namespace], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def remove(lan: Lan) -> None:
    """Kill what still runs in the namespaces, then delete them (their veth ends go with them) and the bridge."""
    for node in lan.nodes:
        for pid in pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "delete", node.namespace], capture_output=True)
    for i in range(len(lan.nodes)):  # a veth whose namespace was never made still has its root-side end
        subprocess.run(["ip", "link", "delete", f"nwsv{lan.bridge[5:]}h{i + 1}"], capture_output=True)
    subprocess.run(["ip", "link", "delete", lan.bridge], capture_output=True)


def leftovers(lan: Lan) -> list[str]:
    """What of `lan` still exists (empty once `remove` has done its work)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left = [n.namespace for n in lan.nodes if n.namespace in names]
    left += [lan.bridge] if f" {lan.bridge}:" in links else []
    left += [w.rstrip(":").split("@")[0] for w in links.split() if w.startswith(f"nwsv{lan.bridge[5:]}")]
    return left
