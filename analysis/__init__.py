"""optsweep analysis: reads the Parquet results (never Ray, Optuna or ``sweep``).

>>> from analysis import load_results, pareto_front       # doctest: +SKIP
>>> pareto_front(load_results("runs/digits")).front        # doctest: +SKIP
"""

from .dataset import Results, load_results
from .errors import AnalysisError, AnalysisWarning, DamagedFileWarning
from .pareto import (
    Constraint,
    Objective,
    ParetoResult,
    best_under_constraints,
    constraints_from_config,
    hypervolume,
    hypervolume_history,
    knee_point,
    nondominated_mask,
    nondominated_ranks,
    pareto_front,
    parse_constraint,
    parse_objective,
)

__all__ = [
    "AnalysisError",
    "AnalysisWarning",
    "Constraint",
    "DamagedFileWarning",
    "Objective",
    "ParetoResult",
    "Results",
    "best_under_constraints",
    "constraints_from_config",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "load_results",
    "nondominated_mask",
    "nondominated_ranks",
    "parse_constraint",
    "parse_objective",
    "pareto_front",
]
