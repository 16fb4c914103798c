"""environment.yml (the cluster users' conda environment) lists every dependency of pyproject.toml with the same
version constraint, and installs the project itself."""

from __future__ import annotations

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
    wanted = {Requirement(d).name.lower(): str(Requirement(d).specifier) for d in project["dependencies"]}
    assert {name: listed.get(name) for name in wanted} == wanted
    assert any(line.startswith("-e .") for line in pip)  # the project itself, editable
    assert "python=3.11" in conda and project["requires-python"] == ">=3.11"
