"""Splitting relay messages into gRPC-sized chunks (one place for the framing)."""

from __future__ import annotations

from collections.abc import Iterator

from fedgov.transport.tls import CHUNK_SIZE
from fedgov.v1 import relay_pb2


def relay_chunks(
    blob: bytes, *, job_id: str, step: str, recipient: str, seq: int, sender: str = ""
) -> Iterator[relay_pb2.RelayChunk]:
    """Chunks of at most :data:`CHUNK_SIZE` bytes; an empty blob is one empty chunk.

    Every chunk repeats the address and the total size, so the receiver can
    check that none is missing, reordered or from another message.
    """
    total = max(1, -(-len(blob) // CHUNK_SIZE))
    for i in range(total):
        yield relay_pb2.RelayChunk(
            job_id=job_id,
            step=step,
            sender=sender,
            recipient=recipient,
            seq=seq,
            index=i,
            total=total,
            total_size=len(blob),
            data=blob[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE],
        )
