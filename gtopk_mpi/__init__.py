"""gtopk_mpi: global top-k (gTop-k) sparse allreduce over MPI for data-parallel SGD.

Import ``gtopk_mpi.torch`` for the Horovod-style PyTorch front end; this package
holds the MPI runtime and the NumPy-level collectives:

* :func:`dense_allreduce` - MPI_Allreduce baseline (the paper's DenseAllReduce);
* :func:`topk_allreduce` - local top-k + allgather (the paper's TopKAllReduce);
* :func:`gtopk_allreduce` - the butterfly gTopKAllReduce with error feedback.
"""

from .collectives import CommStats, SparseResult, dense_allreduce, gtopk_allreduce, topk_allreduce
from .errors import MismatchError
from .runtime import init, is_initialized, local_rank, local_size, rank, shutdown, size
from .selection import merge_topk, select_topk, select_topk_ef

__all__ = [
    "CommStats",
    "MismatchError",
    "SparseResult",
    "dense_allreduce",
    "gtopk_allreduce",
    "init",
    "is_initialized",
    "local_rank",
    "local_size",
    "merge_topk",
    "rank",
    "select_topk",
    "select_topk_ef",
    "shutdown",
    "size",
    "topk_allreduce",
]
__version__ = "0.1.0"
