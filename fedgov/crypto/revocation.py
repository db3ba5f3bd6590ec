"""Revocation: the federation CA's signed list of certificates nobody may trust any more.

CA side (the admin's machine, next to ``ca.key``):

* :func:`revoke` marks certificates revoked in the CA's issuance record (by
  serial, or every live certificate issued to a name) and issues a new list;
* :func:`issue_crl` writes ``<ca>/crl.pem``: an X.509 v2 CRL signed by the CA
  key, with a CRL number one above the last and ``nextUpdate`` :data:`CRL_DAYS`
  ahead. Re-issue it before then (``fedgov provision crl``).

Everyone else trusts a list only through :func:`load_crl` (signature by the
pinned CA, issuer name, CRL number present) and keeps the newest one seen in a
:class:`Revocations` holder, which never goes back to a lower CRL number — so
whoever relays lists (the coordinator) can withhold a new list but cannot
replace it with an older one, nor invent one.

Where lists are checked: the coordinator on every RPC and at registration
(``fedgov.coordinator.gate``); nodes on every manifest signer, approver,
envelope sender and key bundle; requesters on the nodes that sealed their
results. Distribution: ``fedgov provision publish-crl`` hands the list to the
coordinator (admin only), nodes fetch it every ``crl_refresh_seconds``; a
``crl.pem`` in a kit is read at start too.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fedgov.crypto import pki
from fedgov.errors import ConfigError

__all__ = [
    "CRL_DAYS",
    "REASONS",
    "InvalidRevocationList",
    "RevocationList",
    "Revocations",
    "revoke",
    "issue_crl",
    "load_crl",
]

#: How long a revocation list stays current (its nextUpdate); re-issue before then.
CRL_DAYS = 14
#: Revocation reasons a revocation may give (RFC 5280 CRLReason names).
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
}


class InvalidRevocationList(pki.CertificateError):
    """A revocation list is malformed, not signed by the federation CA, or older than one seen."""


@dataclass(frozen=True)
class RevocationList:
    """A verified CRL of the federation CA (obtain it through :func:`load_crl`)."""

    number: int
    this_update: datetime
    next_update: datetime | None
    #: serial -> (revocation date, reason name)
    revoked: dict[int, tuple[datetime, str]]
    der: bytes

    def reason(self, serial: int) -> tuple[datetime, str] | None:
        """(date, reason) if ``serial`` is revoked, else None."""
        return self.revoked.get(serial)

    def check(self, cert: x509.Certificate) -> None:
        """Raise RevokedCertificate if ``cert``'s serial is on this list."""
        hit = self.revoked.get(cert.serial_number)
        if hit is not None:
            raise pki.RevokedCertificate(_message(cert, hit, self.number))

    def stale(self, now: datetime | None = None) -> bool:
        """True once ``nextUpdate`` has passed (a newer list should exist)."""
        now = now if now is not None else datetime.now(_dt.UTC)
        return self.next_update is not None and now > self.next_update


def _message(cert: x509.Certificate, hit: tuple[datetime, str], number: int) -> str:
    try:
        who = f" of '{pki.identity_from_cert(cert).name}'"
    except pki.CertificateError:
        who = ""
    return (f"certificate{who} (serial {cert.serial_number:x}) is revoked since "
            f"{hit[0].date().isoformat()} ({hit[1]}; revocation list #{number})")


# --------------------------------------------------------------------------- CA side


def revoke(
    ca_dir: Path,
    *,
    serials: tuple[int, ...] = (),
    name: str | None = None,
    reason: str = "unspecified",
    days: int = CRL_DAYS,
) -> tuple[list[pki.IssuedCertificate], Path]:
    """Revoke certificates of this CA and issue the new list; return (revoked, crl path).

    ``serials`` must be in the issuance record; ``name`` revokes every
    certificate issued to that name that is not revoked yet (its TLS and
    signing certificates). Refuses (ConfigError) an unknown serial, a name with
    nothing live, or an unknown reason. Already revoked serials are skipped.
    """
    if reason not in REASONS:
        raise ConfigError(f"unknown revocation reason {reason!r} (use one of {', '.join(REASONS)})")
    pki.load_ca(ca_dir)  # only the CA's holder revokes
    record = pki.issuance_record(ca_dir)
    by_serial = {c.serial: c for c in record}
    chosen: list[pki.IssuedCertificate] = []
    for s in serials:
        if s not in by_serial:
            raise ConfigError(f"serial {s:x} is not in this CA's issuance record", where=str(ca_dir))
        chosen.append(by_serial[s])
    if name is not None:
        live = [c for c in record if c.name == name and c.revoked_at is None]
        if not live:
            raise ConfigError(f"no live certificate issued to '{name}'", where=str(ca_dir))
        chosen += live
    if not chosen:
        raise ConfigError("give serials or a name to revoke")
    done = []
    for c in {c.serial: c for c in chosen}.values():
        if c.revoked_at is not None:
            continue
        pki.record_event(ca_dir, {"event": "revoked", "serial": f"{c.serial:x}", "reason": reason,
                                  "name": c.name})
        done.append(c)
    return done, issue_crl(ca_dir, days=days)


def issue_crl(ca_dir: Path, *, days: int = CRL_DAYS, now: datetime | None = None) -> Path:
    """Write ``<ca>/crl.pem``: every revocation in the issuance record, CRL number +1.

    Returns its path. The list is public (it names serials, not people's
    data) and goes to the coordinator with ``fedgov provision publish-crl``.
    """
    if days < 1:
        raise ConfigError("days must be >= 1")
    ca_cert, ca_key = pki.load_ca(ca_dir)
    events = pki.record_events(ca_dir)
    number = 1 + max((int(e["number"]) for e in events if e["event"] == "crl"), default=0)
    now = now if now is not None else datetime.now(_dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
    )
    for e in events:
        if e["event"] != "revoked":
            continue
        rc = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(e["serial"], 16))
            .revocation_date(datetime.fromisoformat(e["at"]))
            .add_extension(x509.CRLReason(REASONS.get(e.get("reason", ""),
                                                      x509.ReasonFlags.unspecified)),
                           critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(rc)
    crl = builder.sign(ca_key, hashes.SHA256())
    out = Path(ca_dir) / "crl.pem"
    pki._write_public(out, crl.public_bytes(serialization.Encoding.PEM))
    pki.record_event(ca_dir, {"event": "crl", "number": number,
                              "next_update": (now + timedelta(days=days)).isoformat()})
    return out


# --------------------------------------------------------------------------- verification


def _signed_by(crl: x509.CertificateRevocationList, ca_cert: x509.Certificate) -> bool:
    """Whether ``crl``'s signature verifies under the CA's public key."""
    try:
        return bool(crl.is_signature_valid(ca_cert.public_key()))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def load_crl(data: bytes, ca_cert: x509.Certificate, *, where: str = "revocation list") -> RevocationList:
    """Verify a CRL (PEM or DER) against the pinned federation CA and return it.

    Guarantees on return: the list was signed by ``ca_cert``'s key, names the
    CA as issuer and carries a CRL number. Says nothing about freshness: keep
    the highest number seen (:class:`Revocations`). Raises InvalidRevocationList.
    """
    try:
        crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
               else x509.load_der_x509_crl(data))
    except ValueError as exc:
        raise InvalidRevocationList(f"not a CRL ({exc})", where=where) from None
    if crl.issuer != ca_cert.subject:
        raise InvalidRevocationList("issued by another CA (issuer name differs)", where=where)
    if not _signed_by(crl, ca_cert):
        raise InvalidRevocationList("signature does not verify against the federation CA",
                                    where=where)
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        raise InvalidRevocationList("no CRL number", where=where) from None
    revoked: dict[int, tuple[datetime, str]] = {}
    names = {v: k for k, v in REASONS.items()}
    for rc in crl:
        try:
            flag = rc.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason = names.get(flag, flag.value)
        except x509.ExtensionNotFound:
            reason = "unspecified"
        revoked[rc.serial_number] = (rc.revocation_date_utc, reason)
    return RevocationList(
        number=number,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        revoked=revoked,
        der=crl.public_bytes(serialization.Encoding.DER),
    )


class Revocations:
    """The newest verified revocation list this process has seen (thread-safe).

    ``check(cert)`` is the :class:`fedgov.crypto.pki.RevocationCheck` the
    verifiers take. :meth:`update` accepts only a list signed by the CA with a
    higher CRL number than the current one; the current list is kept in
    ``store`` (if given) so a restart never falls back to an older one.
    """

    def __init__(self, ca_cert: x509.Certificate, *, store: Path | None = None,
                 sources: tuple[Path, ...] = ()) -> None:
        self._ca = ca_cert
        self._store = Path(store) if store is not None else None
        self._lock = threading.Lock()
        self._current: RevocationList | None = None
        for path in ((self._store,) if self._store else ()) + tuple(sources):
            if path.exists():
                self.update(path.read_bytes(), where=str(path), persist=path != self._store)

    @property
    def current(self) -> RevocationList | None:
        with self._lock:
            return self._current

    @property
    def number(self) -> int:
        """CRL number of the current list (0: none yet)."""
        cur = self.current
        return cur.number if cur is not None else 0

    def update(self, data: bytes, *, where: str = "revocation list", persist: bool = True) -> bool:
        """Adopt ``data`` if it is a valid list of this CA newer than the current one.

        Returns True if adopted, False if its number is not higher (ignored:
        an older or the same list). Raises InvalidRevocationList if it does not
        verify.
        """
        crl = load_crl(data, self._ca, where=where)
        with self._lock:
            if self._current is not None and crl.number <= self._current.number:
                return False
            self._current = crl
            if persist and self._store is not None:
                tmp = self._store.with_name(self._store.name + ".tmp")
                tmp.unlink(missing_ok=True)
                pki.write_secret_file(tmp, crl.der)
                tmp.replace(self._store)
        return True

    def check(self, cert: x509.Certificate) -> None:
        """Raise RevokedCertificate if the current list revokes ``cert``."""
        cur = self.current
        if cur is not None:
            cur.check(cert)
