"""Tamper-evident ledger: RFC 9162 Merkle log, signed heads, witnesses, contribution points.

* :mod:`fedgov.ledger.merkle` — pure RFC 9162 hashing, proofs and verification.
* :mod:`fedgov.ledger.entries` — canonical, versioned entry records.
* :mod:`fedgov.ledger.log` — the coordinator's durable SQLite log and its audit.
* :mod:`fedgov.ledger.witness` — the node-side witness that catches rewrites and forks.
* :mod:`fedgov.ledger.points` — deterministic points rules, Shapley values, reports.

See ``docs/protocols/ledger.md`` and ``docs/points.md``.
"""
