#!/usr/bin/env bash
# Set up .venv, build, and run the main job: dense allreduce, allgather Top-k and
# gTop-k (merged and exact values) on a ResNet-50-sized float32 gradient
# (25,557,032 elements, density 0.001) on 4 local ranks.
# Extra arguments go to the benchmark (see: .venv/bin/python -m gtopk_mpi.bench --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh requirements.txt
MPIEXEC=${GTOPK_MPIEXEC:-.venv/bin/mpiexec}
"$MPIEXEC" -n 4 .venv/bin/python -m gtopk_mpi.bench --model resnet50 --density 0.001 "$@"
