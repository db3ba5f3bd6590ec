"""CKKS-encrypted aggregation to a key holder that is not the aggregator.

Parties
-------
* **Key holder** (a department named in the job, never the coordinator):
  :func:`create_key_material` makes a TenSEAL CKKS context; the secret
  context stays in its directory (file mode 0600), the *public* context (no
  secret key, no Galois keys) is published with its SHA-256 fingerprint.
  :func:`run_key_holder` connects to the aggregator's decryption broker and
  decrypts **only summed** vectors, each at most once per (job, round, track)
  and only when the aggregator declares at least ``min_contributors``
  contributors; every decryption is appended to an audit log.
* **Clients** (regional SuperNodes) encrypt ``[n_k * w_k, n_k]`` under the
  public context (:func:`encrypt_vector`) after checking its fingerprint
  against the pin they were given out of band (:func:`load_public_context`).
* **Aggregator** (the ServerApp on the coordinator) loads the public context
  only (:func:`load_public_context` refuses a context that carries a secret
  key), adds ciphertexts (:func:`sum_ciphertexts`) and asks the key holder,
  through :class:`DecryptBroker`, for the decrypted sums.

Transport between aggregator and key holder is gRPC over mutual TLS with the
federation PKI (:mod:`fedgov.transport.tls`): the broker serves with the
coordinator certificate, the key holder connects with its node certificate
and the broker accepts only the key holder named in the job. The key holder
dials out, so only the coordinator needs an open port.

What leaks: the aggregator sees ciphertexts, who replied, and the decrypted
per-round aggregate (the global model it must broadcast); the key holder
sees each decrypted aggregate (sum of weighted updates and total sample
count) and nothing per region. Assumption: aggregator and key holder do not
collude, and the aggregator is honest about the contributor count it
declares (a malicious aggregator could submit one region's ciphertext as a
"sum"; the key holder's per-round, per-track single-decryption rule and
audit log limit and expose that, but cannot prevent it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import queue
import struct
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tenseal as ts

from fedgov.crypto.pki import write_secret_file
from fedgov.errors import CryptoError, JobFailed, TransportError
from fedgov.transport import tls

__all__ = [
    "CKKS_POLY_DEGREE",
    "DecryptBroker",
    "KeyMaterial",
    "assert_public",
    "create_key_material",
    "encrypt_vector",
    "load_public_context",
    "run_key_holder",
    "sum_ciphertexts",
]

log = logging.getLogger(__name__)

#: CKKS parameters: N=4096 with a 109-bit modulus (128-bit security per the
#: HE standard), scale 2^40. Addition only, so one level is enough; 2048 slots.
CKKS_POLY_DEGREE = 4096
CKKS_COEFF_BITS = (60, 49)
CKKS_SCALE = 2.0**40
#: fewest contributors a sum must declare before any key holder decrypts it (a lower
#: ``min_contributors`` argument is raised to this: a "sum" of one is one region's update)
MIN_SUM_CONTRIBUTORS = 2
_SERVICE = "fedgov.hfl.KeyHolderBroker"


@dataclass(frozen=True)
class KeyMaterial:
    """Where a key holder's contexts live and the public context's fingerprint."""

    secret_context: Path
    public_context: Path
    sha256: str


def fingerprint(data: bytes) -> str:
    """SHA-256 hex of a serialized public context (what clients pin)."""
    return hashlib.sha256(data).hexdigest()


def create_key_material(key_dir: Path) -> KeyMaterial:
    """Key holder: create a CKKS context; write ``secret.ctx`` (0600) and ``public.ctx``.

    Guarantees ``public.ctx`` has no secret key (checked after reloading it).
    Refuses (ConfigError) to overwrite an existing secret context.
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=CKKS_POLY_DEGREE,
                     coeff_mod_bit_sizes=list(CKKS_COEFF_BITS))
    ctx.global_scale = CKKS_SCALE
    write_secret_file(key_dir / "secret.ctx", ctx.serialize(save_secret_key=True))
    pub = ctx.serialize(save_public_key=True, save_secret_key=False,
                        save_galois_keys=False, save_relin_keys=False)
    assert_public(ts.context_from(pub))
    (key_dir / "public.ctx").write_bytes(pub)
    return KeyMaterial(key_dir / "secret.ctx", key_dir / "public.ctx", fingerprint(pub))


def assert_public(ctx: ts.Context) -> ts.Context:
    """Return ``ctx`` if it holds no secret key; raise CryptoError otherwise."""
    if ctx.is_private():
        raise CryptoError("refusing a CKKS context that carries a secret key")
    return ctx


def load_public_context(data: bytes, expected_sha256: str | None) -> ts.Context:
    """Deserialize a public CKKS context, check its pin and that it has no secret key.

    ``expected_sha256`` is the fingerprint the caller trusts (from its own
    configuration, not from the peer that sent ``data``); ``None`` skips the
    pin check (only for the aggregator, which loads its own file). Raises
    CryptoError on mismatch, parse failure or a private context.
    """
    if expected_sha256 is not None and fingerprint(data) != expected_sha256.lower():
        raise CryptoError("public CKKS context does not match the pinned fingerprint")
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError
        raise CryptoError(f"unreadable CKKS context ({exc})") from None
    return assert_public(ctx)


def encrypt_vector(ctx: ts.Context, vec: Sequence[float] | np.ndarray) -> bytes:
    """Encrypt a real vector (≤ 2048 entries) under ``ctx``; return the serialized ciphertext."""
    arr = np.asarray(vec, dtype=np.float64).ravel()
    if arr.size > CKKS_POLY_DEGREE // 2:
        raise CryptoError(f"vector of {arr.size} entries exceeds {CKKS_POLY_DEGREE // 2} slots")
    return ts.ckks_vector(ctx, arr.tolist()).serialize()


def sum_ciphertexts(ctx: ts.Context, blobs: Sequence[bytes]) -> bytes:
    """Homomorphically add serialized ciphertexts; needs no secret key. CryptoError if unparsable."""
    if not blobs:
        raise CryptoError("nothing to sum")
    try:
        total = ts.ckks_vector_from(ctx, blobs[0])
        for b in blobs[1:]:
            total = total + ts.ckks_vector_from(ctx, b)
    except Exception as exc:  # noqa: BLE001
        raise CryptoError(f"malformed ciphertext ({exc})") from None
    return total.serialize()


# --------------------------------------------------------------------------- framing


def _pack(header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    header = {**header, "lengths": [len(b) for b in blobs]}
    h = json.dumps(header, sort_keys=True).encode()
    return struct.pack(">I", len(h)) + h + b"".join(blobs)


def _unpack(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    (hlen,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4:4 + hlen])
    blobs, pos = [], 4 + hlen
    for n in header.get("lengths", []):
        blobs.append(data[pos:pos + n])
        pos += n
    if pos != len(data):
        raise CryptoError("decrypt request framing is inconsistent")
    return header, blobs


# --------------------------------------------------------------------------- broker


class DecryptBroker:
    """Aggregator side: a mutual-TLS gRPC endpoint the key holder polls for sums.

    Holds no key. :meth:`decrypt` queues one request (all tracks of a round)
    and waits for the key holder's answer. Only a caller whose certificate
    names ``key_holder`` may take requests or post results.
    """

    def __init__(self, kit_dir: Path, key_holder: str, port: int, *, host: str = "127.0.0.1"):
        self.key_holder = key_holder
        self._pending: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._results: dict[str, futures.Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.last_seen = 0.0
        material = tls.TlsMaterial.from_kit(Path(kit_dir))
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=tls.SERVER_OPTIONS)
        handler = grpc.method_handlers_generic_handler(_SERVICE, {
            "Next": grpc.unary_unary_rpc_method_handler(self._next),
            "Result": grpc.unary_unary_rpc_method_handler(self._result),
        })
        self._server.add_generic_rpc_handlers((handler,))
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = self._server.add_secure_port(addr, tls.server_credentials(material))
        if bound == 0:
            raise TransportError(f"cannot bind the decryption broker on {host}:{port}")
        self.port = bound
        self._server.start()

    def _check(self, context: grpc.ServicerContext) -> None:
        ident = tls.caller_identity(context)
        if ident.name != self.key_holder:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{ident.name} is not this job's key holder")
        self.last_seen = time.monotonic()

    def _next(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._check(context)
        try:
            rid, payload = self._pending.get(timeout=10.0)
        except queue.Empty:
            return b""
        return rid.encode() + b"\n" + payload

    def _result(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._check(context)
        msg = json.loads(request)
        with self._lock:
            fut = self._results.get(msg.get("request_id", ""))
        if fut is not None and not fut.done():
            fut.set_result(msg)
        return b"ok"

    def decrypt(self, job: str, rnd: int, tracks: dict[str, tuple[bytes, int]],
                *, timeout: float = 60.0) -> dict[str, np.ndarray]:
        """Ask the key holder to decrypt one summed ciphertext per track.

        ``tracks`` maps track name → (summed ciphertext, number of
        contributors). Returns track → plaintext vector. Raises JobFailed if
        the key holder refuses or does not answer within ``timeout``.
        """
        rid = uuid.uuid4().hex
        names = sorted(tracks)
        header = {"job": job, "round": rnd, "request_id": rid,
                  "tracks": [{"name": n, "contributors": tracks[n][1]} for n in names]}
        fut: futures.Future[dict[str, Any]] = futures.Future()
        with self._lock:
            self._results[rid] = fut
        self._pending.put((rid, _pack(header, [tracks[n][0] for n in names])))
        try:
            msg = fut.result(timeout=timeout)
        except futures.TimeoutError:
            raise JobFailed(f"round {rnd}: key holder {self.key_holder} did not decrypt "
                            f"within {timeout:.0f} s") from None
        finally:
            with self._lock:
                self._results.pop(rid, None)
        if msg.get("error"):
            raise JobFailed(f"round {rnd}: key holder {self.key_holder} refused: {msg['error']}")
        return {n: np.asarray(v, dtype=np.float64) for n, v in msg["sums"].items()}

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        self._server.stop(grace=0.5)


# --------------------------------------------------------------------------- key holder


def run_key_holder(kit_dir: Path, secret_context: Path, broker: str, *,
                   min_contributors: int = 2, audit_log: Path | None = None,
                   stop: threading.Event | None = None, max_idle: float = 600.0) -> int:
    """Key holder loop: poll ``broker`` (``host:port``), decrypt allowed sums, post results.

    Guarantees: a vector is decrypted only if its request declares at least
    ``max(min_contributors, MIN_SUM_CONTRIBUTORS)`` contributors, and at most once per (job, round,
    track); anything else is refused with a reason the aggregator reports.
    Only decrypted *sums* leave this process. Returns the number of
    decryptions when ``stop`` is set or the broker has been unreachable for
    ``max_idle`` seconds.
    """
    stop = stop or threading.Event()
    ctx = ts.context_from(Path(secret_context).read_bytes())
    if not ctx.is_private():
        raise CryptoError("key holder context has no secret key", where=str(secret_context))
    material = tls.TlsMaterial.from_kit(Path(kit_dir))
    done: set[tuple[str, int, str]] = set()
    count = 0
    last_ok = time.monotonic()
    while not stop.is_set():
        channel = tls.secure_channel(material, broker)
        nxt = channel.unary_unary(f"/{_SERVICE}/Next")
        res = channel.unary_unary(f"/{_SERVICE}/Result")
        try:
            while not stop.is_set():
                raw = nxt(b"", timeout=15.0)
                last_ok = time.monotonic()
                if not raw:
                    continue
                rid, payload = raw.split(b"\n", 1)
                reply = _decrypt_request(ctx, payload, min_contributors, done, audit_log)
                reply["request_id"] = rid.decode()
                count += len(reply.get("sums", {}))
                res(json.dumps(reply).encode(), timeout=15.0)
        except grpc.RpcError:
            if time.monotonic() - last_ok > max_idle:
                break
            stop.wait(0.2)
        finally:
            channel.close()
    return count


def _decrypt_request(ctx: ts.Context, payload: bytes, min_contributors: int,
                     done: set[tuple[str, int, str]], audit_log: Path | None) -> dict[str, Any]:
    try:
        header, blobs = _unpack(payload)
        job, rnd = str(header["job"]), int(header["round"])
        tracks = header["tracks"]
    except (KeyError, ValueError, CryptoError, struct.error) as exc:
        return {"error": f"malformed request ({exc})"}
    min_contributors = max(int(min_contributors), MIN_SUM_CONTRIBUTORS)
    if len(tracks) != len(blobs) or len({t["name"] for t in tracks}) != len(tracks):
        return {"error": "malformed request (tracks and ciphertexts do not match one to one)"}
    for t in tracks:
        if int(t["contributors"]) < min_contributors:
            return {"error": f"track {t['name']} has {t['contributors']} contributors; "
                             f"this key holder decrypts only sums of >= {min_contributors}"}
        if (job, rnd, t["name"]) in done:
            return {"error": f"track {t['name']} of round {rnd} was already decrypted"}
    sums: dict[str, list[float]] = {}
    for t, blob in zip(tracks, blobs, strict=True):
        try:
            sums[t["name"]] = ts.ckks_vector_from(ctx, blob).decrypt()
        except Exception as exc:  # noqa: BLE001
            return {"error": f"malformed ciphertext for track {t['name']} ({exc})"}
    for t in tracks:
        done.add((job, rnd, t["name"]))
    if audit_log is not None:
        with open(audit_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"job": job, "round": rnd, "at": time.time(),
                                 "tracks": tracks}) + "\n")
    return {"sums": sums}


def _main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fedgov.hfl.secure_agg",
                                description="Run a fedgov HFL key holder.")
    p.add_argument("--kit", required=True, type=Path, help="key holder's TLS kit dir")
    p.add_argument("--secret-context", required=True, type=Path)
    p.add_argument("--broker", required=True, help="aggregator broker host:port")
    p.add_argument("--min-contributors", type=int, default=2)
    p.add_argument("--audit-log", type=Path, default=None)
    args = p.parse_args(argv)
    run_key_holder(args.kit, args.secret_context, args.broker,
                   min_contributors=args.min_contributors, audit_log=args.audit_log)


if __name__ == "__main__":
    _main()
