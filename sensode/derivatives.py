"""Derivative products of the right-hand side: VJPs and batched JVPs.

These are the only places that differentiate ``f``; the sensitivity methods
build their augmented right-hand sides from them. ``variables`` are the
`tf.Variable`s that ``f`` reads (e.g. Keras weights): they are watched
explicitly, so non-trainable ones work too.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["vjp", "batched_jvp", "find_variables"]

_ZERO = tf.UnconnectedGradients.ZERO


def find_variables(f, t, u, p) -> list:
    """The variables that ``f(t, u, p)`` reads, found by one traced call.

    Costs one evaluation in eager mode; inside a graph the call is dead code
    that the runtime prunes.
    """
    with tf.GradientTape(watch_accessed_variables=True) as tape:
        f(t, u, p)
    return list(tape.watched_variables())


def vjp(f, t, u, p, variables, cot, *, wrt_t: bool = False):
    """Vector--Jacobian products of ``f(t, u, p)`` with the cotangent ``cot``.

    Args:
      f: right-hand side ``f(t, u, p)``.
      t: scalar time; u: state; p: nest of tensors (or None).
      variables: list of variables read by ``f``.
      cot: tensor shaped like ``u``.
      wrt_t: also return ``cot^T df/dt``.

    Returns:
      ``(out, du, dp, dvars, dt)``: ``out = f(t, u, p)``, ``du = cot^T df/du``
      (shape of ``u``), ``dp`` a list over ``tf.nest.flatten(p)``, ``dvars`` a
      list over ``variables``, ``dt`` a scalar (zero unless ``wrt_t``).
    """
    p_leaves = tf.nest.flatten(p)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(u)
        tape.watch(p_leaves)
        if wrt_t:
            tape.watch(t)
        for v in variables:
            tape.watch(v)
        out = f(t, u, tf.nest.pack_sequence_as(p, p_leaves) if p is not None else None)
    sources = [u] + p_leaves + list(variables) + ([t] if wrt_t else [])
    grads = tape.gradient(out, sources, output_gradients=cot, unconnected_gradients=_ZERO)
    n_p = len(p_leaves)
    du = grads[0]
    dp = grads[1 : 1 + n_p]
    dv = grads[1 + n_p : 1 + n_p + len(variables)]
    dt = grads[-1] if wrt_t else tf.zeros([], u.dtype)
    return out, du, dp, dv, dt


def batched_jvp(f, t, u, p, variables, u_tangents, p_tangents, v_tangents):
    """Jacobian--vector products for a batch of ``M`` tangent directions at once.

    Args:
      u_tangents: ``[M, *u.shape]``.
      p_tangents: list over ``tf.nest.flatten(p)`` of ``[M, *leaf.shape]``.
      v_tangents: list over ``variables`` of ``[M, *var.shape]``.

    Returns:
      ``(out, jvps)`` with ``out = f(t, u, p)`` and ``jvps`` ``[M, *u.shape]``:
      ``(df/du) u_t + (df/dp) p_t + (df/dv) v_t`` for each direction.
    """
    p_leaves = tf.nest.flatten(p)

    def one(tangents):
        tu, tp, tv = tangents
        primals = [u] + p_leaves + list(variables)
        with tf.autodiff.ForwardAccumulator(primals=primals, tangents=[tu] + list(tp) + list(tv)) as acc:
            out = f(t, u, tf.nest.pack_sequence_as(p, p_leaves) if p is not None else None)
        return acc.jvp(out, unconnected_gradients=_ZERO), out

    # The primal output is loop-invariant: pfor computes it once and tiles it.
    jvps, outs = tf.vectorized_map(one, (u_tangents, list(p_tangents), list(v_tangents)))
    return outs[0], jvps
