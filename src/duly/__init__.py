"""duly: a self-hosted reminder and notification engine."""

__version__ = "0.1.0"
