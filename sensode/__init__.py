"""sensode: differentiable ODE and nonlinear solves for TensorFlow.

Layers (each imports only from those above it):

1. data: `problems`, `tableau`, `solvers`, `sensealg`, `solution`
2. numerics: `rk`, `control`
3. the loop: `loop`
4. entry points: `solve`
5. front-ends: `models`
"""

from . import models
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
from .solution import ODESolution, SolverError, Status
from .solve import odeint, solve
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
    "odeint",
    "solve",
]
