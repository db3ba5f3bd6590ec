"""Parameters of the ``cohort-count`` job kind (protocol: docs/protocols/cohort-count.md)."""

from __future__ import annotations

from fedgov.params.schema import KindSchema

SCHEMA = KindSchema(kind="cohort-count", params=())
