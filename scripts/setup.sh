#!/usr/bin/env bash
# Idempotent set-up of .venv on a fresh machine (make setup).
# 1. system packages FFCV needs to build (apt-get when root on Debian, else a clear message);
# 2. torch==2.13.0 first, so that no later package pulls a CUDA build;
# 3. the project (editable) with every extra (`all`: the stages' stacks; the core is what nws needs) and the dev
#    tools.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# FFCV's build needs the first three; dataset-fashion-mnist puts the real Fashion-MNIST IDX files in
# /usr/share/datasets/fashion-mnist (real data for the tests and the fmnist config); chromium opens the MLflow UI
# in the browser test; slurm-wlm and munge are the one-node Slurm cluster the tests of cluster/ start
SYSTEM_PKGS=(libopencv-dev libturbojpeg0-dev pkg-config dataset-fashion-mnist chromium slurm-wlm munge)

missing=()
for p in "${SYSTEM_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo ">> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "ERROR: missing system packages: ${missing[*]}" >&2
    echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
    echo "  conda: conda env create -f environment.yml (brings opencv, libjpeg-turbo, pkg-config for FFCV);" >&2
    echo "  Fashion-MNIST: put the four IDX .gz files in a folder and give it as data.root" >&2
    exit 1
  fi
fi

[[ -x $VENV/bin/python ]] || { echo ">> creating $VENV"; "$PY" -m venv "$VENV"; }
pip=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo ">> installing $TORCH_SPEC first"
  "${pip[@]}" install "$TORCH_SPEC"
fi
# numpy, cython and setuptools must be present to build ffcv from source without build isolation
"${pip[@]}" install "numpy>=1.26" cython setuptools wheel pkgconfig
echo ">> installing the project with every extra"
"${pip[@]}" install --no-build-isolation -e ".[all,dev]"
# DeepSpeed compiles its CPU shared-memory communication op the first time a process group starts (about 2 minutes):
# build it here, once, rather than inside the first test that launches 2 ranks
DS_ACCELERATOR=cpu "$VENV/bin/python" -c \
  "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()" >/dev/null 2>&1 \
  || echo ">> note: DeepSpeed's CPU communication op did not prebuild; it will build on first use"
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
import torch, ffcv, webdataset, constriction, deepspeed, mlflow, accelerate, nws  # noqa: F401 — fail here, not in the tests
# versions from the installed metadata: FFCV 1.0.2's own ffcv.__version__ still says 0.0.3rc1
names = ["torch", "deepspeed", "ffcv", "webdataset", "accelerate", "mlflow"]
print(">> setup ok: " + ", ".join(f"{n} {version(n)}" for n in names))
PY
