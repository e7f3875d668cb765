#!/usr/bin/env bash
# Horovod's own examples/pytorch/pytorch_mnist.py on Fashion-MNIST, through gtopk_mpi.torch:
#   scripts/horovod/horovod_mnist.sh HOROVOD_SRC [P] [example args...]      (default P = 4)
# e.g. GTOPK_DENSITY=0.001 scripts/horovod/horovod_mnist.sh ~/horovod 4 --epochs 5
# Only the import changes (`import horovod.torch as hvd` -> `import gtopk_mpi.torch as hvd`;
# `import horovod` goes, used only by horovod.run). torchvision's MNIST and transforms come
# from scripts/horovod/horovod_shim (Fashion-MNIST's IDX files, by default Debian's
# /usr/share/datasets/fashion-mnist; --data-dir DIR for others). Needs the venv (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${1:?usage: $0 HOROVOD_SRC [P] [example args...]}
p=${2:-4}
shift $(( $# >= 2 ? 2 : 1 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -e 's/^import horovod.torch as hvd/import gtopk_mpi.torch as hvd/' -e '/^import horovod$/d' \
  "$src/examples/pytorch/pytorch_mnist.py" > "$work/pytorch_mnist.py"
grep -q '^import gtopk_mpi.torch as hvd' "$work/pytorch_mnist.py" || { echo "no horovod.torch import in $src" >&2; exit 1; }
args=("$@")
[[ " $* " == *" --data-dir "* ]] || args+=(--data-dir /usr/share/datasets/fashion-mnist)
mpiexec=${GTOPK_MPIEXEC:-$PWD/.venv/bin/mpiexec}
PYTHONPATH="$PWD/scripts/horovod/horovod_shim:$PWD/scripts/experiments" HOME="$work" \
  "$mpiexec" -n "$p" "$PWD/.venv/bin/python" "$work/pytorch_mnist.py" "${args[@]}"
