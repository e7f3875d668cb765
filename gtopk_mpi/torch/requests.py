"""What each rank announces for an op, and what the engine decides from every rank's
announcements: the op types, the Request with one constructor per op kind, Horovod's
consistency checks (and its wording, in its order: data type, operation, shape, scale
factors, root rank, device), the errors they raise, and the Join policy (which ops a joined
rank stands in for with zeros). Pure data and rules: the engine (engine.py) negotiates and
runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import torch

from ..agreement import MismatchError
from .compression import from_description


class HorovodInternalError(RuntimeError):
    """An error inside a collective (Horovod's name); raised on every rank alike."""


class TensorMismatchError(HorovodInternalError, MismatchError):
    """Ranks submitted the same named op with disagreeing arguments."""


#: Horovod's names of the dtypes an allreduce takes, and of those allgather / broadcast take
DTYPE_NAMES = {torch.int32: "HOROVOD_INT32", torch.int64: "HOROVOD_INT64", torch.float16: "HOROVOD_FLOAT16",
               torch.bfloat16: "HOROVOD_BFLOAT16", torch.float32: "HOROVOD_FLOAT32", torch.float64: "HOROVOD_FLOAT64"}
BROADCAST_DTYPES = {**DTYPE_NAMES, torch.uint8: "HOROVOD_UINT8", torch.int8: "HOROVOD_INT8",
                    torch.int16: "HOROVOD_INT16", torch.bool: "HOROVOD_BOOL"}

DUPLICATE_NAME_ERROR = ("Requested to {op} a tensor with the same name as another tensor that is currently "
                        "being processed. If you want to request another tensor, use a different tensor name.")


class OpType(str, Enum):
    """The kinds of op a Request announces (compares and formats as its Horovod name)."""

    ALLREDUCE = "ALLREDUCE"
    ALLGATHER = "ALLGATHER"
    BROADCAST = "BROADCAST"
    ALLTOALL = "ALLTOALL"
    REDUCESCATTER = "REDUCESCATTER"
    BARRIER = "BARRIER"
    JOIN = "JOIN"
    ADD_PROCESS_SET = "ADD_PROCESS_SET"
    REMOVE_PROCESS_SET = "REMOVE_PROCESS_SET"
    SHUTDOWN = "SHUTDOWN"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def label(self) -> str:
        """How Horovod names it in errors about process sets: "Allreduce", ..."""
        return self.value.capitalize()


@dataclass(frozen=True)
class Request:
    """What one rank announces for one named op (small and picklable). Build it with the
    constructor of its kind below, never positionally."""

    name: str
    op_type: OpType
    dtype: str = ""              # HOROVOD_FLOAT32, ...
    shape: tuple[int, ...] = ()
    reduce_op: str = ""
    prescale: float = 1.0
    postscale: float = 1.0
    root: int = -1
    device: str = "CPU"
    compression: str = ""
    process_set: int = 0         # the set's id (0: every rank)
    ranks: tuple[int, ...] = ()  # ADD_PROCESS_SET: the new set's ranks; REMOVE_PROCESS_SET: (its id,)
    splits: tuple[int, ...] = ()  # ALLTOALL: rows this rank sends to each member
    counts: tuple[tuple[str, int, int], ...] = ()  # JOIN: this rank's unnamed-op counters
    group: int = 0               # grouped ops: how many tensors the group has
    error: str = ""              # what this rank's local checks raised ("rank R: ..."): every rank raises it
    error_type: str = ""         # ValueError or NotImplementedError


# Horovod's checks, in its order; {op} is the op type, {a} and {b} the two values seen.
_CHECKS_BEFORE_SHAPE = (
    ("group", "Mismatched {op} group sizes: One rank grouped {a} tensors, but another rank grouped {b} tensors."),
    ("dtype", "Mismatched data types: One rank had type {a}, but another rank had type {b}."),
    ("op_type", "Mismatched MPI operations: One rank did an {a}, but another rank did an {b}."),
    ("reduce_op", "Mismatched {op} reduction operations: One rank did a {a}, but another rank did a {b}."),
)
_CHECKS_AFTER_SHAPE = (
    ("prescale", "Mismatched prescale factors: One rank sent factor {a}, but another rank sent factor {b}."),
    ("postscale", "Mismatched postscale factors: One rank sent factor {a}, but another rank sent factor {b}."),
    ("root", "Mismatched {op} root ranks: One rank specified root rank {a}, but another rank specified root rank {b}."),
    ("device", "Mismatched {op} CPU/GPU device selection: One rank specified device {a}, but another rank "
               "specified device {b}."),
    ("compression", "Mismatched {op} compression: One rank used {a}, but another rank used {b}."),
    ("ranks", "Mismatched {op} ranks: One rank specified ranks {a}, but another rank specified ranks {b}."),
)


def _first_difference(reqs: list[Request], checks) -> str | None:
    first = reqs[0]
    for attr, text in checks:
        for r in reqs[1:]:
            if getattr(r, attr) != getattr(first, attr):
                return text.format(op=first.op_type, a=getattr(first, attr), b=getattr(r, attr))
    return None


def _shape_difference(reqs: list[Request]) -> str | None:
    first = reqs[0]
    if first.op_type == "REDUCESCATTER" and len(first.shape) == 0:
        return "Process-set rank zero tried to REDUCESCATTER a rank-zero tensor."
    if first.op_type in ("ALLREDUCE", "BROADCAST", "REDUCESCATTER"):
        for r in reqs[1:]:
            if r.shape != first.shape:
                return (f"Mismatched {first.op_type} tensor shapes: One rank sent a tensor of shape "
                        f"{list(first.shape)}, but another rank sent a tensor of shape {list(r.shape)}.")
    if first.op_type in ("ALLGATHER", "ALLTOALL"):  # dimension 0 may differ
        op = first.op_type
        if len(first.shape) == 0:
            return f"Process-set rank zero tried to {op} a rank-zero tensor."
        for r in reqs[1:]:
            if len(r.shape) != len(first.shape):
                return (f"Mismatched {op} tensor shapes: One rank sent a tensor of rank {len(first.shape)}, "
                        f"but another rank sent a tensor of rank {len(r.shape)}.")
            for d in range(1, len(first.shape)):
                if r.shape[d] != first.shape[d]:
                    return (f"Mismatched {op} tensor shapes: One rank sent a tensor with dimension {d} "
                            f"equal to {first.shape[d]}, but another rank sent a tensor with dimension {d} "
                            f"equal to {r.shape[d]}.")
    return None


def check_requests(reqs: list[Request]) -> BaseException | None:
    """The error every rank raises for one name: the lowest rank's failed local check, else
    Horovod's consistency checks over every rank's request (None: all agree)."""
    failed = next((r for r in reqs if r.error), None)
    if failed is not None:
        return (NotImplementedError if failed.error_type == "NotImplementedError" else ValueError)(failed.error)
    text = (_first_difference(reqs, _CHECKS_BEFORE_SHAPE) or _shape_difference(reqs)
            or _first_difference(reqs, _CHECKS_AFTER_SHAPE))
    return TensorMismatchError(text) if text is not None else None


Key = tuple[int, str]  # (process set id, op name): what ranks match
JOIN_KEY: Key = (0, "__gtopk_join__")


# -------------------------------------------------------------------------------- one constructor per op kind


def _tensor_fields(tensor: torch.Tensor, dtypes: dict[torch.dtype, str]) -> dict:
    return {"dtype": dtypes.get(tensor.dtype, str(tensor.dtype)), "shape": tuple(tensor.shape),
            "device": "GPU" if tensor.is_cuda else "CPU"}


def allreduce(name: str, tensor: torch.Tensor, reduce_op: str, prescale: float, postscale: float,
              compression: str, *, group: int = 0, process_set: int = 0) -> Request:
    """An allreduce of ``tensor``; reduce_op: Horovod's name ("SUM", "AVERAGE", ...);
    compression: the compressor's description ("none" for none)."""
    return Request(name, OpType.ALLREDUCE, **_tensor_fields(tensor, DTYPE_NAMES), reduce_op=reduce_op,
                   prescale=float(prescale), postscale=float(postscale), compression=compression, group=group,
                   process_set=process_set)


def reducescatter(name: str, tensor: torch.Tensor, reduce_op: str, prescale: float, postscale: float,
                  compression: str, *, group: int = 0, process_set: int = 0) -> Request:
    """A reduce-scatter: the fields of an allreduce."""
    return replace(allreduce(name, tensor, reduce_op, prescale, postscale, compression, group=group,
                             process_set=process_set), op_type=OpType.REDUCESCATTER)


def allgather(name: str, tensor: torch.Tensor, *, group: int = 0, process_set: int = 0) -> Request:
    return Request(name, OpType.ALLGATHER, **_tensor_fields(tensor, BROADCAST_DTYPES), group=group,
                   process_set=process_set)


def broadcast(name: str, tensor: torch.Tensor, root: int, *, process_set: int = 0) -> Request:
    """root: a global rank."""
    return Request(name, OpType.BROADCAST, **_tensor_fields(tensor, BROADCAST_DTYPES), root=int(root),
                   process_set=process_set)


def alltoall(name: str, tensor: torch.Tensor, splits: list[int], *, process_set: int = 0) -> Request:
    """splits: the rows this rank sends to each member, in member order."""
    return Request(name, OpType.ALLTOALL, **_tensor_fields(tensor, BROADCAST_DTYPES),
                   splits=tuple(int(s) for s in splits), process_set=process_set)


def object_broadcast(name: str, root: int, *, process_set: int = 0) -> Request:
    """A pickled object from global rank ``root``."""
    return Request(name, OpType.BROADCAST, dtype="OBJECT", root=int(root), process_set=process_set)


def object_allgather(name: str, *, process_set: int = 0) -> Request:
    return Request(name, OpType.ALLGATHER, dtype="OBJECT", shape=(1,), process_set=process_set)


def barrier(name: str, *, process_set: int = 0) -> Request:
    return Request(name, OpType.BARRIER, process_set=process_set)


def join(counts: tuple[tuple[str, int, int], ...]) -> Request:
    """counts: this rank's unnamed-op counters (kind, set id, count)."""
    return Request(JOIN_KEY[1], OpType.JOIN, counts=counts)


def add_process_set(name: str, ranks: tuple[int, ...]) -> Request:
    return Request(name, OpType.ADD_PROCESS_SET, ranks=ranks)


def remove_process_set(name: str, set_id: int) -> Request:
    return Request(name, OpType.REMOVE_PROCESS_SET, ranks=(set_id,))


def shutdown() -> Request:
    return Request("__gtopk_shutdown__", OpType.SHUTDOWN)


def failed(name: str, op_type: OpType, error: BaseException, rank: int, *, group: int = 0,
           process_set: int = 0) -> Request:
    """The request of an op whose local checks raised ``error`` on this rank: every rank
    raises it for ``name`` (ValueError or NotImplementedError, prefixed with the rank)."""
    return Request(name, op_type, group=group, error=f"rank {rank}: {error}", error_type=type(error).__name__,
                   process_set=process_set)


_JOIN_UNSUPPORTED = {
    "ALLGATHER": "Allgather is not supported with Join at this time. Specify sparse_to_dense=True if using "
                 "DistributedOptimizer",
    "ALLTOALL": "Alltoall is not supported with Join at this time.",
    "REDUCESCATTER": "Reducescatter is not supported with Join at this time.",
    "BROADCAST": "Broadcast is not supported with Join at this time.",
}


def join_error(key: Key, request: Request) -> BaseException | None:
    """The error of an op that joined ranks lack (None: they stand in for it)."""
    op = request.op_type
    if key[0] != 0 and op not in _JOIN_UNSUPPORTED:
        return HorovodInternalError(f"{op} on a process set is not supported with Join at this time.")
    if op == "BARRIER":
        return None
    if op != "ALLREDUCE":  # every other op needs the joined ranks' data or their part in a collective
        return HorovodInternalError(_JOIN_UNSUPPORTED.get(op, f"{op} is not supported with Join at this time."))
    if request.device != "CPU":
        return HorovodInternalError("a joined rank stands in only for CPU allreduces at this time.")
    try:
        from_description(request.compression)
    except ValueError as e:
        return HorovodInternalError(str(e))
    return None


def key_of(request: Request) -> Key:
    return (request.process_set, request.name)
