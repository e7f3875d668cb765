# Sourced by demo.sh and test.sh: create .venv, install requirements, build the
# extension in place. Usage: source scripts/setup_env.sh requirements.txt
#
# GTOPK_MPI=system uses the MPI found on PATH (mpicc/mpiexec) instead of the mpich
# wheel: mpi4py is then built from source against it.
set -euo pipefail
REQS=${1:-requirements.txt}
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
if [ "${GTOPK_MPI:-wheel}" = "system" ]; then
  command -v mpicc >/dev/null || { echo "GTOPK_MPI=system but no mpicc on PATH" >&2; exit 1; }
  grep -v -E '^(mpich|mpi4py)' requirements.txt > .venv/reqs-system-mpi.txt
  "$VPY" -m pip install -q -r .venv/reqs-system-mpi.txt
  "$VPY" -m pip install -q --no-binary=mpi4py --no-cache-dir mpi4py
  if [ "$REQS" != requirements.txt ]; then
    grep -v -E '^-r ' "$REQS" > .venv/reqs-dev-system-mpi.txt
    "$VPY" -m pip install -q -r .venv/reqs-dev-system-mpi.txt
  fi
  export GTOPK_MPIEXEC=${GTOPK_MPIEXEC:-$(command -v mpiexec)}
else
  "$VPY" -m pip install -q -r "$REQS"
fi
"$VPY" -m pip install -q --no-build-isolation -e .
