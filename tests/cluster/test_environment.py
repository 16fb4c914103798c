"""environment.yml (the cluster users' conda environment) lists every dependency of pyproject.toml, the core ones
and every extra (`all`, the union of the stages' groups), with the same version constraint, pins PyTorch to the
version `make setup` installs, and installs the project itself with every extra, as `make setup` does; setup
reports the versions the installed packages' metadata give."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml
from packaging.requirements import Requirement

from tests.cluster.conftest import ROOT

CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> the distribution's


def _requirements(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        text = line.split("#")[0].strip()
        if not text or text.startswith("-") or "=" in text.replace(">=", "").replace("==", "").replace("<=", ""):
            continue  # options (-e .) and conda's own pins (python=3.11) are not requirements
        req = Requirement(text)
        out[CONDA_NAMES.get(req.name.lower(), req.name.lower())] = str(req.specifier)
    return out


def test_environment_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {**_requirements(conda), **_requirements(pip)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    stages = {d for group, deps in extras.items() if group not in ("all", "dev") for d in deps}
    assert sorted(extras["all"]) == sorted(stages)  # `all` is every stage's group, nothing more
    wanted = {Requirement(d).name.lower(): str(Requirement(d).specifier)
              for d in project["dependencies"] + extras["all"]}
    torch = next(d for d in conda if d.split("#")[0].strip().startswith("pytorch"))
    pinned = re.fullmatch(r"pytorch=(\S+)", torch.split("#")[0].strip())
    assert pinned and pinned.group(1) == _setup_torch(), torch  # the same PyTorch as `make setup`
    assert Requirement(f"torch{wanted.pop('torch')}").specifier.contains(pinned.group(1))
    assert {name: listed.get(name) for name in wanted} == wanted
    assert any(line.startswith("-e .[all,dev]") for line in pip)  # the project itself, editable, every extra
    assert '-e ".[all,dev]"' in (ROOT / "scripts" / "setup.sh").read_text()  # as `make setup` installs it
    assert "python=3.11" in conda and project["requires-python"] == ">=3.11"


def _setup_torch() -> str:
    """The torch version scripts/setup.sh installs (its TORCH_SPEC default, torch==X)."""
    spec = re.search(r"TORCH_SPEC=\$\{TORCH_SPEC:-torch==([^}]+)\}", (ROOT / "scripts" / "setup.sh").read_text())
    assert spec, "scripts/setup.sh no longer sets TORCH_SPEC=${TORCH_SPEC:-torch==X}"
    return spec.group(1)


def test_setup_reports_the_installed_versions():
    """The check at the end of scripts/setup.sh, run as setup runs it: FFCV's version is the installed
    distribution's (1.0.2), not its stale ffcv.__version__ (0.0.3rc1)."""
    from importlib.metadata import version

    script = (ROOT / "scripts" / "setup.sh").read_text()
    check = re.search(r"<<'PY'\n(.*?)\nPY\n", script, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert f"ffcv {version('ffcv')}" in out and "0.0.3rc1" not in out, out
    assert f"torch {version('torch')}" in out and f"deepspeed {version('deepspeed')}" in out, out
