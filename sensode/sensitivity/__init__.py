"""Sensitivity algorithms for ODE solves, one module each, behind the interface
of `base`: `forward`, `discrete`, `backsolve`, `interpolating`, `quadrature`
(the continuous adjoints share `adjoint_problem`), the checkpointed sweep
(`checkpoint`), the automatic choice (`choice`) and the direct sensitivity
interfaces (`direct`)."""

from .backsolve import BacksolveAdjoint
from .base import SensitivityAlgorithm
from .discrete import DiscreteAdjoint, SteadyStateAdjoint
from .forward import ForwardSensitivity
from .interpolating import InterpolatingAdjoint
from .quadrature import QuadratureAdjoint

__all__ = [
    "SensitivityAlgorithm",
    "ForwardSensitivity",
    "DiscreteAdjoint",
    "SteadyStateAdjoint",
    "BacksolveAdjoint",
    "InterpolatingAdjoint",
    "QuadratureAdjoint",
]
