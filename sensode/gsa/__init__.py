"""Global sensitivity analysis on ensembles of ODE solves.

Which parameters matter over their whole plausible range? `sensode.gsa`
answers with Sobol first-order and total indices (Saltelli / Jansen), Morris
screening (``mu``, ``mu*``, ``sigma``) and derivative-based measures (DGSM)
from the gradients of every sample, with bootstrap confidence intervals, for
scalar outputs and for time-resolved ones. `solve_ensemble` runs the model:
``B`` solves with their own ``u0`` / ``p``, each with its own step size and
status. See ``docs/gsa.md``.

Layers: `estimators` (NumPy, on computed outputs) and `sampling` (designs)
know nothing of ODEs; `ensemble` runs solves; `analysis` joins them;
``python -m sensode.gsa`` is the command line.
"""

from . import plotting
from .analysis import DEFAULT_RANGES, OUTPUTS, ODEModel, dgsm, model_space, morris, named_output, sobol
from .distributed import solve_ensemble_distributed
from .ensemble import EnsembleSolution, solve_ensemble
from .estimators import DGSMResult, MorrisResult, SobolResult, dgsm_indices, morris_indices, sobol_indices
from .sampling import MorrisDesign, ParameterSpace, SaltelliDesign, morris_trajectories, saltelli, uniform

__all__ = [
    "DEFAULT_RANGES",
    "DGSMResult",
    "EnsembleSolution",
    "MorrisDesign",
    "MorrisResult",
    "ODEModel",
    "OUTPUTS",
    "ParameterSpace",
    "SaltelliDesign",
    "SobolResult",
    "dgsm",
    "dgsm_indices",
    "model_space",
    "morris",
    "morris_indices",
    "morris_trajectories",
    "named_output",
    "saltelli",
    "sobol",
    "sobol_indices",
    "solve_ensemble",
    "solve_ensemble_distributed",
    "uniform",
]
