"""The automatic choice of a sensitivity algorithm (``sensealg=None``).

This is the only place that chooses among the algorithms; it returns its
reason with the choice, and runs nothing to make it.
"""

from __future__ import annotations

import tensorflow as tf

from ..derivatives import find_variables, p_leaves
from .algorithms import ForwardSensitivity, InterpolatingAdjoint, SensitivityAlgorithm

__all__ = ["default_sensealg", "FORWARD_MODE_LIMIT"]

# SciMLSensitivity switches from forward to adjoint modes at about this size.
FORWARD_MODE_LIMIT = 100


def _n_params(p, variables) -> int:
    leaves = [x for x in p_leaves(p) if (tf.is_tensor(x) or isinstance(x, tf.Variable)) and x.dtype.is_floating]
    return sum(int(x.shape.num_elements()) for x in leaves) + sum(int(v.shape.num_elements()) for v in variables)


def default_sensealg(prob) -> tuple[SensitivityAlgorithm, str]:
    """The automatic choice for ``sensealg=None`` and the reason for it.

    Forward sensitivities while ``len(u0) + len(p)`` (variables read by ``f``
    included) is at most 100; above that `InterpolatingAdjoint`, the stable
    continuous adjoint, as SciMLSensitivity.jl does.

    Returns:
      ``(sensealg, reason)``.
    """
    variables = find_variables(prob.f, tf.cast(prob.tspan[0], prob.u0.dtype), prob.u0, prob.p)
    n_u = int(prob.u0.shape.num_elements())
    n_p = _n_params(prob.p, variables)
    if n_u + n_p <= FORWARD_MODE_LIMIT:
        return ForwardSensitivity(), (
            f"len(u0) + len(p) = {n_u} + {n_p} <= {FORWARD_MODE_LIMIT}: forward sensitivities are cheapest"
        )
    return InterpolatingAdjoint(), (
        f"len(u0) + len(p) = {n_u} + {n_p} > {FORWARD_MODE_LIMIT}: an adjoint scales with one backward solve; "
        "the interpolating adjoint is stable where backsolve is not"
    )


