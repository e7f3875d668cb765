"""gtopk_mpi: global top-k (gTop-k) sparse allreduce over MPI for data-parallel SGD.

Import ``gtopk_mpi.torch`` for the Horovod-style PyTorch front end; this package
holds the runtime and the collectives on NumPy arrays (and on torch CUDA tensors or
CuPy arrays, through gtopk_mpi.cuda):

* :func:`gtopk_allreduce` - the butterfly gTopKAllReduce with error feedback (butterfly.py);
* :func:`topk_allreduce` - local top-k + allgather (the paper's TopKAllReduce, baselines.py);
* :func:`dense_allreduce` - MPI_Allreduce (the paper's DenseAllReduce, baselines.py).

Outside an MPI launcher (torchrun, plain python) MPI starts in :func:`init` (or
``gtopk_mpi.torch.init()``), not when this package is imported; under mpirun, or where
mpi4py.MPI was imported first, mpi4py starts it at import as always.

Layers, bottom up: config (knobs), transport (MPI behind a small seam), runtime
(init, the default transport), selection (C++ kernels), spaces (host / device memory),
wire (message format), agreement (the same error on every rank), arguments, then the
collectives.
"""

import os
import sys

import mpi4py

# Variables an MPI launcher (MPICH / Intel MPI / MVAPICH's PMI, Open MPI, PMIx) sets in its processes.
_MPI_LAUNCHED = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALRANKID")
if "mpi4py.MPI" not in sys.modules and not any(v in os.environ for v in _MPI_LAUNCHED):
    # Not under mpirun (torchrun, or plain python): MPI starts in init() (runtime.start_mpi) if at all,
    # so a torchrun job with the DDP hook never starts it. Under mpirun mpi4py starts it at import as
    # ever, so a script's own mpi4py calls before init() keep working.
    mpi4py.rc.initialize = False

from .agreement import MismatchError  # noqa: E402
from .baselines import dense_allreduce, gtopk_tree_allreduce, topk_allreduce  # noqa: E402
from .butterfly import gtopk_allreduce  # noqa: E402
from .results import CommStats, SparseResult  # noqa: E402
from .runtime import init, is_initialized, local_rank, local_size, rank, shutdown, size  # noqa: E402
from .selection import merge_topk, select_topk, select_topk_ef  # noqa: E402

__all__ = ["CommStats", "MismatchError", "SparseResult", "dense_allreduce", "gtopk_allreduce", "gtopk_tree_allreduce",
           "init", "is_initialized", "local_rank", "local_size", "merge_topk", "rank", "select_topk", "select_topk_ef",
           "shutdown", "size", "topk_allreduce"]
__version__ = "0.1.0"
