"""Calling the coordinator: retries while it restarts, one-line errors otherwise."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from fedgov.errors import FedgovError, PayloadTooLarge, TransportError

T = TypeVar("T")

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class Aborted(FedgovError):
    """The job this call belongs to ended (failed or cancelled) meanwhile."""


def describe(exc: grpc.RpcError) -> FedgovError:
    """Turn a gRPC error into the matching one-line fedgov error."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PayloadTooLarge(details or "message too large")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return Aborted(details or "job no longer running")
    if code == grpc.StatusCode.UNAVAILABLE:
        return TransportError(f"coordinator unreachable: {details}")
    name = code.name if code is not None else "ERROR"
    return TransportError(f"{details} [{name}]")


#: How long a job's relay and key calls keep retrying while the coordinator is
#: unreachable (restarting, or a link down) before the node gives the job up.
JOB_PATIENCE = 600.0
#: Also retried for idempotent calls (relay send/receive, key fetches): a call that
#: hung on a dead link ends at its deadline; the next attempt goes over a fresh connection.
IDEMPOTENT_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def with_retry(
    fn: Callable[[], T],
    *,
    patience: float = 60.0,
    stop: Callable[[], bool] | None = None,
    idempotent: bool = False,
) -> T:
    """Run ``fn``; retry with jittered backoff while the coordinator is unavailable.

    Gives up after ``patience`` seconds (raising TransportError) or when
    ``stop()`` becomes true. Other gRPC errors are raised at once as
    fedgov errors. With ``idempotent`` a call that ran into its deadline is
    retried too. A call on a channel this process already closed (it is
    shutting down) raises TransportError, never a bare ValueError.
    """
    codes = IDEMPOTENT_RETRYABLE if idempotent else RETRYABLE
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            if exc.code() not in codes or time.monotonic() >= deadline or (stop and stop()):
                raise describe(exc) from None
        except ValueError as exc:
            if "closed channel" not in str(exc):
                raise
            raise TransportError("the connection to the coordinator was closed (this process is stopping)") from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 5.0)
