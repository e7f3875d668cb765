#!/usr/bin/env bash
# The GPU check, on a machine with one NVIDIA GPU (the lent device: Python 3.12 with torch
# and CuPy, mpi4py without an MPI library). Builds the extension with CUDA for that GPU,
# runs the GPU tests (selection/merge bit-identical to the CPU, the collective on 2 ranks
# sharing the GPU), compute-sanitizer on every kernel (what the CPU emulator of
# tests/test_cuda_emulated.py cannot see: races between real threads, out-of-bounds device
# accesses) and the GPU benchmark. Under 5 minutes.
#
# Before a device run, here: put the mpich wheel for Python 3.12 in .whl/ (ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl mpich
# then run this script with .whl carried.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gtopk_site .whl/*.whl
  export PYTHONPATH=/tmp/gtopk_site
  export PATH=/tmp/gtopk_site/bin:$PATH
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
ARCH=$("$PY" -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "== build (sm_$ARCH)"
GTOPK_MPI_WITH_CUDA=1 GTOPK_CUDA_ARCHS=$ARCH "$PY" setup.py build_ext --inplace -j 8 > /tmp/gtopk_build.log 2>&1 \
  || { tail -40 /tmp/gtopk_build.log; exit 1; }
"$PY" -c "import gtopk_mpi.cuda as c; assert c.available(), 'CUDA build or GPU missing'; print('cuda available')"
echo "== GPU tests"
FAIL=0   # every step runs (one device session may be all there is); the exit status says if any failed
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_kernels.py || FAIL=1
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer --tool $tool"
    timeout 50 "$SAN" --tool "$tool" --error-exitcode 1 "$PY" scripts/cuda_sanitize.py 2>&1 | tail -4 || FAIL=1
  done
fi
echo "== GPU benchmark"
"$PY" scripts/bench_gpu.py || FAIL=1
exit $FAIL
