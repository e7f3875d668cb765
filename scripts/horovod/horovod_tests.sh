#!/usr/bin/env bash
# Run Horovod's own PyTorch test file (test/parallel/test_torch.py of a Horovod source tree)
# against gtopk_mpi.torch: the import line changed, nothing else of the tests.
#   scripts/horovod/horovod_tests.sh HOROVOD_SRC [P] [pytest args...]     (default P = 2)
# Needs the venv (scripts/test.sh) and pip access for the tests' own helpers (mock,
# cloudpickle, pytest-timeout; installed into a scratch directory, not the venv). Two
# adjustments outside the tests' bodies: their utils/common.py imports horovod.runner
# helpers that no test of this file calls (stubbed), and torch >= 2.9's Muon optimizer
# (2-D parameters only) is left out of the loops over every torch.optim class.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${1:?usage: $0 HOROVOD_SRC [P] [pytest args...]}
p=${2:-2}
shift $(( $# >= 2 ? 2 : 1 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parallel" "$work/utils"
sed 's/^import horovod.torch as hvd/import gtopk_mpi.torch as hvd/; s/for subclass in torch.optim.Optimizer.__subclasses__()/for subclass in torch.optim.Optimizer.__subclasses__() if subclass.__name__ != "Muon"/' \
  "$src/test/parallel/test_torch.py" > "$work/parallel/test_torch.py"
sed 's/^from horovod.runner.util.threads import in_thread/in_thread = None/' "$src/test/utils/common.py" > "$work/utils/common.py"
.venv/bin/python -m pip install -q --target "$work/deps" mock cloudpickle packaging pytest-timeout
mpiexec=${GTOPK_MPIEXEC:-$PWD/.venv/bin/mpiexec}
py=$PWD/.venv/bin/python
cd "$work/parallel"
PYTHONPATH="$work/deps" timeout 1800 "$mpiexec" -n "$p" "$py" -m pytest -q -p no:cacheprovider \
  --timeout 120 --timeout-method thread test_torch.py -rf "$@"
