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
  "$VPY" -m pip uninstall -q -y mpich 2>/dev/null || true   # never mix in the wheel's MPICH
  # build mpi4py against this mpicc (again whenever the mpicc differs from the last build's)
  if [ "$(cat .venv/.system-mpicc 2>/dev/null)" != "$(command -v mpicc)" ]; then
    "$VPY" -m pip install -q --force-reinstall --no-deps --no-binary=mpi4py --no-cache-dir mpi4py
    command -v mpicc > .venv/.system-mpicc
  fi
  if [ "$REQS" != requirements.txt ]; then
    grep -v -E '^-r ' "$REQS" > .venv/reqs-dev-system-mpi.txt
    "$VPY" -m pip install -q -r .venv/reqs-dev-system-mpi.txt
  fi
  export GTOPK_MPIEXEC=${GTOPK_MPIEXEC:-$(command -v mpiexec)}
else
  "$VPY" -m pip install -q -r "$REQS"
  if [ -f .venv/.system-mpicc ]; then   # switching back from a system MPI: the wheel's mpi4py again
    "$VPY" -m pip install -q --force-reinstall --no-deps --only-binary=mpi4py mpi4py
    rm -f .venv/.system-mpicc
  fi
fi
# Fashion-MNIST (scripts/experiments/train.py --data fashion-mnist, scripts/horovod/horovod_mnist.sh) from Debian's
# package where apt is available; without it those runs say what to install, nothing else needs it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
  { $sudo apt-get install -y -q dataset-fashion-mnist || { $sudo apt-get update -q \
      && $sudo apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null 2>&1 \
    || echo "setup_env.sh: could not apt-get install dataset-fashion-mnist (Fashion-MNIST runs need it)" >&2
fi
# (Re)build the extension only when a source, setup.py or the CUDA switch changed.
so=$(ls gtopk_mpi/_C.*.so 2>/dev/null | head -1 || true)
want="cuda=${GTOPK_MPI_WITH_CUDA:-auto}"
if [ -z "$so" ] || [ "$(cat .venv/.gtopk-build 2>/dev/null)" != "$want" ] \
   || [ -n "$(find csrc setup.py pyproject.toml -newer "$so" -type f 2>/dev/null | head -1)" ] \
   || ! "$VPY" -c "import gtopk_mpi._C, gtopk_mpi._cuda_emu" 2>/dev/null; then
  "$VPY" -m pip install -q --no-build-isolation -e .
  echo "$want" > .venv/.gtopk-build
fi
