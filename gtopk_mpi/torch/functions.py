"""Model and object helpers of horovod.torch: broadcast parameters, optimizer state, objects."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .engine import Request, Work, op_name, submit_checked
from .mpi_ops import broadcast_async_, global_process_set, rank, synchronize
from .optimizer import ERROR_FEEDBACK_KEY


def broadcast_parameters(params: dict[str, torch.Tensor] | Iterable, root_rank: int,
                         process_set=global_process_set) -> None:
    """Overwrite every rank's tensors with root_rank's, in place.

    params: a state_dict / dict of name -> tensor, a list of (name, tensor) pairs
    (e.g. model.named_parameters()), or a list of tensors.
    """
    process_set._check()
    if isinstance(params, dict):
        items = sorted(params.items())
    else:
        items = list(params)
        if items and not isinstance(items[0], tuple):
            items = [(f"param.{i}", p) for i, p in enumerate(items)]
    handles = []
    for name, p in items:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"invalid params of type {type(p).__name__} for {name!r}")
        handles.append(broadcast_async_(p.data if isinstance(p, torch.nn.Parameter) else p, root_rank,
                                        name=f"broadcast_parameters.{name}"))
    for h in handles:
        synchronize(h)


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None, process_set=global_process_set) -> Any:
    """Return root_rank's (picklable) object on every rank."""
    names = [op_name(name, "broadcast_object")]

    def build() -> list[Work]:
        process_set._check()
        req = Request(names[0], "BROADCAST", dtype="OBJECT", root=int(root_rank))
        return [Work(req, lambda link, reqs: link.bcast_obj(obj, root_rank))]

    return submit_checked("BROADCAST", names, build)[0].wait()


def allgather_object(obj: Any, name: str | None = None, process_set=global_process_set) -> list[Any]:
    """List of every rank's (picklable) object, in rank order."""
    names = [op_name(name, "allgather_object")]

    def build() -> list[Work]:
        process_set._check()
        return [Work(Request(names[0], "ALLGATHER", dtype="OBJECT", shape=(1,)),
                     lambda link, reqs: link.allgather_obj(obj))]

    return submit_checked("ALLGATHER", names, build)[0].wait()


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int,
                              process_set=global_process_set) -> None:
    """Overwrite every rank's optimizer state and hyper-parameters with root_rank's.

    The state dict (tensors included) travels as one pickled object; non-root ranks
    load it with load_state_dict, so state created by root's first step appears on
    every rank. A DistributedOptimizer's error-feedback state (residuals) is per rank
    and stays as it is on every rank.
    """
    state = optimizer.state_dict()
    state.pop(ERROR_FEEDBACK_KEY, None)
    state = broadcast_object(state, root_rank, name="broadcast_optimizer_state", process_set=process_set)
    if rank() != root_rank:
        optimizer.load_state_dict(state)
