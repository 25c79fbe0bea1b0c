"""Derivative products of the right-hand side: VJPs and batched JVPs.

These are the only places that differentiate ``f``; the sensitivity methods
build their augmented right-hand sides from them. ``variables`` are the
`tf.Variable`s that ``f`` reads (e.g. Keras weights): they are watched
explicitly, so non-trainable ones work too.
"""

from __future__ import annotations

import tensorflow as tf

from . import tfcompat
from .params import Params

# The products below (and ensembles of solves) are vectorised with pfor, whose rule for tf.roll is wrong for a
# negative axis and which has none for tf.linalg.lu.
tfcompat.fix_pfor_roll()
tfcompat.add_pfor_lu()

__all__ = ["vjp", "densify", "batched_jvp", "batched_jvp_derivative", "batched_jvp_time_derivative", "map_batch",
           "jvp_by_two_vjps", "graph_if_eager", "traced_once"]

_ZERO = tf.UnconnectedGradients.ZERO


def densify(grads: list) -> list:
    """``grads`` with every `tf.IndexedSlices` converted to a dense tensor.

    ``tf.gather`` (or a Keras ``Embedding``) on the state, the parameters or
    a variable makes the gradient with respect to it an `tf.IndexedSlices`,
    which cannot be a loop variable, a `tf.cond` output or a factor of
    ``-1.0 * g``. The solvers only ever accumulate whole gradients.
    """
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]


def vjp(f, t, u, p, variables, cot, *, wrt_t: bool = False):
    """Vector--Jacobian products of ``f(t, u, p)`` with the cotangent ``cot``.

    Args:
      f: right-hand side ``f(t, u, p)``.
      t: scalar time; u: state.
      p: the parameter nest; its differentiable leaves (`sensode.params`) are
        differentiated.
      variables: list of variables read by ``f``.
      cot: tensor shaped like ``u``.
      wrt_t: also return ``cot^T df/dt``.

    Returns:
      ``(out, du, dp, dvars, dt)``: ``out = f(t, u, p)``, ``du = cot^T df/du``
      (shape of ``u``), ``dp`` a list over the differentiable leaves of ``p``,
      ``dvars`` a list over ``variables``, ``dt`` a scalar (zero unless
      ``wrt_t``).
    """
    params = Params(p)
    float_leaves = params.float_leaves
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(u)
        tape.watch(float_leaves)
        if wrt_t:
            tape.watch(t)
        for v in variables:
            tape.watch(v)
        out = f(t, u, params.pack(float_leaves))
    sources = [u] + float_leaves + list(variables) + ([t] if wrt_t else [])
    grads = densify(tape.gradient(out, sources, output_gradients=cot, unconnected_gradients=_ZERO))
    n_p = len(float_leaves)
    du = grads[0]
    dp = grads[1 : 1 + n_p]
    dv = grads[1 + n_p : 1 + n_p + len(variables)]
    dt = grads[-1] if wrt_t else tf.zeros([], u.dtype)
    return out, du, dp, dv, dt


def batched_jvp(f, t, u, p, variables, u_tangents, p_tangents, v_tangents):
    """Jacobian--vector products for a batch of ``M`` tangent directions at once.

    Args:
      p: the parameter nest; its differentiable leaves get tangents.
      variables: list of variables read by ``f``.
      u_tangents: ``[M, *u.shape]``.
      p_tangents: list over the differentiable leaves of ``[M, *leaf.shape]``.
      v_tangents: list over ``variables`` of ``[M, *var.shape]``.

    Returns:
      ``(out, jvps)`` with ``out = f(t, u, p)`` and ``jvps`` ``[M, *u.shape]``:
      ``(df/du) u_t + (df/dp) p_t + (df/dv) v_t`` for each direction.
    """
    params = Params(p)
    float_leaves = params.float_leaves

    def one(tangents):
        tu, tp, tv = tangents
        primals = [u] + float_leaves + list(variables)
        with tf.autodiff.ForwardAccumulator(primals=primals, tangents=[tu] + list(tp) + list(tv)) as acc:
            out = f(t, u, params.pack(float_leaves))
        return acc.jvp(out, unconnected_gradients=_ZERO), out

    # The primal output is loop-invariant: pfor computes it once and tiles it.
    jvps, outs = map_batch(one, (u_tangents, list(p_tangents), list(v_tangents)))
    return outs[0], jvps


def batched_jvp_derivative(f, t, u, p, variables, u_tangents, p_tangents, v_tangents, x):
    """The derivative of `batched_jvp`'s products along ``u -> u + eps x``, for all directions at once.

    For direction ``j`` with tangents ``(s_j, θ_j)``: ``d/du [(df/du) s_j +
    (df/dθ) θ_j] x`` (second derivatives of ``f``), by a forward-mode accumulator around
    each direction's product (itself the VJP of a VJP) inside one vectorised
    map. ``x`` is shaped like
    ``u``; returns ``[M, *u.shape]``. This is the coupling block ``B x`` of a
    forward-sensitivity system's Jacobian.
    """
    return _nested_jvps(f, t, u, p, variables, u_tangents, p_tangents, v_tangents, u, x)


def batched_jvp_time_derivative(f, t, u, p, variables, u_tangents, p_tangents, v_tangents):
    """``(df/dt, d/dt [batched_jvp products])`` at ``(t, u)``: the ``t``-derivative of a forward-sensitivity system.

    ``df/dt`` is shaped like ``u``; the second part ``[M, *u.shape]`` holds,
    for direction ``j``, ``d/dt [(df/du) s_j + (df/dθ) θ_j]`` (second
    derivatives of ``f``), by a forward-mode tangent in ``t`` around the
    direction's product inside one vectorised map, as
    `batched_jvp_derivative` does for ``u``. A tangent in ``t`` around a
    call of the traced system instead fails inside TensorFlow when ``f``
    gathers from its parameters, and under XLA when ``f`` concatenates (pfor's
    fallback loop is unbounded).
    """
    one_t = tf.ones_like(t)
    with tf.autodiff.ForwardAccumulator(primals=t, tangents=one_t) as acc:
        out = f(t, u, p)
    dt = acc.jvp(out, unconnected_gradients=_ZERO)
    return dt, _nested_jvps(f, t, u, p, variables, u_tangents, p_tangents, v_tangents, t, one_t)


def _nested_jvps(f, t, u, p, variables, u_tangents, p_tangents, v_tangents, outer_primal, outer_tangent):
    """``[M, *u.shape]``: `batched_jvp`'s product ``j`` differentiated along ``outer_primal -> + eps outer_tangent``."""
    params = Params(p)
    float_leaves = params.float_leaves

    def one(tangents):
        tu, tp, tv = tangents
        primals = [u] + float_leaves + list(variables)
        with tf.autodiff.ForwardAccumulator(primals=outer_primal, tangents=outer_tangent) as outer:
            # The inner product as the VJP of a VJP (forward over reverse): with two nested
            # forward-mode accumulators, any comparison of a tangent-carrying value in f
            # (tf.where(u > 0, ...)) fails to trace (TensorFlow 2.21 records the inner
            # accumulator's product of the boolean op, a function call with no outputs, on
            # the outer one: IndexError).
            inner = jvp_by_two_vjps(lambda: f(t, u, params.pack(float_leaves)), primals, [tu] + list(tp) + list(tv))
        return outer.jvp(inner, unconnected_gradients=_ZERO)

    return map_batch(one, (u_tangents, list(p_tangents), list(v_tangents)))


def jvp_by_two_vjps(fn, primals: list, tangents: list):
    """``sum_k (d out / d primals[k]) tangents[k]`` for ``out = fn()``, as the VJP of a VJP.

    ``fn`` takes no arguments and computes ``out`` from ``primals`` (watched
    here). Two reverse passes built inline in the current graph: used where a
    forward-mode accumulator fails, namely under an outer forward-mode
    accumulator (an inner accumulator's product of a boolean op cannot be
    recorded on it) and under a tape inside an XLA loop (the accumulator's
    per-op function calls pass shape arguments as run-time values).
    """
    with tf.GradientTape(watch_accessed_variables=False) as transpose:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(primals)
            out = fn()
        w = tf.zeros_like(out)
        transpose.watch(w)
        wj = densify(tape.gradient(out, primals, output_gradients=w, unconnected_gradients=_ZERO))
    return transpose.gradient(wj, w, output_gradients=tangents, unconnected_gradients=_ZERO)


def graph_if_eager(fn):
    """Run ``fn`` as a graph function when executing eagerly.

    Eager forward-mode and pfor machinery re-derive their graphs on every call;
    tracing the augmented right-hand side once per solve is far cheaper. Only
    for right-hand sides whose gradient is provided by a sensitivity method
    (the tape never needs to see inside them).
    """
    if tf.executing_eagerly():
        return tf.function(fn, reduce_retracing=True)
    return fn


def traced_once(fn):
    """``fn`` as one graph function, traced once and called at every use.

    For the derivative products a solver evaluates at each stage of each
    step (`batched_jvp` and friends): traced inline, every call site repeats
    the forward-mode and pfor graph construction, which dominates the time
    to build a solve (a Rodas5 step with forward sensitivities called pfor
    20 times). A graph function is traced once per input signature and then
    only called: the same values, and far less to trace and to compile
    (Robertson's forward-sensitivity gradient under XLA, first call 10.0 ->
    4.8 s). Eagerly it is `graph_if_eager`'s graph function. Only for functions
    whose gradient a sensitivity method provides (no tape needs to see
    inside them).
    """
    return tf.function(fn, reduce_retracing=True)


def map_batch(fn, elems):
    """``tf.vectorized_map`` in a graph; a plain loop when executing eagerly.

    Eagerly, `tf.vectorized_map` converts ``fn`` to a vectorised graph on
    every call, which costs far more than running it once per element.
    """
    if not tf.executing_eagerly():
        return tf.vectorized_map(fn, elems)
    n = tf.nest.flatten(elems)[0].shape[0]
    outs = [fn(tf.nest.map_structure(lambda x: x[i], elems)) for i in range(n)]
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)
