"""Model and object helpers of horovod.torch: broadcast parameters, optimizer state, objects."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from . import requests
from .engine import Work
from .mpi_ops import broadcast_async_, rank, synchronize
from .optimizer import ERROR_FEEDBACK_KEY, is_distributed
from .process_sets import global_process_set, member_set_id, members_of, root_index
from .requests import OpType
from .submission import WorkOf, submit_op


def broadcast_parameters(params: dict[str, torch.Tensor] | Iterable, root_rank: int,
                         process_set=global_process_set) -> None:
    """Overwrite every rank's tensors with root_rank's, in place.

    params: a state_dict / dict of name -> tensor, a list of (name, tensor) pairs
    (e.g. model.named_parameters()), or a list of tensors.
    """
    member_set_id(process_set, "Broadcast")
    if isinstance(params, dict):
        items = sorted(params.items())
    else:
        items = list(params)  # type: ignore[arg-type]  # pairs, or tensors (named below)
        if items and not isinstance(items[0], tuple):
            items = [(f"param.{i}", p) for i, p in enumerate(items)]
    handles = []
    for name, p in items:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"invalid params of type {type(p).__name__} for {name!r}")
        handles.append(broadcast_async_(p.data if isinstance(p, torch.nn.Parameter) else p, root_rank,
                                        name=f"broadcast_parameters.{name}", process_set=process_set))
    for h in handles:
        synchronize(h)


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None, process_set=global_process_set) -> Any:
    """Return root_rank's (picklable) object on every rank."""
    def prepare() -> WorkOf:
        def work(_: None, n: str, group: int, set_id: int) -> Work:
            root = root_index(root_rank, members_of(set_id))
            return Work(requests.object_broadcast(n, root_rank, process_set=set_id),
                        lambda link, reqs: link.bcast_obj(obj, root))
        return work

    return submit_op(OpType.BROADCAST, [None], name, False, process_set, prepare,
                     name_kind="broadcast_object")[0].wait()


def allgather_object(obj: Any, name: str | None = None, process_set=global_process_set) -> list[Any]:
    """List of every rank's (picklable) object, in rank order."""
    def work(_: None, n: str, group: int, set_id: int) -> Work:
        return Work(requests.object_allgather(n, process_set=set_id), lambda link, reqs: link.allgather_obj(obj))

    return submit_op(OpType.ALLGATHER, [None], name, False, process_set, lambda: work,
                     name_kind="allgather_object")[0].wait()


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int,
                              process_set=global_process_set) -> None:
    """Overwrite every rank's optimizer state and hyper-parameters with root_rank's.

    The state dict (tensors included) travels as one pickled object; non-root ranks
    load it with load_state_dict. An optimizer without state yet (freshly built) first
    takes one step with zero gradients on every rank, as Horovod does, so that its state
    (momentum buffers, Adam's moments) exists everywhere. A DistributedOptimizer's
    error-feedback state (residuals) is per rank and stays as it is on every rank.
    """
    if not optimizer.state_dict()["state"]:
        _initialize_state(optimizer)
    state = optimizer.state_dict()
    state.pop(ERROR_FEEDBACK_KEY, None)
    state = broadcast_object(state, root_rank, name="broadcast_optimizer_state", process_set=process_set)
    if rank() != root_rank:
        optimizer.load_state_dict(state)


def _initialize_state(optimizer: torch.optim.Optimizer) -> None:
    """One step with zero gradients (Horovod's way to create an optimizer's state; as in
    Horovod the zero gradients stay); a DistributedOptimizer steps as its wrapped class,
    without reducing anything."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
                if isinstance(optimizer, torch.optim.SparseAdam):
                    p.grad = p.grad.to_sparse()
    if is_distributed(optimizer):
        super(optimizer.__class__, optimizer).step()  # type: ignore[misc]  # the wrapped optimizer's step
    else:
        optimizer.step()
