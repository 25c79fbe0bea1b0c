"""Sensitivity algorithms: strategy objects that say *how* a gradient is computed.

Each object takes only its own options. `solve(prob, alg, sensealg=...)` hands
it to the matching implementation module (forward sensitivities, discrete
adjoint, continuous adjoints, implicit adjoint for ``f(u, p) = 0``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "SensitivityAlgorithm",
    "ForwardSensitivity",
    "DiscreteAdjoint",
    "SteadyStateAdjoint",
    "BacksolveAdjoint",
    "InterpolatingAdjoint",
    "QuadratureAdjoint",
]


class SensitivityAlgorithm:
    """Base class of the sensitivity algorithms."""


def _check_checkpoints(checkpoints):
    if checkpoints is not None and (isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 1):
        raise ValueError(f"`checkpoints` must be None or a positive int, got {checkpoints!r}")


@dataclasses.dataclass(frozen=True)
class ForwardSensitivity(SensitivityAlgorithm):
    """Forward sensitivities: ``S = du/dp`` integrated with the state.

    For ODEs, ``dS/dt = (df/du) S + df/dp`` is solved alongside ``u`` with all
    tangent directions at once; for ``f(u, p) = 0`` it is one linear solve
    ``(df/du) S = -df/dp``. Cost grows with the number of parameters: the
    choice for few parameters (roughly ``len(u0) + len(p) < 100``).
    """


@dataclasses.dataclass(frozen=True)
class DiscreteAdjoint(SensitivityAlgorithm):
    """The adjoint of the discrete equations (discretise-then-optimise).

    For an ODE, the exact gradient of the numbers the solver produced (reverse
    mode through the solver's steps); ``checkpoints=k`` stores ``k`` states and
    recomputes segments in the backward sweep. For ``f(u, p) = 0``, one
    transposed linear solve ``(df/du)^T λ = (dg/du)^T`` with ``linsolve``.

    Args:
      checkpoints: None (store every step) or the number of stored states.
      linsolve: linear solver for nonlinear problems (`sensode.linsolve`);
        None picks a dense LU.
    """

    checkpoints: int | None = None
    linsolve: Any = None

    def __post_init__(self):
        _check_checkpoints(self.checkpoints)


# The SciMLSensitivity name of the implicit adjoint of a steady state.
SteadyStateAdjoint = DiscreteAdjoint


@dataclasses.dataclass(frozen=True)
class _ContinuousAdjoint(SensitivityAlgorithm):
    rtol: float | None = None
    atol: float | None = None
    alg: Any = None
    seminorm: bool = True


@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint(_ContinuousAdjoint):
    """Continuous adjoint by re-integrating the state backwards (Chen et al. 2018, Alg. 2).

    O(1) memory in the number of steps. Caution: the backward state solve is
    unstable for dissipative or chaotic systems (e.g. Lorenz, stiff decay), and
    the gradient can then be badly wrong.
    """


@dataclasses.dataclass(frozen=True)
class InterpolatingAdjoint(_ContinuousAdjoint):
    """Continuous adjoint that reads the forward state from its dense output.

    Stable where `BacksolveAdjoint` is not; ``checkpoints=k`` re-solves
    segments between ``k`` stored states instead of keeping the whole forward
    solution.
    """

    checkpoints: int | None = None

    def __post_init__(self):
        _check_checkpoints(self.checkpoints)


@dataclasses.dataclass(frozen=True)
class QuadratureAdjoint(_ContinuousAdjoint):
    """Continuous adjoint for ``a(t)`` only; ``dL/dp`` by quadrature of ``-a^T df/dp``."""
