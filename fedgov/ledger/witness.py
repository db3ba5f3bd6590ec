"""Node-side witness of the coordinator's transparency log (pure: no network).

A :class:`Witness` keeps the last tree head it verified in a small JSON file.
On every new head it checks, in order:

1. the head's Ed25519 signature with the log's public key (a bad signature
   raises :class:`~fedgov.errors.CryptoError`; state is unchanged);
2. time does not go backwards (a head older than the stored one is refused
   with :class:`LogRewritten`, state unchanged: it may be a replay);
3. size does not go backwards: a head that is *not older* but covers *fewer*
   entries means the log was truncated → alarm, :class:`LogRewritten`;
4. equal size, different root → two signed versions of history → alarm,
   :class:`LogForked`;
5. larger size: the RFC 9162 §2.1.4.2 consistency proof from the stored head
   must verify, else history before the stored head was changed → alarm,
   :class:`LogRewritten`.

Only then is the new head stored (atomically, fsync'd) and counter-signed
with the node's key: the cosignature covers
:func:`~fedgov.ledger.log.cosignature_message`. An alarm is persisted with the
evidence (both heads); until an operator calls :meth:`Witness.clear_alarm`,
every further :meth:`Witness.observe` raises the same error, so the node
refuses to continue.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgov.errors import ConfigError, CryptoError
from fedgov.ledger import merkle
from fedgov.ledger.log import SignedTreeHead, cosignature_message, public_key_bytes

__all__ = ["LogForked", "LogRewritten", "Witness", "WitnessError", "majority", "quorum_head"]

_STATE_VERSION = 1


class WitnessError(CryptoError):
    """The log misbehaved in a way the witness can prove."""


class LogRewritten(WitnessError):
    """History the witness already verified was changed, truncated, or a head went backwards."""


class LogForked(WitnessError):
    """The log signed two different roots for the same history."""


_KINDS: dict[str, type[WitnessError]] = {"rewritten": LogRewritten, "forked": LogForked}


class Witness:
    """Keeps the last verified head of one log and vouches for its successors.

    ``sign`` is the node's signing callable (Ed25519 over the given bytes); it is
    needed only by :meth:`observe`.
    """

    def __init__(
        self,
        state_path: Path,
        log_public_key: Ed25519PublicKey,
        *,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.state_path = Path(state_path)
        self.log_key = log_public_key
        self._sign = sign
        self._key_hex = public_key_bytes(log_public_key).hex()
        self._head: SignedTreeHead | None = None
        self._alarm: dict[str, Any] | None = None
        self._load()

    # -------------------------------------------------------------------- state

    def _load(self) -> None:
        where = str(self.state_path)
        if not self.state_path.exists():
            return
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            if doc.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            key = doc["log_key"]
            head = doc.get("head")
            alarm = doc.get("alarm")
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"unreadable witness state: {exc}", where=where) from None
        if key != self._key_hex:
            raise ConfigError("witness state belongs to a log with a different public key", where=where)
        self._head = SignedTreeHead.from_dict(head) if head else None
        self._alarm = alarm

    def _save(self) -> None:
        doc = {
            "version": _STATE_VERSION,
            "log_key": self._key_hex,
            "head": self._head.to_dict() if self._head else None,
            "alarm": self._alarm,
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)
        try:
            dfd = os.open(self.state_path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @property
    def last_head(self) -> SignedTreeHead | None:
        """The last head this witness verified (``None`` before the first)."""
        return self._head

    @property
    def alarm(self) -> str | None:
        """The persisted alarm message, if the witness has halted."""
        return None if self._alarm is None else str(self._alarm["message"])

    def clear_alarm(self) -> None:
        """Operator action after investigation: forget the alarm (the stored head is kept)."""
        self._alarm = None
        self._save()

    def _raise_alarm(self, kind: str, message: str, new: SignedTreeHead) -> WitnessError:
        self._alarm = {
            "kind": kind,
            "message": message,
            "verified_head": self._head.to_dict() if self._head else None,
            "offending_head": new.to_dict(),
        }
        self._save()
        return _KINDS[kind](message, where="ledger witness")

    # ------------------------------------------------------------------- checks

    def check(self, new_sth: SignedTreeHead, consistency_proof: Sequence[bytes]) -> SignedTreeHead:
        """Verify ``new_sth`` against the stored head (module docstring, steps 1-5) and store it.

        Returns the head now stored. Raises :class:`LogRewritten` /
        :class:`LogForked` (alarm persisted, except for a stale replay) or
        :class:`CryptoError` for a bad signature.
        """
        if self._alarm is not None:
            raise _KINDS[self._alarm["kind"]](
                f"witness halted: {self._alarm['message']} (clear the alarm after investigating)",
                where="ledger witness",
            )
        new_sth.verify(self.log_key)
        old = self._head
        if old is not None:
            if new_sth.timestamp < old.timestamp:
                raise LogRewritten(
                    f"refused a stale head: timestamp {new_sth.timestamp} (size {new_sth.size}) is earlier "
                    f"than the verified head's {old.timestamp} (size {old.size})",
                    where="ledger witness",
                )
            if new_sth.size < old.size:
                raise self._raise_alarm(
                    "rewritten",
                    f"log went backwards: a newer signed head covers {new_sth.size} entries, "
                    f"but this node verified a head of {old.size} entries — the log was truncated or rewritten",
                    new_sth,
                )
            if new_sth.size == old.size and new_sth.root != old.root:
                raise self._raise_alarm(
                    "forked",
                    f"log forked: two signed heads of size {old.size} with different roots "
                    f"({old.root.hex()[:16]}… and {new_sth.root.hex()[:16]}…)",
                    new_sth,
                )
            if new_sth.size > old.size:
                try:
                    merkle.verify_consistency(
                        old.size, new_sth.size, old.root, new_sth.root, consistency_proof
                    )
                except merkle.ProofError as exc:
                    raise self._raise_alarm(
                        "rewritten",
                        f"log rewritten: the head of size {new_sth.size} is not an extension of the head of "
                        f"size {old.size} this node verified ({exc.message})",
                        new_sth,
                    ) from None
        self._head = new_sth
        self._save()
        return new_sth

    def observe(self, new_sth: SignedTreeHead, consistency_proof: Sequence[bytes]) -> bytes:
        """:meth:`check` the head, then return the node's cosignature over it.

        Raises :class:`ConfigError` if the witness was built without ``sign``.
        """
        if self._sign is None:
            raise ConfigError("this witness has no signing callable", where="ledger witness")
        sth = self.check(new_sth, consistency_proof)
        return self._sign(cosignature_message(sth))

    def check_peer(self, peer_sth: SignedTreeHead, consistency_proof: Sequence[bytes]) -> None:
        """Compare a head another witness verified (gossip) with this witness's head.

        ``consistency_proof`` goes from the smaller of the two heads to the
        larger. Raises :class:`LogForked` (alarm persisted) when the two cannot
        both be views of one append-only log; never changes the stored head.
        """
        peer_sth.verify(self.log_key)
        mine = self._head
        if mine is None:
            return
        small, big = (mine, peer_sth) if mine.size <= peer_sth.size else (peer_sth, mine)
        try:
            merkle.verify_consistency(small.size, big.size, small.root, big.root, consistency_proof)
        except merkle.ProofError as exc:
            raise self._raise_alarm(
                "forked",
                f"log forked: a peer's signed head of size {peer_sth.size} and this node's head of size "
                f"{mine.size} are not one history ({exc.message})",
                peer_sth,
            ) from None

    def check_inclusion(self, entry: bytes, index: int, proof: Sequence[bytes]) -> None:
        """Check that ``entry`` is leaf ``index`` under the last verified head (:class:`ProofError` if not)."""
        if self._head is None:
            raise merkle.ProofError("no verified head yet", where="ledger witness")
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, self._head.size, proof, self._head.root)


# --------------------------------------------------------------------- quorum


def majority(n: int) -> int:
    """The default quorum of ``n`` witnesses: more than half."""
    return n // 2 + 1


def quorum_head(vouched: Mapping[str, SignedTreeHead], k: int) -> tuple[SignedTreeHead, list[str]] | None:
    """The largest head that at least ``k`` witnesses vouch for, and those witnesses.

    ``vouched`` maps each witness to the latest head it cosigned, **already
    checked** by the caller: the cosignature verifies with that witness's
    certified key and the head is consistent with the caller's view of the log
    (same root as the entries, or a consistency proof to the caller's head), so
    all of them are prefixes of one history. A witness whose head is at least
    as large vouches for every prefix of it. ``None`` if fewer than ``k``
    witnesses vouch for anything (or ``k < 1``).
    """
    if k < 1 or len(vouched) < k:
        return None
    ordered = sorted(vouched.items(), key=lambda kv: (-kv[1].size, kv[0]))
    head = ordered[k - 1][1]
    return head, sorted(w for w, h in vouched.items() if h.size >= head.size)
