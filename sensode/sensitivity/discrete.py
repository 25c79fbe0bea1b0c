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
take at most ``2 ceil(max_steps / k)`` steps, the size of its buffers). The segments'
solves restart at the cut times (carrying the step size across), so the
computed solution is that of the segmented solve, and its gradient is exact.

When to use: the reference gradient (round-off exact for what was computed),
and usually the fastest reverse mode for small and medium states.
Caution: without checkpoints, memory grows with the number of steps, and
under XLA with ``max_steps`` (the buffers are sized statically).

References: Griewank & Walther, "Evaluating Derivatives", SIAM 2008;
Zhang & Sandu, "FATODE", SIAM J. Sci. Comput. 36(5), 2014.
"""

from __future__ import annotations

import tensorflow as tf

from ..derivatives import p_leaves
from .base import segment_cap, segmented_forward, solve_segment

__all__ = ["CheckpointedDiscreteAdjoint"]


class CheckpointedDiscreteAdjoint:
    """`forward` / `backward` pair for `sensitivity.differentiable`."""

    def __init__(self, checkpoints: int):
        self.k = int(checkpoints)

    def forward(self, spec, u0, ts, t0, t1, p, variables):
        u_saved, stats, status, cuts, states, hs = segmented_forward(spec, u0, ts, t0, t1, p, self.k)
        return u_saved, stats, status, (cuts, tf.stop_gradient(states), tf.stop_gradient(hs))

    def _segment_vjp(self, spec, i, states, hs, cuts, ts, p, variables, g_u, a, first: bool):
        """Re-solve segment ``i`` under a tape; return ``dL/du(c_i)`` and the p / variable parts."""
        leaves_p = p_leaves(p)
        float_idx = [j for j, x in enumerate(leaves_p) if x.dtype.is_floating]
        u_start = states[i]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(u_start)
            tape.watch([leaves_p[j] for j in float_idx])
            for v in variables:
                tape.watch(v)
            pp = tf.nest.pack_sequence_as(p, leaves_p) if p is not None else None
            dt = spec.options.get("dt") if first else hs[i]
            res, inside = solve_segment(spec, u_start, dt, cuts[i], cuts[i + 1], ts, pp, max_steps=segment_cap(spec, self.k))
            mask = tf.reshape(tf.cast(inside, u_start.dtype), [-1] + [1] * u_start.shape.rank)
            objective = tf.reduce_sum(mask * res.ys * g_u) + tf.reduce_sum(res.y1 * a)
        sources = [u_start] + [leaves_p[j] for j in float_idx] + list(variables)
        grads = tape.gradient(objective, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads[0], grads[1 : 1 + len(float_idx)], grads[1 + len(float_idx) :]

    def backward(self, spec, u0, ts, t0, t1, p, variables, aux, g_u):
        cuts, states, hs = aux
        leaves_p = p_leaves(p)
        float_idx = [j for j, x in enumerate(leaves_p) if x.dtype.is_floating]
        a0 = tf.zeros_like(u0)  # dL/du at the end of the current segment
        acc0 = [tf.zeros_like(leaves_p[j]) for j in float_idx] + [tf.zeros_like(v) for v in variables]

        def body(i, a, acc):
            a, gp, gv = self._segment_vjp(spec, i, states, hs, cuts, ts, p, variables, g_u, a, first=False)
            return i - 1, a, [x + g for x, g in zip(acc, list(gp) + list(gv))]

        # Segments k-1..1 in one loop; segment 0 (automatic first step) peeled.
        _, a, acc = tf.while_loop(
            lambda i, *_: i > 0, body, (tf.constant(self.k - 1, tf.int32), a0, acc0), maximum_iterations=max(self.k - 1, 1)
        )
        a, gp, gv = self._segment_vjp(spec, 0, states, hs, cuts, ts, p, variables, g_u, a, first=True)
        acc = [x + g for x, g in zip(acc, list(gp) + list(gv))]
        n_f = len(float_idx)
        dp = [None] * len(leaves_p)
        for j, g in zip(float_idx, acc[:n_f]):
            dp[j] = g
        dv = acc[n_f:]
        # A save time equal to t0 reads u0 directly.
        at_start = tf.reshape(tf.cast(tf.equal(ts, t0), u0.dtype), [-1] + [1] * u0.shape.rank)
        du0 = a + tf.reduce_sum(at_start * g_u, axis=0)
        # Time gradients: the closed forms of `sensitivity` (the segment cuts
        # move with t0 and t1, a dependence that carries no information).
        return du0, None, None, dp, dv
