"""Informativeness scorers: ``create_scorer(name, **params)`` over the registry ``SCORERS``."""

from . import entropy  # noqa: F401  (registers the scorer)
from .base import SCORERS, Scorer, create_scorer

__all__ = ["SCORERS", "Scorer", "create_scorer"]
