"""sensode: differentiable ODE and nonlinear solves for TensorFlow.

The package is layered; each layer imports only from the layers above it:

1. data: `problems`, `solution`, `params`, `validation`, `tfcompat`, `ode.tableaus`
2. numerics: `derivatives`, `ode.rk`, `ode.control`, `ode.dense`,
   `nonlinear.linsolve`
3. the loop: `ode.loop` (one stepping loop for every method and pass)
4. methods: `ode.methods` (ODE methods), `sensitivity.*` (one module per
   sensitivity algorithm), `nonlinear.methods` and `nonlinear.implicit`
5. entry points: `api` (`solve`, `odeint`, `forward_sensitivities`,
   `adjoint_sensitivities`)
6. front-ends: `frontends.keras`, `frontends.estimation`,
   `frontends.comparison`, `gsa` (global sensitivity analysis on ensembles)
   and the command lines; imported on first use, so ``import sensode`` does
   not import Keras.

See ``docs/architecture.md``.
"""

import importlib as _importlib

from . import models
from .compilation_cache import enable_compilation_cache
from .api import StiffnessWarning, adjoint_sensitivities, forward_sensitivities, odeint, solve
from .nonlinear import linsolve
from .nonlinear.implicit import solve_nonlinear
from .nonlinear.methods import AndersonAcceleration, DynamicSS, NewtonKrylov, NewtonRaphson
from .ode.control import PIController
from .ode.methods import BS3, DP5, DP8, RK4, Euler, ExplicitRK, Heun, Midpoint, Tsit5
from .ode.rosenbrock import Rodas5, Rosenbrock23
from .ode.sdirk import Kvaerno5
from .ode.auto import AutoTsit5Rodas5
from .ode.tableaus import ButcherTableau
from .problems import NonlinearProblem, ODEProblem, SteadyStateProblem
from .sensitivity import (
    BacksolveAdjoint,
    DiscreteAdjoint,
    ForwardSensitivity,
    InterpolatingAdjoint,
    QuadratureAdjoint,
    SteadyStateAdjoint,
)
from .sensitivity.choice import default_sensealg
from .sensitivity.direct import AdjointSensitivityResult, ForwardSensitivityResult
from .solution import NonlinearSolution, ODESolution, SolverError, Status

__version__ = "0.1.0"

# Front-ends, loaded on first attribute access (PEP 562): name -> (module, attribute or None).
_LAZY = {
    "keras": ("sensode.keras", None),
    "estimation": ("sensode.frontends.estimation", None),
    "fit": ("sensode.frontends.estimation", "fit"),
    "FitResult": ("sensode.frontends.estimation", "FitResult"),
    "comparison": ("sensode.frontends.comparison", None),
    "compare_sensitivities": ("sensode.frontends.comparison", "compare_sensitivities"),
    "Comparison": ("sensode.frontends.comparison", "Comparison"),
    "gsa": ("sensode.gsa", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'sensode' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = _importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BS3",
    "DP5",
    "DP8",
    "RK4",
    "AndersonAcceleration",
    "AutoTsit5Rodas5",
    "AdjointSensitivityResult",
    "BacksolveAdjoint",
    "ButcherTableau",
    "Comparison",
    "DiscreteAdjoint",
    "DynamicSS",
    "Euler",
    "ExplicitRK",
    "FitResult",
    "ForwardSensitivity",
    "ForwardSensitivityResult",
    "Heun",
    "InterpolatingAdjoint",
    "Kvaerno5",
    "Midpoint",
    "NewtonKrylov",
    "NewtonRaphson",
    "NonlinearProblem",
    "NonlinearSolution",
    "ODEProblem",
    "ODESolution",
    "PIController",
    "QuadratureAdjoint",
    "Rodas5",
    "Rosenbrock23",
    "SolverError",
    "StiffnessWarning",
    "Status",
    "SteadyStateAdjoint",
    "SteadyStateProblem",
    "Tsit5",
    "adjoint_sensitivities",
    "compare_sensitivities",
    "default_sensealg",
    "enable_compilation_cache",
    "estimation",
    "fit",
    "forward_sensitivities",
    "gsa",
    "keras",
    "linsolve",
    "models",
    "odeint",
    "solve",
    "solve_nonlinear",
]
