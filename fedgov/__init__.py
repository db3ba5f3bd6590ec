"""fedgov: usable-but-invisible computation across government departments."""

__version__ = "0.1.0"
