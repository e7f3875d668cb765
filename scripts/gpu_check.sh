#!/usr/bin/env bash
# The GPU check, on a machine with one NVIDIA GPU (the lent device: Python 3.12 with torch
# and CuPy, mpi4py without an MPI library). Builds the extension with CUDA for that GPU,
# runs the GPU tests (selection/merge bit-identical to the CPU, the collective on 2 ranks
# sharing the GPU; each twice: the custom CUDA kernels, then the path made of torch's own
# operations that installs without a toolkit run, GTOPK_DEVICE_KERNELS=cuda / torch), compute-sanitizer on every kernel (what the CPU emulator of
# tests/test_cuda_emulated.py cannot see: races between real threads, out-of-bounds device
# accesses) and the GPU benchmark. Under 8 minutes.
#
# Before a device run, here: put the mpich wheel for Python 3.12 in .whl/ (ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl mpich
# then run this script with .whl carried.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  # --prefix, not --target: --target drops the wheel's lib/ (libmpi.so), which mpi4py loads
  # (where under the prefix depends on the Python's install scheme: find them)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --prefix /tmp/gtopk_mpich .whl/*.whl
  MPICH_BIN=$(dirname "$(find /tmp/gtopk_mpich -name mpiexec -type f | head -1)")
  MPICH_LIB=$(dirname "$(find /tmp/gtopk_mpich -name 'libmpi.so.12' | head -1)")
  export PATH=$MPICH_BIN:$PATH
  export LD_LIBRARY_PATH=$MPICH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
"$PY" -c "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])" \
  || { echo "mpi4py cannot load an MPI library (carry the mpich wheel in .whl/, see above)"; exit 1; }
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
# the toolkit: $CUDA_HOME, else /usr/local/cuda (setup.py's rule), else the nvcc on PATH
if [ -z "${CUDA_HOME:-}" ] && [ ! -x /usr/local/cuda/bin/nvcc ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  export CUDA_HOME
fi
echo "CUDA toolkit: ${CUDA_HOME:-/usr/local/cuda}"
ARCH=$("$PY" -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "== build (sm_$ARCH)"
GTOPK_MPI_WITH_CUDA=1 GTOPK_CUDA_ARCHS=$ARCH timeout 300 "$PY" setup.py build_ext --inplace -j 8 > /tmp/gtopk_build.log 2>&1 \
  || { tail -40 /tmp/gtopk_build.log; exit 1; }
"$PY" -c "import gtopk_mpi.cuda as c; assert c.available(), 'CUDA build or GPU missing'; print('cuda available')"
declare -a SUMMARY=()
FAIL=0   # every step runs (one device session may be all there is); the exit status says if any failed
step() {  # step NAME TIMEOUT_S CMD...: run, keep the log's tail, record ok / FAILED / timed out
  local name=$1 limit=$2 rc=0
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "/tmp/gtopk_step.log" 2>&1 || rc=$?
  tail -n 40 /tmp/gtopk_step.log
  case $rc in
    0) SUMMARY+=("$name|ok") ;;
    124) SUMMARY+=("$name|timed out after ${limit}s"); FAIL=1 ;;
    *) SUMMARY+=("$name|FAILED (exit $rc)"); FAIL=1 ;;
  esac
}
step "GPU tests, custom and torch-ops kernels (pytest tests/test_cuda.py tests/test_kernels.py)" 240 \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_kernels.py
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck synccheck; do
    step "compute-sanitizer --tool $tool (scripts/gpu/cuda_sanitize.py)" 50 \
      "$SAN" --tool "$tool" --error-exitcode 1 "$PY" scripts/gpu/cuda_sanitize.py
  done
else
  SUMMARY+=("compute-sanitizer|not found")
fi
step "GPU benchmark (scripts/gpu/bench_gpu.py)" 90 "$PY" scripts/gpu/bench_gpu.py
cp /tmp/gtopk_step.log /tmp/gtopk_bench.log
echo
echo "== summary: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo GPU)"
for row in "${SUMMARY[@]}"; do
  printf '  %-64s %s\n' "${row%%|*}" "${row#*|}"
done
grep -E "^GPU:|^  (torch|gtopk|one read|select|fused|merge)" /tmp/gtopk_bench.log 2>/dev/null || true
exit $FAIL
