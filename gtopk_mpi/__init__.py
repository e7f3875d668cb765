"""gtopk_mpi: global top-k (gTop-k) sparse allreduce over MPI for data-parallel SGD.

Import ``gtopk_mpi.torch`` for the Horovod-style PyTorch front end; this package
holds the runtime and the collectives on NumPy arrays (and on torch CUDA tensors or
CuPy arrays, through gtopk_mpi.cuda):

* :func:`gtopk_allreduce` - the butterfly gTopKAllReduce with error feedback (butterfly.py);
* :func:`topk_allreduce` - local top-k + allgather (the paper's TopKAllReduce, baselines.py);
* :func:`dense_allreduce` - MPI_Allreduce (the paper's DenseAllReduce, baselines.py).

Layers, bottom up: config (knobs), transport (MPI behind a small seam), runtime
(init, the default transport), selection (C++ kernels), spaces (host / device memory),
wire (message format), agreement (the same error on every rank), arguments, then the
collectives.
"""

from .agreement import MismatchError
from .baselines import dense_allreduce, gtopk_tree_allreduce, topk_allreduce
from .butterfly import gtopk_allreduce
from .results import CommStats, SparseResult
from .runtime import init, is_initialized, local_rank, local_size, rank, shutdown, size
from .selection import merge_topk, select_topk, select_topk_ef

__all__ = ["CommStats", "MismatchError", "SparseResult", "dense_allreduce", "gtopk_allreduce", "gtopk_tree_allreduce",
           "init", "is_initialized", "local_rank", "local_size", "merge_topk", "rank", "select_topk", "select_topk_ef",
           "shutdown", "size", "topk_allreduce"]
__version__ = "0.1.0"
