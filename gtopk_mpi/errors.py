"""Exceptions raised by gtopk_mpi collectives."""

from __future__ import annotations


class MismatchError(RuntimeError):
    """Ranks called the same collective with arguments that do not agree.

    Raised on every rank of the communicator, in the same call and with the same
    message, which names what differed and the values seen. The communicator stays
    usable: the next call works.
    """
