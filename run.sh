#!/usr/bin/env bash
# One entry point for a fresh clone:  ./run.sh demo | ./run.sh test [pytest args] | ./run.sh setup
# Creates .venv (unless a venv or conda env is already active), installs torch once, then lambdalib.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
# The torch build to install when none is importable. Pinned here (not in pyproject) so Colab's own
# torch is never replaced; override with e.g. LAMBDALIB_TORCH="torch torchvision --index-url ...".
TORCH_SPEC=${LAMBDALIB_TORCH:-"torch==2.14.1 torchvision==0.29.1"}

setup() {
  # an activated venv or conda env is used as it is (conda's auto-activated base is not one)
  if [ -z "${VIRTUAL_ENV:-}" ] && { [ -z "${CONDA_PREFIX:-}" ] || [ "${CONDA_DEFAULT_ENV:-}" = base ]; }; then
    if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # missing or half-created
      rm -rf .venv
      echo "[setup] creating .venv"
      "$PYTHON" -m venv .venv || { rm -rf .venv; echo "could not create .venv: install python3-venv" >&2; exit 1; }
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
  fi
  python -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "lambdalib needs Python >= 3.10 (set PYTHON=python3.x)" >&2; exit 1; }
  if ! python -c 'import torch, torchvision' 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC
  fi
  # Hold the torch we have, so no dependency's resolver swaps it for another build.
  python - > .venv-constraints.txt <<'PY'
import torch, torchvision
for mod in (torch, torchvision):
    print(f"{mod.__name__}=={mod.__version__.split('+')[0]}")
PY
  stamp="$(python -c 'import sys; print(sys.prefix)')/.lambdalib-installed"
  if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    echo "[setup] installing lambdalib and its dependencies"
    python -m pip install -q -e ".[dev]" -c .venv-constraints.txt
    cp pyproject.toml "$stamp"
  fi
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    python -m lambdalib.cli demo "$@"
    ;;
  test)
    setup
    echo "[test] ruff check"
    python -m ruff check . || exit 1
    rc=0
    python -m pytest -q "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: treating as a failure" >&2; exit 1; fi
    exit "$rc"
    ;;
  *)
    echo "usage: ./run.sh demo | test [pytest args] | setup" >&2
    exit 2
    ;;
esac
