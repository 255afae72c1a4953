"""Informativeness scorers: ``create_scorer(name, **params)`` over the registry ``SCORERS``.

Each scorer's docstring cites its method and gives its formula.
"""

from . import (  # noqa: F401
    consistency,
    density,
    diversity,
    hierarchical,
    influence,
    simple,
    sl_al_ratio,
    tta,
    typicality,
    uncertainty,
)
from .aggregation import AGGREGATIONS
from .base import SCORERS, PoolImage, Scorer, ScoringContext, create_scorer

__all__ = ["AGGREGATIONS", "SCORERS", "PoolImage", "Scorer", "ScoringContext", "create_scorer"]
