"""The data-quality scores a node publishes with its catalogue.

Only :meth:`fedgov.quality.QualityReport.public_scores` leaves the node (in
``DatasetInfo.quality_json``, recorded by the coordinator in a
``dataset_published`` ledger entry, where it feeds the points quality factor);
findings, counts and row numbers stay local (``fedgov quality check``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime

import pyarrow as pa

from fedgov.datasources import read_dataset
from fedgov.errors import FedgovError
from fedgov.node.config import NodeConfig
from fedgov.quality import QualityReport, assess

__all__ = ["assess_dataset", "quality_json", "quality_scores"]

log = logging.getLogger("fedgov.node")


def assess_dataset(
    config: NodeConfig, dataset: str, *, table: pa.Table | None = None, today: date | None = None
) -> QualityReport:
    """Full local quality report of one configured dataset (reads it unless ``table`` is given)."""
    ds = config.datasets.get(dataset)
    if ds is None:
        known = ", ".join(sorted(config.datasets)) or "none"
        raise FedgovError(f"no dataset '{dataset}' (configured: {known})", where=str(config.path))
    if table is None:
        table = read_dataset(ds.source, ds.schema, base_dir=ds.base_dir, table=ds.table, query=ds.query)
    return assess(ds.schema, table, today=today or datetime.now(UTC).date())


def quality_scores(
    config: NodeConfig,
    *,
    tables: Mapping[str, pa.Table] | None = None,
    today: date | None = None,
) -> dict[str, dict[str, float]]:
    """``{dataset: public scores}`` for every configured dataset.

    ``tables`` may pass already-read tables (e.g. the ones ``_register`` read
    for its row counts) to avoid reading twice. A dataset that cannot be
    scored is logged and left out (the catalogue is still published, and the
    points quality factor for it is the rules' ``unpublished_quality``).
    """
    out: dict[str, dict[str, float]] = {}
    for name in config.datasets:
        try:
            report = assess_dataset(config, name, table=(tables or {}).get(name), today=today)
        except FedgovError as exc:
            log.warning("quality of dataset %s not published: %s", name, exc)
            continue
        out[name] = report.public_scores()
    return out


def quality_json(scores: Mapping[str, float]) -> str:
    """The canonical JSON for ``DatasetInfo.quality_json``."""
    return json.dumps(dict(scores), sort_keys=True, separators=(",", ":"))
