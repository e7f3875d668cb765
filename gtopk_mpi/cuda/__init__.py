"""The GPU path: kernels for top-k selection, merge and scatter on device tensors
(kernels.py: the custom CUDA kernels, or torch_kernels.py: torch's own operations, for any
torch device and any install) and the memory space that runs the collectives on device data
(space.py).

The custom kernels are built when setup.py finds a CUDA toolkit (GTOPK_MPI_WITH_CUDA=auto|1);
``available()`` says whether this build has them and a GPU is usable; ``kernels_for(device)``
which kernels a device gets (GTOPK_DEVICE_KERNELS). The collectives themselves are the
package's (gtopk_mpi.gtopk_allreduce etc.): given a torch CUDA tensor or a CuPy array they
run their one body on a DeviceSpace. This package imports nothing of the collectives.
"""

from .kernels import available, built, kernels_for, merge_topk, select_topk, to_dense, use_kernels
from .space import DeviceSpace, space_for

__all__ = ["DeviceSpace", "available", "built", "kernels_for", "merge_topk", "select_topk", "space_for", "to_dense",
           "use_kernels"]
