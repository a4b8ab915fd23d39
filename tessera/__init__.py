"""Tessera: a model-serving stack. The `tessera` command lives in tessera.cli."""

__version__ = "0.1.0"
