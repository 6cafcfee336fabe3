"""mirec: multi-interest recommendation, from interaction logs to a monitored A/B-tested service."""

__version__ = "0.1.0"
