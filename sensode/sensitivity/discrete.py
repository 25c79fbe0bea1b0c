"""The discrete adjoint of an ODE solve (discretise-then-optimise).

Without checkpoints, reverse-mode automatic differentiation through the
stepping loop *is* the discrete adjoint: TensorFlow stores every step's
intermediates and sweeps back through them, giving the exact gradient of the
numbers the solver produced. Step sizes are held fixed in that sweep (the
controller's gradients are stopped, see `loop.integrate`), as the derivative
of a step-size heuristic is noise, not information.

With ``checkpoints=k`` the time span is cut at ``k - 1`` interior times; the
forward pass keeps only the states there, and the backward pass re-solves
one segment at a time under a tape and chains the adjoint through it, so
memory holds one segment's steps instead of all of them (each segment may
take at most ``2 ceil(max_steps / k)`` steps, the size of its buffers). See
`sensode.sensitivity.checkpoint` for where the cuts lie.

When to use: the reference gradient (round-off exact for what was computed),
and usually the fastest reverse mode for small and medium states.
Caution: without checkpoints, memory grows with the number of steps, and
under XLA with ``max_steps`` (the buffers are sized statically).

References: Griewank & Walther, "Evaluating Derivatives", SIAM 2008;
Zhang & Sandu, "FATODE", SIAM J. Sci. Comput. 36(5), 2014.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from ..params import Params
from .base import ForwardPass, Gradients, SensitivityAlgorithm
from .checkpoint import backward_sweep, check_checkpoints, segment_cap, segmented_forward, solve_segment

__all__ = ["DiscreteAdjoint", "SteadyStateAdjoint"]


@dataclasses.dataclass(frozen=True)
class DiscreteAdjoint(SensitivityAlgorithm):
    """The adjoint of the discrete equations (discretise-then-optimise).

    For an ODE, the exact gradient of the numbers the solver produced (reverse
    mode through the solver's steps); ``checkpoints=k`` stores ``k`` states and
    recomputes segments in the backward sweep. For ``f(u, p) = 0``, one
    transposed linear solve ``(df/du)^T λ = (dg/du)^T`` with ``linsolve``.

    When to use: the reference gradient, and usually the fastest reverse mode
    for small and medium states. Caution: without checkpoints, memory grows
    with the number of steps, and under XLA with ``max_steps``.

    Args:
      checkpoints: None (store every step) or the number of segments.
      linsolve: linear solver for nonlinear problems (`sensode.linsolve`);
        None picks a dense LU.
    """

    checkpoints: int | None = None
    linsolve: Any = None

    def __post_init__(self):
        check_checkpoints(self.checkpoints)

    def solve(self, spec, u0, ts, t0, t1, p):
        if self.checkpoints is None:  # TensorFlow differentiates the loop itself
            res = spec.solve_plain(u0, ts, t0, t1, p)
            return res.ys, res.stats, res.status
        return super().solve(spec, u0, ts, t0, t1, p)

    def forward(self, spec, u0, ts, t0, t1, p, variables) -> ForwardPass:
        if self.checkpoints is None:  # as the `backward` of `sensealg=None` needs it
            res = spec.solve_plain(u0, ts, t0, t1, p)
            return ForwardPass(res.ys, res.stats, res.status, None)
        cp = segmented_forward(spec, u0, ts, t0, t1, p, self.checkpoints)
        return ForwardPass(cp.u, cp.stats, cp.status, cp)

    def backward(self, spec, u0, ts, t0, t1, p, variables, aux, g_u) -> Gradients:
        k = self.checkpoints or 1
        cp = aux
        params = Params(p)
        if cp is None:  # one segment: the whole span
            cp = segmented_forward(spec, u0, ts, t0, t1, p, 1)

        def segment(i, a, acc, first):
            """Re-solve segment ``i`` under a tape; pull ``a`` back to its start."""
            u_start = cp.states[i]
            leaves = params.float_leaves
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(u_start)
                tape.watch(leaves)
                for v in variables:
                    tape.watch(v)
                dt = spec.options.dt if first else cp.steps[i]
                res, inside = solve_segment(spec, u_start, dt, cp.cuts[i], cp.cuts[i + 1], ts, params.pack(leaves),
                                            max_steps=segment_cap(spec, k) if k > 1 else spec.options.max_steps)
                mask = tf.reshape(tf.cast(inside, u_start.dtype), [-1] + [1] * u_start.shape.rank)
                objective = tf.reduce_sum(mask * res.ys * g_u) + tf.reduce_sum(res.y1 * a)
            grads = tape.gradient(objective, [u_start] + leaves + list(variables),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads[0], [x + g for x, g in zip(acc, grads[1:])], res.status

        acc0 = [tf.zeros_like(x) for x in params.float_leaves] + [tf.zeros_like(v) for v in variables]
        a, acc, _ = backward_sweep(k, segment, tf.zeros_like(u0), acc0)
        n_p = len(params.float_leaves)
        # A save time equal to t0 reads u0 directly.
        at_start = tf.reshape(tf.cast(tf.equal(ts, t0), u0.dtype), [-1] + [1] * u0.shape.rank)
        du0 = a + tf.reduce_sum(at_start * g_u, axis=0)
        # Time gradients: the closed forms of `base` (the segment cuts move
        # with t0 and t1, a dependence that carries no information).
        return Gradients(du0, acc[:n_p], acc[n_p:])


# The SciMLSensitivity name of the implicit adjoint of a steady state.
SteadyStateAdjoint = DiscreteAdjoint
