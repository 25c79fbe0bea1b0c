"""Shared plumbing of the ODE sensitivity methods.

A method supplies ``forward`` (solve, keep what the backward pass needs) and
``backward`` (turn ``dL/du(ts)`` into gradients); `differentiable` wires the
pair into `tf.custom_gradient` so that `tf.GradientTape` reaches ``u0``,
every floating leaf of ``p``, ``t0``, the save times (and through them
``t1`` when ``saveat`` is None), and every `tf.Variable` read inside ``f``.

Time gradients have closed forms shared by all methods: a save time moves its
saved state along the flow, ``dL/dts_i = <g_i, f(ts_i, u_i)>``, and moving
the start time shifts the whole trajectory, ``dL/dt0 = -<dL/du0, f(t0, u0)>``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from ..derivatives import find_variables, map_batch, p_leaves
from ..ode.loop import integrate
from ..ode.tableaus import ButcherTableau

__all__ = ["Spec", "differentiable", "save_time_gradients", "segment_cap", "segmented_forward", "solve_segment"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the forward solve needs: checked ``f``, the method and the options."""

    f: Callable  # f(t, u, p)
    tableau: ButcherTableau
    options: dict  # rtol, atol, dt, max_steps, dtmin, dtmax, controller

    def integrate(self, fn, y0, t0, t1, **overrides):
        opts = dict(self.options)
        tab = overrides.pop("tableau", self.tableau)
        opts.update(overrides)
        return integrate(fn, y0, t0, t1, tableau=tab, **opts)


def save_time_gradients(f, ts, u_saved, g_u, p):
    """``dL/dts_i = <g_i, f(ts_i, u_i)>`` for all save times at once (one
    vectorised evaluation of ``f`` over the save points)."""

    def one(args):
        t, u, g = args
        return tf.reduce_sum(f(t, u, p) * g)

    return map_batch(one, (ts, u_saved, g_u))


def differentiable(spec: Spec, method, u0, ts, t0, t1, p):
    """Run ``method.forward`` under a custom gradient given by ``method.backward``.

    Returns ``(u_saved, stats, status)``.
    """
    leaves = p_leaves(p)
    is_float = [
        (tf.is_tensor(x) or isinstance(x, tf.Variable)) and x.dtype.is_floating for x in leaves
    ]
    float_leaves = [tf.convert_to_tensor(x) for x, fl in zip(leaves, is_float) if fl]
    # Variables read inside f: custom_gradient hands their upstream list to
    # `grad` as `variables` (in its own order); we compute in this order.
    f_vars = find_variables(spec.f, t0, u0, p)

    def pack(float_vals):
        it = iter(float_vals)
        full = [next(it) if fl else x for x, fl in zip(leaves, is_float)]
        return tf.nest.pack_sequence_as(p, full) if p is not None else None

    stat_keys = ("nfe", "steps", "accepted", "rejected")

    @tf.custom_gradient
    def run(u0_, ts_, t0_, *pf):
        pp = pack(pf)
        u_saved, stats, status, aux = method.forward(spec, u0_, ts_, t0_, t1, pp, f_vars)

        def grad(g_u, *unused, variables=None):
            du0, dts, dt0, dp, dv = method.backward(spec, u0_, ts_, t0_, t1, pp, f_vars, aux, g_u)
            if dts is None:
                dts = save_time_gradients(spec.f, ts_, u_saved, g_u, pp)
            if dt0 is None:
                dt0 = -tf.reduce_sum(du0 * spec.f(t0_, u0_, pp))
            dp_float = [g for g, fl in zip(dp, is_float) if fl]
            grads = [du0, dts, dt0] + dp_float
            if variables is None:
                return grads
            by_ref = {v.ref(): g for v, g in zip(f_vars, dv)}
            return grads, [by_ref.get(v.ref(), tf.zeros_like(v)) for v in variables]

        outs = (u_saved, status) + tuple(stats[k] for k in stat_keys)
        return outs, grad

    outs = run(u0, ts, t0, *float_leaves)
    u_saved, status = outs[0], outs[1]
    stats = dict(zip(stat_keys, outs[2:]))
    return u_saved, stats, status


def segment_cuts(t0, t1, k: int):
    """Cut times ``t0 = c_0, ..., c_k = t1``, equally spaced (exact end points)."""
    frac = tf.linspace(tf.constant(0.0, t0.dtype), tf.constant(1.0, t0.dtype), k + 1)
    cuts = t0 + (t1 - t0) * frac
    return tf.tensor_scatter_nd_update(cuts, [[0], [k]], tf.stack([t0, t1]))


def solve_segment(spec: Spec, u_start, h_start, c0, c1, ts, p, **overrides):
    """Solve on ``[c0, c1]``, saving at the save times inside ``(c0, c1]``.

    Returns ``(result, inside)``; rows of ``result.ys`` outside the segment
    (``inside`` False) are meaningless.
    """
    direction = tf.where(c1 >= c0, tf.constant(1.0, c0.dtype), tf.constant(-1.0, c0.dtype))
    inside = (direction * (ts - c0) > 0) & (direction * (ts - c1) <= 0)
    ts_seg = tf.where(inside, ts, c1)  # outside times clamp to the end; masked later
    res = spec.integrate(lambda t, u: spec.f(t, u, p), u_start, c0, c1, saveat=ts_seg, dt=h_start, **overrides)
    return res, inside


def segment_cap(spec: Spec, k: int) -> int:
    """Step budget of one of ``k`` checkpointed segments: ``2 ceil(max_steps / k)``.

    Under XLA every buffer is sized by its loop bound, so this, not the actual
    step count, is what a segment's re-solve stores; a segment that needs more
    steps fails with `Status.MAX_STEPS` (raise ``max_steps`` then).
    """
    max_steps = spec.options["max_steps"]
    return min(max_steps, 2 * -(-max_steps // k))


def segmented_forward(spec: Spec, u0, ts, t0, t1, p, k: int):
    """Forward solve in ``k`` segments, keeping the states at the cuts.

    Each segment starts with the step size the previous one ended with, so a
    cut costs one evaluation, not a restart. Segments ``1..k-1`` run in one
    `tf.while_loop` (one copy in the graph, whatever ``k``); the first is
    peeled off because its first step may be chosen automatically.

    Returns ``(u_saved, stats, status, cuts, states, steps)``: ``states``
    ``[k + 1, *u0.shape]`` and ``steps`` ``[k + 1]`` (the first step of each
    segment; entry 0 is 0 when automatic).
    """
    cuts = segment_cuts(t0, t1, k)
    rank = u0.shape.rank
    cap = segment_cap(spec, k)
    dtype = u0.dtype
    at_start = tf.reshape(tf.cast(tf.equal(ts, t0), dtype), [-1] + [1] * rank)
    u_saved = tf.zeros(tf.concat([tf.shape(ts), tf.shape(u0)], 0), dtype) + at_start * u0[None]

    def merge(u_saved, res, inside):
        mask = tf.reshape(tf.cast(inside, dtype), [-1] + [1] * rank)
        return u_saved * (1.0 - mask) + mask * res.ys

    dt = spec.options.get("dt")
    res, inside = solve_segment(spec, u0, dt, cuts[0], cuts[1], ts, p, max_steps=cap)
    u_saved = merge(u_saved, res, inside)
    states = tf.tensor_scatter_nd_update(tf.zeros(tf.concat([[k + 1], tf.shape(u0)], 0), dtype), [[0], [1]], tf.stack([u0, res.y1]))
    h0 = tf.zeros([], dtype) if dt is None else tf.abs(tf.cast(dt, dtype))
    hs = tf.tensor_scatter_nd_update(tf.zeros([k + 1], dtype), [[0], [1]], tf.stack([h0, tf.abs(res.h)]))
    keys = ("nfe", "steps", "accepted", "rejected")
    stats0 = tuple(res.stats[key] for key in keys)

    def body(i, u_saved, states, hs, stats, status):
        res, inside = solve_segment(spec, states[i], hs[i], cuts[i], cuts[i + 1], ts, p, max_steps=cap)
        states = tf.tensor_scatter_nd_update(states, [[i + 1]], res.y1[None])
        hs = tf.tensor_scatter_nd_update(hs, [[i + 1]], tf.abs(res.h)[None])
        stats = tuple(a + res.stats[key] for a, key in zip(stats, keys))
        status = tf.where(tf.equal(status, 0), res.status, status)
        return i + 1, merge(u_saved, res, inside), states, hs, stats, status

    _, u_saved, states, hs, stats, status = tf.while_loop(
        lambda i, *_: i < k,
        body,
        (tf.constant(1, tf.int32), u_saved, states, hs, stats0, res.status),
        maximum_iterations=max(k - 1, 1),
    )
    return u_saved, dict(zip(keys, stats)), status, cuts, states, hs
