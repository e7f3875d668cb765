"""The GPU path: CUDA kernels for top-k selection, merge and scatter (kernels.py) and the
memory space that runs the collectives on device data (space.py).

Built when setup.py finds a CUDA toolkit (GTOPK_MPI_WITH_CUDA=auto|1); ``available()``
says whether this build has it and a GPU is usable. The collectives themselves are the
package's (gtopk_mpi.gtopk_allreduce etc.): given a torch CUDA tensor or a CuPy array they
run their one body on a DeviceSpace. This package imports nothing of the collectives.
"""

from .kernels import available, built, merge_topk, select_topk, to_dense, use_emulator
from .space import DeviceSpace, space_for

__all__ = ["DeviceSpace", "available", "built", "merge_topk", "select_topk", "space_for", "to_dense",
           "use_emulator"]
