"""The method library `nws` needs torch, numpy, safetensors and constriction alone (plus the standard library):
in a fresh interpreter whose import system refuses every other top-level module, `nws` and every submodule import
and a small network converts, searches, stores and reloads a task (issue 18: the heavy stacks are extras).

What the four may bring is found by importing them first with the guard off: the modules they load that belong to
distributions they declare (sympy, networkx, jinja2, fsspec, filelock, typing_extensions, ...) are allowed; the ones
they load only when present (torch.hub takes tqdm if it is installed) are dropped from sys.modules, so that an nws
module importing them goes through the guard and is refused like any other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GUARD = r'''
import importlib, importlib.metadata as md, pkgutil, re, sys

at_start = {m.split(".")[0] for m in sys.modules}
CORE = ["torch", "numpy", "safetensors", "constriction"]


def declared(dists):
    """The distributions `dists` need, transitively (requirements behind an extra are not needed)."""
    seen, todo = set(), list(dists)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in reqs if "extra ==" not in r]
    return seen


needed = declared(CORE)
owners = md.packages_distributions()
allowed = set(sys.stdlib_module_names) | at_start | set(CORE) | {"nws"} | {
    top for top, dists in owners.items() if any(re.sub(r"[-_.]+", "-", d).lower() in needed for d in dists)}

import torch, numpy, safetensors.torch, constriction  # noqa: E401,F401 - the guard is off: what they bring is found

for name in [m for m in sys.modules if m.split(".")[0] not in allowed]:
    del sys.modules[name]  # loaded only because it happened to be installed (torch.hub's tqdm)


class Refuse:
    """A meta-path finder ahead of all others: a top-level module outside `allowed` is not importable."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in allowed:
            raise ModuleNotFoundError(f"nws must not import {name!r} (only torch, numpy, safetensors, "
                                      "constriction and the standard library)", name=name)
        return None


sys.meta_path.insert(0, Refuse())
'''

WORK = r'''
import tempfile

import nws
from nws import artifact, memory

names = [m.name for m in pkgutil.walk_packages(nws.__path__, "nws.")]
for name in names:
    importlib.import_module(name)

torch.manual_seed(0)
net = nws.convert(nws.models.resnet18(num_classes=3, width=0.25), pool_size=16, seed=0).eval()
x = torch.randn(2, 3, 32, 32)
out = net(x)
idx = nws.export_indices(net)
blob = nws.codec.encode(idx, nws.pool_sizes(net), mode="entropy")
assert all(torch.equal(a, b) for a, b in zip(nws.codec.decode(blob).values(), idx.values(), strict=True))
with tempfile.TemporaryDirectory() as tmp:
    artifact.save_task(tmp, net)
    artifact.load_task(tmp, net)
    assert torch.allclose(net(x), out) and memory.measure({"task": [f"{tmp}/{artifact.INDICES}"]})
assert torch.allclose(nws.materialize(net)(x), out, atol=1e-5)
print("light ok:", len(names), "modules")
'''


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def test_nws_needs_only_torch_numpy_safetensors_constriction():
    done = _run(GUARD + WORK)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "light ok" in done.stdout


def test_the_guard_refuses_a_heavy_import():
    """The guard means something: yaml (a stage's dependency, installed here) is refused once it is on."""
    done = _run(GUARD + "import yaml\n")
    assert done.returncode != 0 and "nws must not import 'yaml'" in done.stderr, done.stderr[-3000:]
