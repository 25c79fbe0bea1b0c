"""sensode: differentiable ODE and nonlinear solves for TensorFlow.

Layers (each imports only from those above it):

1. data: `problems`, `tableau`, `solvers`, `sensealg`, `solution`
2. numerics: `rk`, `control`, `linsolve`
3. the loop: `loop`
4. methods: `forward`, `discrete`, `adjoint` (ODE sensitivities, sharing
   `sensitivity` and `derivatives`), `nonlinear` (Newton, Newton-Krylov,
   Anderson, DynamicSS), `implicit` (the implicit adjoint of f(u, p) = 0)
5. entry points: `solve`, `sensitivities`
6. front-ends: `models`, `comparison` (CLI: `compare`), `estimation`
"""

from . import estimation, linsolve, models
from .comparison import Comparison, compare_sensitivities
from .estimation import FitResult, fit
from . import keras
from .implicit import solve_nonlinear
from .nonlinear import AndersonAcceleration, DynamicSS, NewtonKrylov, NewtonRaphson
from .control import PIController
from .problems import NonlinearProblem, ODEProblem, SteadyStateProblem
from .sensealg import (
    BacksolveAdjoint,
    DiscreteAdjoint,
    ForwardSensitivity,
    InterpolatingAdjoint,
    QuadratureAdjoint,
    SteadyStateAdjoint,
)
from .solution import NonlinearSolution, ODESolution, SolverError, Status
from .sensitivities import AdjointSensitivityResult, ForwardSensitivityResult, default_sensealg
from .solve import adjoint_sensitivities, forward_sensitivities, odeint, solve
from .solvers import BS3, DP5, DP8, RK4, Euler, ExplicitRK, Heun, Midpoint, Tsit5
from .tableau import ButcherTableau

__version__ = "0.1.0"

__all__ = [
    "BS3",
    "DP5",
    "DP8",
    "RK4",
    "BacksolveAdjoint",
    "ButcherTableau",
    "DiscreteAdjoint",
    "Euler",
    "ExplicitRK",
    "ForwardSensitivity",
    "Heun",
    "InterpolatingAdjoint",
    "Midpoint",
    "NonlinearProblem",
    "ODEProblem",
    "ODESolution",
    "PIController",
    "QuadratureAdjoint",
    "SolverError",
    "Status",
    "SteadyStateAdjoint",
    "SteadyStateProblem",
    "Tsit5",
    "models",
    "keras",
    "linsolve",
    "solve_nonlinear",
    "AndersonAcceleration",
    "DynamicSS",
    "NewtonKrylov",
    "NewtonRaphson",
    "NonlinearSolution",
    "odeint",
    "solve",
    "forward_sensitivities",
    "adjoint_sensitivities",
    "default_sensealg",
    "compare_sensitivities",
    "Comparison",
    "estimation",
    "fit",
    "FitResult",
    "ForwardSensitivityResult",
    "AdjointSensitivityResult",
]
