"""The automatic choice of a sensitivity algorithm (``sensealg=None``).

This is the only place that chooses among the algorithms; it returns its
reason with the choice, and runs nothing to make it.
"""

from __future__ import annotations

import tensorflow as tf

from .. import tfcompat
from ..params import Params, find_variables
from .base import ForwardPass, SensitivityAlgorithm, differentiable
from .discrete import DiscreteAdjoint
from .forward import ForwardSensitivity

__all__ = ["default_sensealg", "solve_on_demand", "FORWARD_MODE_LIMIT"]

# SciMLSensitivity switches from forward to adjoint modes at about this size.
FORWARD_MODE_LIMIT = 100


def default_sensealg(prob, alg=None) -> tuple[SensitivityAlgorithm, str]:
    """The automatic choice for ``sensealg=None`` and the reason for it.

    Forward sensitivities while ``len(u0) + len(p)`` (variables read by ``f``
    included) is at most 100 (SciMLSensitivity.jl's threshold); above that
    `DiscreteAdjoint`: the exact gradient of the computed solution, whose cost
    follows the steps taken (chunked re-runs) and which was the fastest reverse
    mode measured on the neural ODE (28 ms against 50 ms for
    `InterpolatingAdjoint`, XLA, interleaved runs), as backprop is diffrax's
    default.

    The same rule with a stiff method (``alg.stiff``: Rodas5, Rosenbrock23,
    Kvaerno5, AutoTsit5Rodas5): forward sensitivities there solve with the
    state's own ``n x n`` factorisation, as CVODES does, and were as fast as
    the discrete adjoint or faster, and more accurate, under XLA (peers
    benchmark: Robertson 3.7 ms against 6.1 ms, Van der Pol 8.4 against 24.3,
    HIRES 18.0 against 19.4, compiles of 11 / 8 / 42 s against 10 / 7 / 31 s;
    stiff benchmark, Robertson with saves: 15.6 against 14.6 ms). sensode 0.1
    picked `DiscreteAdjoint` for every stiff problem: its forward
    sensitivities formed the whole augmented Jacobian (503 s to compile on
    Robertson).

    Neither choice is `BacksolveAdjoint`, which is unstable on stiff and
    dissipative problems.

    Args:
      prob: an `ODEProblem`.
      alg: the ODE method (optional; a stiff one is named in the reason).

    Returns:
      ``(sensealg, reason)``.
    """
    variables = find_variables(prob.f, tf.cast(prob.tspan[0], prob.u0.dtype), prob.u0, prob.p)
    n_u = int(prob.u0.shape.num_elements())
    n_p = sum(Params(prob.p).sizes) + sum(int(v.shape.num_elements()) for v in variables)
    stiff = getattr(alg, "stiff", False)
    if n_u + n_p <= FORWARD_MODE_LIMIT:
        return ForwardSensitivity(), (
            f"len(u0) + len(p) = {n_u} + {n_p} <= {FORWARD_MODE_LIMIT}: forward sensitivities are cheapest"
            + (f"; with the stiff method {alg!r} their linear solves reuse the state's factorised matrix"
               if stiff else "")
        )
    return DiscreteAdjoint(), (
        f"len(u0) + len(p) = {n_u} + {n_p} > {FORWARD_MODE_LIMIT}: reverse mode costs one backward sweep whatever "
        "the number of parameters; the discrete adjoint is exact for the computed solution and its cost follows "
        "the steps taken"
        + (f"; with the stiff method {alg!r} it re-runs its steps and stays stable (BacksolveAdjoint would not)"
           if stiff else "")
    )


class _OnDemand(SensitivityAlgorithm):
    """Run an algorithm's own forward pass only when a gradient is requested.

    The forward pass is the plain solve; the backward pass first repeats the
    solve the way the algorithm needs it (with sensitivities, or recording
    the dense output) and then runs its backward pass. Used for
    ``sensealg=None``, so that a solve nobody differentiates costs no more
    than the plain loop (inside `tf.function` that cannot be known in advance).
    """

    def __init__(self, algorithm: SensitivityAlgorithm):
        self.algorithm = algorithm

    def forward(self, spec, u0, ts, t0, t1, p, variables):
        res = spec.solve_plain(u0, ts, t0, t1, p)
        return ForwardPass(res.ys, res.stats, res.status, None)

    def backward(self, spec, u0, ts, t0, t1, p, variables, aux, g_u):
        fwd = self.algorithm.forward(spec, u0, ts, t0, t1, p, variables)
        g = self.algorithm.backward(spec, u0, ts, t0, t1, p, variables, fwd.aux, g_u)
        # The repeated forward pass (e.g. with sensitivities) can fail where the plain one did not.
        status = tf.where(tf.equal(fwd.status, 0), tf.cast(g.status, tf.int32), fwd.status)
        return g._replace(status=status)


def solve_on_demand(prob, spec, u0, ts, t0, t1):
    """The solve of ``sensealg=None``: ``(u, stats, status)``.

    Eagerly with no tape recording, nothing will differentiate the solve: the
    plain loop. Otherwise `default_sensealg`'s choice, whose forward pass runs
    only when a gradient is requested unless it costs no more than the plain
    loop anyway.
    """
    if tf.executing_eagerly() and not tfcompat.gradient_may_be_recorded():
        res = spec.solve_plain(u0, ts, t0, t1, prob.p)
        return res.ys, res.stats, res.status
    chosen, _ = default_sensealg(prob, spec.method)
    if chosen.forward_costs_a_plain_solve:
        return chosen.solve(spec, u0, ts, t0, t1, prob.p)
    return differentiable(spec, _OnDemand(chosen), u0, ts, t0, t1, prob.p)
