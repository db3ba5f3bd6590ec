"""Horizontal federated learning on Flower's deployment engine (``horizontal-fl`` jobs).

Public API: :func:`fedgov.hfl.deployment.run_horizontal_job` (one job end to
end) and :class:`fedgov.hfl.deployment.Deployment` (start/supervise/stop the
SuperLink, SuperNodes and key holder). Flower specifics stay in this package.
"""

from __future__ import annotations

__all__ = ["Deployment", "run_horizontal_job"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from fedgov.hfl import deployment

        return getattr(deployment, name)
    raise AttributeError(name)
